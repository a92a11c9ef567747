"""Security and robustness of the server's socket: real sockets, real server process."""

from __future__ import annotations

import os
import pickle
import socket
import stat
import struct
import subprocess
import sys
import threading

import pytest

from portal_env import AgentSidePortal
from portal_env.portal import wire
from portal_env.portal.wire import Address, Channel


def raw_connect(address: str) -> socket.socket:
    addr = Address.parse(address)
    sock = socket.create_connection(addr.target, timeout=5)
    return sock


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def listening_addresses(port: int):
    """Local addresses of sockets listening on port, read from the kernel's tables."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                host, port_hex = local.split(":")
                if state == "0A" and int(port_hex, 16) == port:
                    found.append(host)
    return found


def test_default_server_listens_on_loopback_only(server):
    port = Address.parse(server.address).port
    assert listening_addresses(port) == ["0100007F"]  # 127.0.0.1, little-endian hex


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_unauthenticated_peer_is_never_unpickled(server, tmp_path):
    marker = str(tmp_path / "pwned")
    payload = pickle.dumps(_Marker(marker))
    sock = raw_connect(server.address)
    hello = sock.recv(64)
    assert hello.startswith(wire.MAGIC)
    sock.sendall(struct.pack("<I", len(payload)) + payload)  # a frame instead of the digest
    assert recv_all(sock) == wire.REFUSED
    sock.close()
    assert not os.path.exists(marker)
    with AgentSidePortal("custom", ["CartPole-v1"], **server.kwargs()) as env:
        env.reset()


def test_oversized_frame_closes_only_that_connection(server):
    channel = Channel.connect(Address.parse(server.address), server.token, 5)
    channel.sock.sendall(struct.pack("<IB", (1 << 30) + 1, wire.GENERAL))
    assert recv_all(channel.sock) == b""
    with AgentSidePortal("custom", ["CartPole-v1"], **server.kwargs()) as env:
        env.reset()
    assert server.proc.poll() is None
    assert "exceeds the limit" in server.log.read_text()


def test_malformed_frame_closes_only_that_connection(server):
    channel = Channel.connect(Address.parse(server.address), server.token, 5)
    garbage = b"\x03\x00\x00\x00\xc1\xc1\xc1" + bytes(9)
    channel.sock.sendall(struct.pack("<IB", len(garbage), wire.GENERAL) + garbage)
    assert recv_all(channel.sock) == b""
    with AgentSidePortal("custom", ["CartPole-v1"], **server.kwargs()) as env:
        env.reset()
    assert "bad frame" in server.log.read_text()


def test_unknown_request_is_answered_with_an_error(server):
    channel = Channel.connect(Address.parse(server.address), server.token, 5)
    channel.send(["format_disk"])
    status, (kind, message, _) = channel.recv()
    assert status == 1 and "ProtocolError" in kind and "format_disk" in message
    channel.send(["step", 0])
    assert "before an env was made" in channel.recv()[1][1]
    channel.close()


def test_unix_socket_server_is_private_and_serves(tmp_path):
    path = str(tmp_path / "portal.sock")
    code = (
        "import gymnasium; from portal_env import EnvSidePortal\n"
        f"EnvSidePortal(gymnasium.make, socket_path={path!r}, token='t0k').run()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(300):
            if os.path.exists(path):
                break
            proc.wait(0.05) if proc.poll() is not None else __import__("time").sleep(0.05)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with AgentSidePortal("custom", ["CartPole-v1"], address=f"unix:{path}", token="t0k") as env:
            env.reset(seed=0)
            env.step(0)
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    assert not os.path.exists(path)  # removed on shutdown


@pytest.mark.parametrize(
    "text,expected",
    [
        ("127.0.0.1:7000", Address("127.0.0.1", 7000)),
        ("env_portal_ale:7000", Address("env_portal_ale", 7000)),
        ("[::1]:9", Address("::1", 9)),
        ("unix:/tmp/x.sock", Address(path="/tmp/x.sock")),
    ],
)
def test_address_parsing(text, expected):
    assert Address.parse(text) == expected
    assert Address.parse(str(expected)) == expected


@pytest.mark.parametrize("text", ["localhost", "host:port", ""])
def test_bad_address_names_the_value(text):
    with pytest.raises(ValueError, match="bad address"):
        Address.parse(text)


@pytest.mark.parametrize("kind,payload", [(wire.FAST_STEP, b"\x00" + bytes(8)), (9, b"x")])
def test_fast_step_before_make_or_unknown_kind_closes_only_that_connection(server, kind, payload):
    channel = Channel.connect(Address.parse(server.address), server.token, 5)
    channel.sock.sendall(struct.pack("<IB", len(payload), kind) + payload)
    assert recv_all(channel.sock) == b""
    with AgentSidePortal("custom", ["CartPole-v1"], **server.kwargs()) as env:
        env.reset()


def test_large_frame_with_an_empty_part_is_sent_whole():
    # A fast step reply over a socket is [header, observation, info]; an empty part once
    # made the sender loop forever on sendmsg() returning 0 (seen with a small /dev/shm).
    left, right = socket.socketpair()
    sender, receiver = Channel(left), Channel(right)
    big = bytes(range(256)) * 8192  # 2 MiB: sent with sendmsg, in several pieces
    done = []

    def send():
        sender.send_parts(wire.FAST_REPLY, [big, b"", b"tail", b""], len(big) + 4)
        done.append(True)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    kind, payload = receiver.recv_frame()
    thread.join(10)
    assert done and kind == wire.FAST_REPLY and bytes(payload) == big + b"tail"
    sender.close()
    receiver.close()
