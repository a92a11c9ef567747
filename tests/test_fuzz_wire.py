"""Property-based fuzzing of the message layer (issue 12, point 10), both directions.

Every malformed message a token holder sends must get a ProtocolError reply or a
closed connection, never kill a server thread or the server; every malformed
reply a server sends must make the agent raise a ProtocolError naming the fault
(never a TypeError or KeyError, never a silently accepted value), and every
well-formed one must come back as sent. Real sockets on 127.0.0.1, a real server
in this process.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
from typing import Any, Iterator, List

import gymnasium
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portal_env import EnvSidePortal, PortalEnvError, RemoteEnvError
from portal_env.errors import ProtocolError
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


def well_formed_reply(reply: Any) -> bool:
    """The envelope every reply has: [0, result] or [1, [type, message, traceback]]."""
    if type(reply) is not list or len(reply) != 2 or type(reply[0]) is not int:
        return False
    if reply[0] == 1:
        return type(reply[1]) is list and [type(part) for part in reply[1]] == [str, str, str]
    return reply[0] == 0


@FUZZ
@given(reply=values | st.tuples(st.integers(-1, 2) | values, values).map(list))
def test_agent_turns_malformed_replies_into_protocol_errors(scripted, reply):
    scripted.frame = general_frame(reply)
    client = Client("fuzz", scripted.address, TOKEN, 5)
    try:
        if not well_formed_reply(reply):
            with pytest.raises(ProtocolError, match="reply to 'ping' from 127.0.0.1"):
                client.call("ping")
        elif reply[0] == 1:
            with pytest.raises(RemoteEnvError, match=re.escape(reply[1][1])):
                client.call("ping")
        else:  # the envelope is the client's to check; a result is the caller's
            assert client.call("ping") == reply[1]
    finally:
        client.close(goodbye=False)


@pytest.mark.parametrize(
    "reply, message",
    [
        ([True, ["ValueError", "boom", ""]], "malformed reply to 'ping'"),
        ([0.0, "pong"], "malformed reply to 'ping'"),
        ((0, "pong"), "malformed reply to 'ping'"),
        ([0, "pong", None], "malformed reply to 'ping'"),
        ([2, "pong"], "reply to 'ping' from 127.0.0.1:.* with status 2, not 0 or 1"),
        ([1, ["ValueError", "boom"]], "malformed error reply to 'ping'"),
    ],
    ids=["bool status", "float status", "tuple", "three items", "status 2", "short error"],
)
def test_a_reply_no_server_sends_is_refused_naming_the_fault(scripted, reply, message):
    scripted.frame = general_frame(reply)
    client = Client("fuzz", scripted.address, TOKEN, 5)
    try:
        with pytest.raises(ProtocolError, match=message):
            client.call("ping")
    finally:
        client.close(goodbye=False)


CARTPOLE = gymnasium.make("CartPole-v1")
OBS_BYTES = 16  # CartPole's 4 float32, already aligned
HEAD = struct.Struct("<BBBBBxxxd")  # reward kind, terminated, truncated, flags, ring slot, reward
INFO_LEARN = 1 | 8  # an info follows, through the codec (fastpath's flags)
REWARDS = (float, int, np.float64, np.float32)
FLAGS = (False, True, np.False_, np.True_)


def fast_reply(kind, term, trunc, flags, slot, reward, obs, tail) -> bytes:
    return HEAD.pack(kind, term, trunc, flags, slot, reward) + obs + tail


def float32_exact(value: float) -> bool:
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0] == value or value != value
    except OverflowError:  # beyond float32's range
        return False


def expected_step(payload: bytes) -> Any:
    """What a well-formed fast CartPole reply decodes to (no shared memory agreed, no
    info schema learnt yet), or None if the reply is malformed."""
    if len(payload) < HEAD.size + OBS_BYTES:
        return None
    kind, term, trunc, flags, slot, reward = HEAD.unpack_from(payload)
    if kind > 3 or term > 3 or trunc > 3 or slot or flags not in (0, INFO_LEARN):
        return None
    if kind == 1 and not reward.is_integer():
        return None
    if kind == 3 and not float32_exact(reward):
        return None
    tail = payload[HEAD.size + OBS_BYTES :]
    info: Any = {}
    if flags == INFO_LEARN:
        try:
            info = codec.Decoder().decode(memoryview(tail))
        except ProtocolError:
            return None
        if type(info) is not dict:
            return None
    elif tail:
        return None
    obs = payload[HEAD.size : HEAD.size + OBS_BYTES]
    return obs, REWARDS[kind], reward, FLAGS[term], FLAGS[trunc], info


def encoded(value: Any) -> bytes:
    parts, _ = codec.Encoder().encode(value)
    return b"".join(bytes(memoryview(p).cast("B")) for p in parts)


fast_replies = st.builds(
    fast_reply,
    kind=st.integers(0, 4),
    term=st.integers(0, 4),
    trunc=st.integers(0, 4),
    flags=st.sampled_from([0, INFO_LEARN]) | st.integers(0, 255),
    slot=st.just(0) | st.integers(0, 255),
    reward=st.floats(width=32) | st.integers(-(2**53), 2**53).map(float) | st.floats(),
    obs=st.binary(min_size=OBS_BYTES, max_size=OBS_BYTES) | st.binary(max_size=24),
    tail=st.just(b"") | values.map(encoded) | st.binary(max_size=40),
) | st.binary(max_size=200)


@FUZZ
@given(payload=fast_replies)
def test_agent_turns_malformed_fast_replies_into_protocol_errors(scripted, payload):
    scripted.frame = struct.pack("<IB", len(payload), wire.FAST_REPLY) + payload
    client = Client("fuzz", scripted.address, TOKEN, 5)
    client.layout = fastpath.EnvLayout(CARTPOLE.observation_space, CARTPOLE.action_space)
    expected = expected_step(payload)
    try:
        if expected is None:
            with pytest.raises(ProtocolError, match="step (reply|frame)"):
                client.step(0)
        else:
            obs, reward, terminated, truncated, info = client.step(0)
            want_obs, reward_type, want_reward, want_term, want_trunc, want_info = expected
            assert obs.dtype == np.float32 and obs.tobytes() == want_obs
            assert type(reward) is reward_type
            assert float(reward) == reward_type(want_reward) or want_reward != want_reward
            assert terminated is want_term and truncated is want_trunc
            assert info == want_info
    finally:
        client.close(goodbye=False)


def real_fast_reply(layout: Any, result: Any) -> bytes:
    """The bytes a server's layout sends for result."""
    parts, size = layout.encode_result(result)
    payload = b"".join(bytes(memoryview(p).cast("B")) for p in parts)
    assert len(payload) == size
    return payload


