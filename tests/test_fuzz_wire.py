"""Property-based fuzzing of the message layer (issue 12, point 10), both directions.

Every malformed message a token holder sends must get a ProtocolError reply or a
closed connection, never kill a server thread or the server; every malformed
reply a server sends must make the agent raise a PortalEnvError, never a
TypeError or KeyError. Real sockets on 127.0.0.1, a real server in this process.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any, Iterator, List

import gymnasium
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portal_env import EnvSidePortal, PortalEnvError
from portal_env.portal import codec, fastpath, wire
from portal_env.portal.client import Client
from portal_env.portal.server import _OP_ARGS
from portal_env.portal.wire import Address, Channel

TOKEN = "fuzz-token"
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def only_cartpole(*args: Any, **kwargs: Any) -> gymnasium.Env:
    """The fuzzer's factory: CartPole for the one legitimate make, else an error."""
    if list(args) != ["CartPole-v1"] or kwargs:
        raise ValueError(f"this fuzz server makes only CartPole-v1, not {args!r} {kwargs!r}")
    return gymnasium.make("CartPole-v1")


@pytest.fixture(scope="module")
def thread_errors() -> Iterator[List[BaseException]]:
    """Exceptions that escaped any thread (a server connection thread must never die so)."""
    errors: List[BaseException] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    yield errors
    threading.excepthook = previous


@pytest.fixture(scope="module")
def portal(thread_errors) -> Iterator[EnvSidePortal]:
    server = EnvSidePortal(only_cartpole, port=0, token=TOKEN)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.close()
    thread.join(5)


def connect(portal: EnvSidePortal, make: bool) -> Channel:
    channel = Channel.connect(portal.address, TOKEN, 5)
    if make:
        channel.send(["make", ["CartPole-v1"], {}])
        assert channel.recv()[0] == 0
        channel.send(["reset", 0, None])
        assert channel.recv()[0] == 0
    return channel


def reply_or_close(channel: Channel) -> Any:
    """The server's reply frame (kind, payload), or None if it closed the connection."""
    try:
        return channel.recv_frame()
    except PortalEnvError as exc:
        assert "closed" in str(exc) or "lost" in str(exc), exc  # not a timeout: no hang
        return None


def still_serving(portal: EnvSidePortal, thread_errors: List[BaseException]) -> None:
    assert not thread_errors, thread_errors
    channel = Channel.connect(portal.address, TOKEN, 5)
    channel.send(["ping"])
    assert channel.recv() == [0, "pong"]
    channel.close()


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.binary(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=6) | st.integers(0, 9), inner, max_size=3)
    ),
    max_leaves=8,
)
op_names = st.sampled_from(sorted(_OP_ARGS)) | values
requests = st.one_of(values, st.tuples(op_names, st.lists(values, max_size=4)).map(
    lambda t: [t[0], *t[1]]
))  # fmt: skip


def is_well_formed(request: Any) -> bool:
    from portal_env.errors import ProtocolError
    from portal_env.portal.server import parse_request

    try:
        parse_request(request)
    except ProtocolError:
        return False
    return True


@FUZZ
@given(request=requests, make=st.booleans())
def test_structured_requests_get_an_answer(portal, thread_errors, request, make):
    if isinstance(request, list) and request and request[0] in ("make", "make_vec"):
        make = False  # a make replaces the env; nothing more to learn with one made first
    channel = connect(portal, make)
    try:
        channel.send(request)
        frame = reply_or_close(channel)
        assert frame is not None, "a decodable request must be answered"
        kind, payload = frame
        if kind == wire.GENERAL:
            reply = channel.decode(payload)
            assert type(reply) is list and len(reply) == 2 and reply[0] in (0, 1)
            if reply[0] == 1:
                assert [type(part) for part in reply[1]] == [str, str, str]
            if not is_well_formed(request):
                assert reply[0] == 1 and reply[1][0] == "portal_env.errors.ProtocolError"
    finally:
        channel.close()
    still_serving(portal, thread_errors)


@FUZZ
@given(kind=st.integers(0, 255), payload=st.binary(max_size=300), make=st.booleans())
def test_raw_frames_get_an_answer_or_a_close(portal, thread_errors, kind, payload, make):
    channel = connect(portal, make)
    try:
        channel.sock.sendall(struct.pack("<IB", len(payload), kind) + payload)
        frame = reply_or_close(channel)
        if frame is not None:
            assert frame[0] in (wire.GENERAL, wire.FAST_REPLY)
    finally:
        channel.close()
    still_serving(portal, thread_errors)


@FUZZ
@given(header=st.binary(min_size=5, max_size=5), tail=st.binary(max_size=64))
def test_truncated_and_lying_headers_never_hang_or_kill(portal, thread_errors, header, tail):
    channel = connect(portal, make=False)
    try:
        channel.sock.sendall(header + tail)
        channel.sock.shutdown(socket.SHUT_WR)  # whatever the header claims, no more comes
        while reply_or_close(channel) is not None:
            pass
    finally:
        channel.close()
    still_serving(portal, thread_errors)


# -- the agent's side: a server that authenticates, then answers garbage ---------------------


class ScriptedServer:
    """Authenticates each connection with the real handshake, then answers with `frame`."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = Address(port=self.listener.getsockname()[1])
        self.frame = b""
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            try:
                channel = Channel.accept(sock, TOKEN, wire.DEFAULT_MAX_FRAME, timeout=5)
                channel.recv_frame()
                channel.sock.sendall(self.frame)
                channel.recv_frame()  # until the agent hangs up
            except (PortalEnvError, OSError):
                pass
            finally:
                sock.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    yield server
    server.close()


def general_frame(value: Any) -> bytes:
    parts, size = codec.Encoder(allow_pickle=True).encode(value)
    body = b"".join(bytes(memoryview(p).cast("B")) for p in parts)
    return struct.pack("<IB", size, wire.GENERAL) + body


@FUZZ
@given(reply=values | st.tuples(st.integers(-1, 2), values).map(list))
def test_agent_turns_malformed_replies_into_portal_errors(scripted, reply):
    scripted.frame = general_frame(reply)
    client = Client("fuzz", scripted.address, TOKEN, 5)
    try:
        client.call("ping")
    except PortalEnvError:
        pass
    finally:
        client.close(goodbye=False)


@FUZZ
@given(payload=st.binary(max_size=200))
def test_agent_turns_malformed_fast_replies_into_portal_errors(scripted, payload):
    scripted.frame = struct.pack("<IB", len(payload), wire.FAST_REPLY) + payload
    client = Client("fuzz", scripted.address, TOKEN, 5)
    env = gymnasium.make("CartPole-v1")
    client.layout = fastpath.EnvLayout(env.observation_space, env.action_space)
    try:
        client.step(0)
    except PortalEnvError:
        pass
    finally:
        client.close(goodbye=False)


def test_a_pickled_reply_is_refused_not_unpickled(scripted, tmp_path):
    class Marker:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    scripted.frame = general_frame([0, Marker()])
    client = Client("fuzz", scripted.address, TOKEN, 5)
    with pytest.raises(PortalEnvError, match="does not accept pickle"):
        client.call("ping")
    client.close(goodbye=False)
    assert not (tmp_path / "pwned").exists()
