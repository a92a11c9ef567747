"""The small server of old runtimes (portal_env.legacy), run here on the host's Python 3:
the protocol, agent and security tests of the main server that apply to it, run again
against it (imported below, with this module's `server` fixture), and its own.

The same server runs under Python 2.7 and 3.9 in a container in tests/test_ancient.py.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path
from typing import Iterator

import pytest

from portal_env import AgentSidePortal, PortalEnvError, RemoteEnvError, config
from portal_env.legacy import server as legacy_server
from portal_env.portal import protocol, wire
from portal_env.portal.wire import Address, Channel

from .conftest import ROOT, ServerProcess, start_server

# The main server's tests that apply to the small server, collected here again.
from .test_agent import (  # noqa: F401
    test_agents_from_two_processes,
    test_call_get_attr_and_set_attr,
    test_gymnasium_check_env_passes,
    test_remote_exception_carries_type_and_traceback_and_server_lives_on,
    test_seeded_trajectory_is_bit_identical_to_in_process,
    test_server_hung_mid_call_times_out,
    test_server_killed_mid_episode_gives_a_connection_error,
    test_sixteen_megabyte_observation,
    test_spaces_metadata_and_render,
    test_two_agents_on_one_server_at_once,
    test_wrong_token_is_refused_with_a_clear_error,
)
from .test_security import Marker, closed_by_peer
from .test_wire import (  # noqa: F401
    test_default_server_listens_on_loopback_only,
    test_fast_step_before_make_or_unknown_kind_closes_only_that_connection,
    test_malformed_frame_closes_only_that_connection,
    test_oversized_frame_closes_only_that_connection,
    test_unauthenticated_peer_is_never_unpickled,
    test_unknown_request_is_answered_with_an_error,
)

SCRIPT = ROOT / "tests" / "serve_legacy.py"


def start_small(tmp: Path, **env: str) -> ServerProcess:
    return start_server(tmp, dict(env), script=SCRIPT)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    handle = start_small(tmp_path)
    yield handle
    handle.stop()


def test_the_small_server_offers_no_extras_and_the_agent_uses_plain_frames(server):
    channel = Channel.connect(Address.parse(server.address), server.token, 5)
    assert channel.features == protocol.FEATURES_NONE
    channel.close()
    with AgentSidePortal("small", ["PortalTest/Big-v0"], **server.kwargs()) as env:
        assert env._client.layout is None  # no fast steps, no shared memory
        env.reset(seed=0)
        assert env.step(env.action_space.sample())[0].nbytes > 1 << 20
    leftovers = [name for name in os.listdir("/dev/shm") if name.startswith("portal-env")]
    assert leftovers == []


def test_vector_envs_are_refused_naming_the_alternative(server):
    import portal_env

    with pytest.raises(PortalEnvError, match="hosts single envs only.*SyncVectorEnv"):
        portal_env.make_vec("small", 2, env_args=["CartPole-v1"], **server.kwargs())
    channel = Channel.connect(Address.parse(server.address), server.token, 5)
    channel.send(["make_vec", 2, ["CartPole-v1"], {}])
    status, (kind, message, _) = channel.recv()
    assert status == protocol.REPLY_ERROR and "not offered by the small server" in message
    channel.close()


def test_it_never_unpickles_what_an_authenticated_agent_sends(server, tmp_path):
    marker = tmp_path / "pwned"
    channel = Channel.connect(Address.parse(server.address), server.token, 5, allow_pickle=True)
    channel.send(["make", [Marker(str(marker))], {}])  # pickled: this channel allows it
    assert closed_by_peer(channel.sock, 5)
    channel.close()
    assert not marker.exists()
    assert "never unpickles" in server.log.read_text()


def test_a_value_it_cannot_send_is_an_error_naming_its_type(server):
    with AgentSidePortal("small", ["Hostile/SetInfo"], **server.kwargs()) as env:
        with pytest.raises(RemoteEnvError, match="type set.*never pickles"):
            env.reset(seed=0)
        with pytest.raises(RemoteEnvError, match="type set"):
            env.step(0)  # the env lived on


def test_dripping_handshakes_are_dropped_at_the_deadline(tmp_path):
    handle = start_small(tmp_path, PORTAL_ENV_HANDSHAKE_TIMEOUT="1")
    try:
        sock = socket.create_connection(Address.parse(handle.address).target, timeout=5)
        sock.recv(len(wire.MAGIC) + wire.NONCE_BYTES)
        sock.sendall(b"x")  # a byte, then nothing: the deadline is for the whole handshake
        assert closed_by_peer(sock, 5)
        sock.close()
        with AgentSidePortal("small", ["CartPole-v1"], **handle.kwargs()) as env:
            env.reset(seed=0)
    finally:
        handle.stop()


def test_idle_connection_is_closed_with_its_env(tmp_path):
    handle = start_small(tmp_path, PORTAL_ENV_IDLE_TIMEOUT="0.5")
    try:
        env = AgentSidePortal("small", ["CartPole-v1"], **handle.kwargs())
        env.reset(seed=0)
        time.sleep(1.5)
        with pytest.raises(PortalEnvError):
            env.step(0)
        assert "idle" in handle.log.read_text()
    finally:
        handle.stop()


def test_unix_socket_is_private_and_serves_and_goes_with_the_server(tmp_path):
    path = tmp_path / "small.sock"
    handle = start_small(tmp_path, PORTAL_ENV_SOCKET=str(path))
    try:
        assert handle.address == f"unix:{path}" and oct(path.stat().st_mode & 0o777) == "0o600"
        with AgentSidePortal("small", ["CartPole-v1"], **handle.kwargs()) as env:
            assert env.reset(seed=1)[0].shape == (4,)
    finally:
        handle.stop()
    assert not path.exists()


def test_a_tokenless_start_names_the_variables(tmp_path):
    env = dict(os.environ, PORTAL_ENV_PORT="0")
    env.pop("PORTAL_ENV_TOKEN", None)
    env.pop("PORTAL_ENV_TOKEN_FILE", None)
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "PORTAL_ENV_TOKEN or PORTAL_ENV_TOKEN_FILE" in done.stderr


def test_its_settings_are_the_ones_the_supervisor_passes():
    for name in ("HOST", "PORT", "SOCKET", "TOKEN", "TOKEN_FILE", "READY_FILE"):
        assert getattr(legacy_server, f"{name}_VAR") == getattr(config, f"{name}_VAR")
    for name in ("HANDSHAKE_TIMEOUT", "IDLE_TIMEOUT", "SPIN"):
        assert getattr(legacy_server, f"{name}_VAR") == getattr(config, f"{name}_VAR")
    assert legacy_server.DEFAULT_SPIN_US == config.DEFAULT_SPIN_US
    assert legacy_server.DEFAULT_PORT == config.DEFAULT_PORT
    assert legacy_server.DEFAULT_HOST == config.DEFAULT_HOST


def test_an_oversized_header_neither_allocates_nor_stalls(server):
    channel = Channel.connect(Address.parse(server.address), server.token, 5)
    channel.sock.sendall(struct.pack("<IB", protocol.DEFAULT_MAX_FRAME, protocol.GENERAL))
    with AgentSidePortal("small", ["CartPole-v1"], **server.kwargs()) as env:
        env.reset(seed=0)
        env.step(0)
    channel.close()


def test_values_of_every_kind_cross_both_ways_exactly(server):
    from .test_agent import assert_identical
    from .test_codec import CASES

    value = list(CASES)
    channel = Channel.connect(Address.parse(server.address), server.token, 5)
    channel.send(["make", ["PortalTest/Rich-v0"], {}])
    assert channel.recv()[0] == protocol.REPLY_OK
    channel.send(["set_attr", "label", value])
    assert channel.recv()[0] == protocol.REPLY_OK
    channel.send(["get_attr", "label"])
    status, back = channel.recv()
    channel.close()
    assert status == protocol.REPLY_OK
    assert_identical(back, value)


def test_a_space_it_cannot_describe_is_named_not_blamed_on_the_arguments():
    from portal_env.legacy import gymapi

    class Odd:
        pass

    with pytest.raises(gymapi.UnsupportedSpace, match="Odd; the small server describes Box"):
        gymapi.describe_space(Odd())
    reply = legacy_server._error_reply(gymapi.UnsupportedSpace, gymapi.UnsupportedSpace("x"), "")
    assert reply[1][0] == "portal_env.errors.UnsupportedSpaceError"