def with_byte(payload: bytes, index: int, value: int) -> bytes:
    return payload[:index] + bytes([value]) + payload[index + 1 :]


OBS = np.zeros(4, np.float32)
ONE_STEP = real_fast_reply(
    fastpath.EnvLayout(CARTPOLE.observation_space, CARTPOLE.action_space),
    (OBS, 1.0, False, False, {}),
)


@pytest.mark.parametrize(
    "payload, message",
    [
        (ONE_STEP + bytes(8), "step reply of 40 bytes where the layout ends at 32"),
        (with_byte(ONE_STEP, 3, 0x40), "flags 0x40, ring slot 0"),
        (with_byte(ONE_STEP, 3, 8), "flags 0x8, ring slot 0"),  # learn, no info
        (with_byte(ONE_STEP, 4, 3), "flags 0x0, ring slot 3"),
        (fast_reply(1, 0, 0, 0, 0, 0.5, bytes(16), b""), "reward of 0.5 typed int"),
        (fast_reply(3, 0, 0, 0, 0, 0.1, bytes(16), b""), "reward of 0.1 typed float32"),
        (fast_reply(0, 0, 0, INFO_LEARN, 0, 0.0, bytes(16), encoded(7)), "info is int, not a dict"),
        (fast_reply(0, 0, 0, INFO_LEARN, 0, 0.0, bytes(16), b"\x01"), "malformed info"),
    ],
    ids=[
        "trailing bytes",
        "unknown flag",
        "learn without info",
        "slot not shared",
        "int reward 0.5",
        "float32 reward 0.1",
        "info an int",
        "info not decodable",
    ],
)
def test_a_fast_reply_no_server_sends_is_refused_naming_the_fault(scripted, payload, message):
    scripted.frame = struct.pack("<IB", len(payload), wire.FAST_REPLY) + payload
    client = Client("fuzz", scripted.address, TOKEN, 5)
    client.layout = fastpath.EnvLayout(CARTPOLE.observation_space, CARTPOLE.action_space)
    try:
        with pytest.raises(ProtocolError, match=re.escape(message)):
            client.step(0)
    finally:
        client.close(goodbye=False)


def test_a_vector_reply_whose_infos_are_not_one_dict_per_env_is_refused():
    space, actions = CARTPOLE.observation_space, CARTPOLE.action_space
    server, agent = (fastpath.VectorLayout(space, actions, 2) for _ in range(2))
    obs, flags = np.zeros((2, 4), np.float32), np.zeros(2, bool)
    good = real_fast_reply(server, (obs, np.ones(2), flags, flags, [{"a": 1}, {}]))
    assert agent.decode_result(good)[4] == [{"a": 1}, {}]
    bad = real_fast_reply(server, (obs, np.ones(2), flags, flags, [{"a": 1}, {}, {}]))
    with pytest.raises(ProtocolError, match="infos are not 2 dicts"):
        agent.decode_result(bad)
    with pytest.raises(ProtocolError, match="step reply of 104 bytes where the layout ends at 96"):
        agent.decode_result(
            real_fast_reply(server, (obs, np.ones(2), flags, flags, [{}, {}])) + bytes(8)
        )


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
