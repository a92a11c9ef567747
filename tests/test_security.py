"""Hostile peers and exhausted resources (issue 12): each test mounts the attack first.

Real server processes, real sockets on 127.0.0.1 or Unix paths, real file systems.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import resource
import secrets
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import gymnasium
import numpy as np
import pytest

from portal_env import (
    AgentSidePortal,
    AuthenticationError,
    EnvSidePortal,
    PortalConnectionError,
    PortalEnvError,
    ProtocolError,
    RemoteEnvError,
    config,
)
from portal_env.errors import DirectoryError, RegistryError
from portal_env.portal import wire
from portal_env.portal.wire import Address, Channel
from portal_env.serving import registry

from .conftest import ROOT, ServerProcess, cli, start_server

SCRIPT = ROOT / "tests" / "serve_security.py"


def serve(
    tmp: Path,
    env: Optional[Dict[str, str]] = None,
    prefix: Sequence[str] = (),
    unix: bool = False,
) -> ServerProcess:
    """Start tests/serve_security.py (optionally under a command prefix such as prlimit)."""
    environ = dict(env or {})
    if unix:
        environ.setdefault("PORTAL_ENV_SOCKET", str(tmp / f"s-{secrets.token_hex(4)}.sock"))
    return start_server(tmp, environ, script=SCRIPT, prefix=prefix)


@pytest.fixture
def servers() -> Iterator[List[ServerProcess]]:
    started: List[ServerProcess] = []
    yield started
    for handle in started:
        handle.stop()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """Whether the peer closes sock within `within` seconds (data before the close is read)."""
    sock.settimeout(within)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if not sock.recv(4096):
                return True
    except (socket.timeout, TimeoutError):
        return False
    except OSError:  # reset
        return True
    return False


def stepper(env: AgentSidePortal, stop: threading.Event, out: Dict[str, object]) -> None:
    """Step env until stop is set; records the step count (live) and any error."""
    out.update(steps=0)
    env.reset(seed=0)
    try:
        while not stop.is_set():
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            out["steps"] += 1
            if terminated or truncated:
                env.reset()
    except Exception as exc:  # reported to the test
        out["error"] = exc


def wait_for_steps(out: Dict[str, object], count: int, thread: threading.Thread) -> None:
    """Return once the stepper has made count steps; a stalled server hangs here until
    the test's timeout marker fails it (no wall-clock bound of its own)."""
    while out.get("steps", 0) < count:
        assert thread.is_alive() and "error" not in out, out
        time.sleep(0.01)


@pytest.fixture
def many_fds() -> Iterator[None]:
    """Let this test process hold a few thousand sockets (the attacker's side)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- 1. a flood of idle connections under the usual descriptor limit ----------------------


@pytest.mark.timeout(180)
@pytest.mark.parametrize("max_pending", [64, 5000], ids=["evict-oldest", "accept-emfile"])
def test_connection_flood_under_fd_limit_keeps_serving(tmp_path, servers, many_fds, max_pending):
    # max_pending=5000 and a long deadline disable eviction and expiry, so the server
    # really runs out of descriptors (accept() fails with EMFILE) and must back off.
    deadline = "3" if max_pending == 64 else "60"
    env = {"TEST_MAX_PENDING": str(max_pending), "PORTAL_ENV_HANDSHAKE_TIMEOUT": deadline}
    server = serve(tmp_path, env, prefix=["prlimit", "--nofile=1024:1024"])
    servers.append(server)
    limit = Path(f"/proc/{server.proc.pid}/limits").read_text()
    assert re.search(r"Max open files\s+1024\s+1024", limit)
    stop, result = threading.Event(), {}
    with AgentSidePortal("custom", ["CartPole-v1"], **server.kwargs()) as env_:
        thread = threading.Thread(target=stepper, args=(env_, stop, result))
        thread.start()
        wait_for_steps(result, 1, thread)
        attackers = []
        try:
            target = Address.parse(server.address).target
            for _ in range(1100):
                attackers.append(socket.create_connection(target, timeout=5))
            time.sleep(1.0)  # the server works through its backlog meanwhile
            assert server.proc.poll() is None, server.log.read_text()
            if max_pending == 64:
                assert open_fds(server.proc.pid) < 200  # only the newest 64 are held
                # A new agent gets in while the flood still holds its sockets.
                with AgentSidePortal("custom", ["CartPole-v1"], **server.kwargs()) as other:
                    other.reset(seed=1)
                    other.step(0)
            # the agent keeps stepping while the flood still holds its sockets
            wait_for_steps(result, result["steps"] + 50, thread)
        finally:
            for sock in attackers:
                sock.close()
            stop.set()
            thread.join(30)
    assert "error" not in result, result
    assert server.proc.poll() is None
    log = server.log.read_text()
    if max_pending == 5000:
        assert "accept() failed (Too many open files); retrying in" in log
    # After the flood, fresh agents connect as before.
    with AgentSidePortal("custom", ["CartPole-v1"], **server.kwargs()) as env_:
        env_.reset(seed=0)
        env_.step(0)


def test_thread_start_failures_are_survived(tmp_path, servers):
    # Limit the server's address space to a little more than it uses: a new thread's
    # stack (8 MiB) soon cannot be mapped, and Thread.start() raises RuntimeError.
    env = {"TEST_MAX_PENDING": "5000", "PORTAL_ENV_HANDSHAKE_TIMEOUT": "60"}
    server = serve(tmp_path, env)
    servers.append(server)
    pid = server.proc.pid
    with AgentSidePortal("custom", ["CartPole-v1"], **server.kwargs()) as env_:
        env_.reset(seed=0)
        status = Path(f"/proc/{pid}/status").read_text()
        size = int(re.search(r"VmSize:\s+(\d+) kB", status).group(1)) * 1024
        subprocess.run(["prlimit", f"--pid={pid}", f"--as={size + 48 * 2**20}:"], check=True)
        target = Address.parse(server.address).target
        attackers = [socket.create_connection(target, timeout=5) for _ in range(50)]
        try:
            for _ in range(200):
                env_.step(0) if not env_.step(1)[2] else env_.reset()
            time.sleep(0.5)
            assert server.proc.poll() is None
        finally:
            for sock in attackers:
                sock.close()
            subprocess.run(["prlimit", f"--pid={pid}", "--as=unlimited:"], check=True)
        for _ in range(20):
            env_.step(0) if not env_.step(1)[2] else env_.reset()
    with AgentSidePortal("custom", ["CartPole-v1"], **server.kwargs()) as env_:
        env_.reset(seed=0)
    server.stop()
    assert "can't start new thread" in server.log.read_text()


# -- 2. a tokenless impostor, a compromised env runtime -------------------------------------


class Marker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def impostor(listener: socket.socket, marker: str, magic: bytes = wire.MAGIC) -> None:
    """A fake server without the token: the old attack (accept anything, answer pickles)."""
    conn, _ = listener.accept()
    payload = pickle.dumps(Marker(marker))
    frame = struct.pack("<I", len(payload)) + payload
    with conn:
        try:
            conn.sendall(magic + os.urandom(wire.NONCE_BYTES))
            conn.recv(wire.NONCE_BYTES + wire.DIGEST_BYTES)
            conn.sendall(wire.ACCEPTED + os.urandom(wire.DIGEST_BYTES))
            conn.sendall(struct.pack("<IB", len(frame), wire.GENERAL) + frame)
            conn.recv(100)
        except OSError:  # the agent hung up on us, as it should
            pass


# PENV2: the step wire format before ring slots and packed infos (issue 13), refused too.
@pytest.mark.parametrize(
    "magic", [wire.MAGIC, b"PENV2", b"PENV1"], ids=["current", "previous", "old-protocol"]
)
def test_tokenless_fake_server_cannot_run_code_in_the_agent(tmp_path, magic):
    marker = tmp_path / "pwned"
    listener = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=impostor, args=(listener, str(marker), magic), daemon=True)
    thread.start()
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    expected = AuthenticationError if magic == wire.MAGIC else ProtocolError
    with pytest.raises(expected) as caught:
        AgentSidePortal("custom", ["CartPole-v1"], address=address, token="t", timeout=5)
    thread.join(5)
    listener.close()
    assert not marker.exists()
    if magic == wire.MAGIC:
        assert "could not prove it holds" in str(caught.value) and address in str(caught.value)


def test_compromised_env_runtime_cannot_run_code_through_info(tmp_path, servers):
    # The env side opts in to pickle (as a compromised runtime would send pickles anyway);
    # the agent, by default, never unpickles: reset (general codec) and step (fast path).
    marker = tmp_path / "pwned"
    server = serve(tmp_path, {"PORTAL_ENV_ALLOW_PICKLE": "1"})
    servers.append(server)
    with AgentSidePortal("custom", ["Hostile/MarkerInfo", str(marker)], **server.kwargs()) as env:
        with pytest.raises(ProtocolError, match="does not accept pickle"):
            env.reset(seed=0)  # the env did reset; its reply was refused
        with pytest.raises(ProtocolError, match="does not accept pickle"):
            env.step(0)
    assert not marker.exists()


def test_server_never_unpickles_what_an_authenticated_agent_sends(tmp_path, servers):
    marker = tmp_path / "pwned"
    server = serve(tmp_path)
    servers.append(server)
    channel = Channel.connect(Address.parse(server.address), server.token, 5, allow_pickle=True)
    channel.send(["make", [Marker(str(marker))], {}])  # pickled: this channel allows it
    assert closed_by_peer(channel.sock, 5)
    channel.close()
    assert not marker.exists()
    assert "does not accept pickle" in server.log.read_text()


def test_unusual_info_value_is_refused_naming_key_and_type(tmp_path, servers):
    server = serve(tmp_path)
    servers.append(server)
    with AgentSidePortal("custom", ["Hostile/SetInfo"], **server.kwargs()) as env:
        with pytest.raises(RemoteEnvError, match=r"type set at \[1\]\[1\]\['payload'\]"):
            env.reset(seed=0)
        with pytest.raises(RemoteEnvError, match=r"type set at \['payload'\].*PORTAL_ENV_ALLOW"):
            env.step(0)  # the fast path's info tail


def test_pickle_opt_in_on_both_sides_carries_unusual_values(tmp_path, servers, monkeypatch):
    server = serve(tmp_path, {"PORTAL_ENV_ALLOW_PICKLE": "1"})
    servers.append(server)
    env = AgentSidePortal("custom", ["Hostile/SetInfo"], allow_pickle=True, **server.kwargs())
    with env:
        assert env.reset(seed=0)[1]["payload"] == {1, 2}
        assert env.step(0)[4]["payload"] == {1, 2}
    monkeypatch.setenv("PORTAL_ENV_ALLOW_PICKLE", "1")  # the variable does the same
    with AgentSidePortal("custom", ["Hostile/SetInfo"], **server.kwargs()) as env:
        env.reset(seed=0)
        assert env.step(0)[4]["payload"] == {1, 2}


# -- 3. registry names from the agent --------------------------------------------------------


def write_record(path: Path, address: str) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    record = {"name": "rec", "backend": "venv", "env_dir": "/", "token": "t"}
    record.update(supervisor_pid=dead.pid, log_path="/dev/null", address=address, state="ready")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("name", ["../../x/rec", "/abs/rec", "a/b", ".hidden", "", "a" * 65])
def test_traversal_names_are_refused_and_nothing_is_deleted(tmp_path, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    outside = tmp_path / "x" / "rec.json"  # what "../../x/rec" reached from portals/
    write_record(outside, f"unix:{victim}")
    with pytest.raises(RegistryError, match="is not a portal name"):
        AgentSidePortal(name, ["CartPole-v1"])
    assert victim.read_text() == "keep me" and outside.exists()


def test_stale_record_unlinks_only_sockets_in_the_private_socket_dir(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    decoy = config.socket_dir() / f"decoy-{secrets.token_hex(4)}.sock"  # a regular file
    decoy.write_text("not a socket")
    stale = config.socket_dir() / f"stale-{secrets.token_hex(4)}.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(stale))
    sock.close()  # a dead server's socket file
    try:
        for name, address in (("a", victim), ("b", decoy), ("c", stale)):
            record_file = registry.portals_dir() / f"{name}@{config.node_name()}.json"
            write_record(record_file, f"unix:{address}")
            assert registry.get(name) is None  # stale: the record goes
            assert not record_file.exists()
        assert victim.read_text() == "keep me" and decoy.read_text() == "not a socket"
        assert not stale.exists()
    finally:
        decoy.unlink(missing_ok=True)
        stale.unlink(missing_ok=True)


# -- 4. giant frame headers from a token holder ----------------------------------------------


@pytest.mark.timeout(120)
def test_giant_headers_neither_allocate_nor_stall_other_agents(tmp_path, servers):
    server = serve(tmp_path)
    servers.append(server)
    address = Address.parse(server.address)
    stop, result = threading.Event(), {}
    with AgentSidePortal("custom", ["CartPole-v1"], **server.kwargs()) as env:
        env.reset(seed=0)
        for _ in range(200):  # warm: allocator and caches settle before the baseline
            env.step(0) if not env.step(1)[2] else env.reset()
        before = rss_bytes(server.proc.pid)
        thread = threading.Thread(target=stepper, args=(env, stop, result))
        thread.start()
        attackers = [Channel.connect(address, server.token, 5) for _ in range(4)]
        try:
            for channel in attackers:  # 1 GiB declared (the limit), a few bytes sent
                channel.sock.sendall(struct.pack("<IB", wire.DEFAULT_MAX_FRAME, wire.GENERAL))
                channel.sock.sendall(b"x" * 1000)
            time.sleep(2.0)  # time to allocate, were the server to trust the headers
            growth = rss_bytes(server.proc.pid) - before
            # steps go on while the four frames stay unfinished (a stall hangs here)
            wait_for_steps(result, result["steps"] + 200, thread)
        finally:
            stop.set()
            thread.join(30)
            for channel in attackers:
                channel.close()
    assert "error" not in result, result
    assert growth < 50 * 2**20, f"server RSS grew by {growth / 2**20:.1f} MiB"


# -- 5. unwritable or full cache and state directories -----------------------------------------


@pytest.fixture
def tmpfs(tmp_path) -> Iterator:
    """mount(options) -> a fresh tmpfs directory; all unmounted at teardown."""
    mounted: List[Path] = []

    def mount(options: str) -> Path:
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)])
        if done.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs here (mount -o {options}); run the tests as root")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], check=False)


def run_cli(*args: str, env: Dict[str, str]) -> subprocess.CompletedProcess:
    return cli(*args, env=dict(os.environ, **env), timeout=120)


def assert_clean_error(done: subprocess.CompletedProcess, directory: Path, var: str) -> None:
    assert done.returncode != 0
    assert done.stderr.startswith("Error: "), done.stderr
    assert "Traceback" not in done.stderr and str(directory) in done.stderr
    assert var in done.stderr and "read-only" in done.stderr


def test_read_only_state_and_cache_dirs_name_the_setting(tmpfs, cartpole_dir, monkeypatch):
    ro = tmpfs("ro,size=1m")
    state, cache = ro / "state", ro / "cache"
    done = run_cli("ps", env={"PORTAL_ENV_STATE_DIR": str(state)})
    assert_clean_error(done, state, "PORTAL_ENV_STATE_DIR")
    done = run_cli(
        "build", "-e", "mycart", "-p", str(cartpole_dir), "-b", "venv",
        env={"PORTAL_ENV_CACHE_DIR": str(cache)},
    )  # fmt: skip
    assert_clean_error(done, cache, "PORTAL_ENV_CACHE_DIR")
    monkeypatch.setenv("PORTAL_ENV_STATE_DIR", str(state))
    with pytest.raises(DirectoryError, match="PORTAL_ENV_STATE_DIR"):
        AgentSidePortal("mycart", ["CartPole-v1"])  # reads the registry
    with pytest.raises(DirectoryError, match="PORTAL_ENV_STATE_DIR"):
        EnvSidePortal(gymnasium.make, port=0)  # records its token


def test_a_state_dir_where_no_directory_can_be_made_names_the_setting():
    done = run_cli("ps", env={"PORTAL_ENV_STATE_DIR": "/proc/portal-env-state"})
    assert done.returncode != 0 and done.stderr.startswith("Error: "), done.stderr
    assert "Traceback" not in done.stderr and "/proc/portal-env-state" in done.stderr
    assert "set PORTAL_ENV_STATE_DIR=DIR" in done.stderr


def test_state_dir_made_read_only_after_use_names_the_setting(tmpfs, monkeypatch):
    mnt = tmpfs("size=1m")
    (mnt / "state" / "portals").mkdir(parents=True)
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    done = run_cli("ps", env={"PORTAL_ENV_STATE_DIR": str(mnt / "state")})
    assert_clean_error(done, mnt / "state", "PORTAL_ENV_STATE_DIR")


def test_full_state_dir_names_the_setting(tmpfs, monkeypatch):
    mnt = tmpfs("size=64k")
    monkeypatch.setenv("PORTAL_ENV_STATE_DIR", str(mnt / "state"))
    registry.portals_dir()
    filler = mnt / "filler"
    with pytest.raises(OSError):
        with open(filler, "wb") as f:
            f.write(b"\0" * (1 << 20))  # ENOSPC: the disk is now full
    record = registry.Record(
        name="full", backend="venv", env_dir="/", token="t" * 4000, supervisor_pid=1, log_path=""
    )
    with pytest.raises(DirectoryError, match="full.*PORTAL_ENV_STATE_DIR"):
        registry.write(record)
    assert not list(registry.portals_dir().glob(".*tmp"))  # no partial record left
    with pytest.raises(DirectoryError, match="full.*PORTAL_ENV_STATE_DIR"):
        EnvSidePortal(gymnasium.make, port=0)


def test_full_cache_dir_during_a_build_names_the_setting(tmpfs, cartpole_dir):
    full = tmpfs("size=2m") / "cache"  # room for a venv's skeleton, not its packages
    done = run_cli(
        "build", "-e", "mycart", "-p", str(cartpole_dir), "-b", "venv",
        env={"PORTAL_ENV_CACHE_DIR": str(full)},
    )  # fmt: skip
    assert done.returncode != 0 and done.stderr.startswith("Error: "), done.stderr
    assert "No space left on device" in done.stderr
    assert f"The disk holding {full} is full" in done.stderr
    assert "PORTAL_ENV_CACHE_DIR=DIR" in done.stderr


# -- 6. socket paths that are not ours to take -------------------------------------------------


def test_regular_file_as_socket_path_is_refused_and_kept(tmp_path):
    path = tmp_path / "precious.txt"
    path.write_text("data")
    with pytest.raises(PortalEnvError, match="exists and is not a socket"):
        EnvSidePortal(gymnasium.make, socket_path=str(path), token="t")
    assert path.read_text() == "data"


def test_live_socket_path_is_refused_and_the_first_server_keeps_serving(tmp_path):
    path = str(tmp_path / "live.sock")
    first = EnvSidePortal(gymnasium.make, socket_path=path, token="t")
    thread = threading.Thread(target=first.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(PortalEnvError, match="another server is listening"):
            EnvSidePortal(gymnasium.make, socket_path=path, token="t2")
        with AgentSidePortal("x", ["CartPole-v1"], address=f"unix:{path}", token="t") as env:
            env.reset(seed=0)
    finally:
        first.close()
        thread.join(5)
    assert not os.path.exists(path)


def test_stale_socket_path_is_taken_over(tmp_path):
    path = str(tmp_path / "stale.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()  # a killed server's socket: nobody listens
    with EnvSidePortal(gymnasium.make, socket_path=path, token="t") as portal:
        assert str(portal.address) == f"unix:{path}"


# -- 7. slow handshakes and idle connections ---------------------------------------------------


@pytest.mark.timeout(120)
def test_dripping_handshakes_are_dropped_at_the_deadline(tmp_path, servers):
    server = serve(tmp_path, {"PORTAL_ENV_HANDSHAKE_TIMEOUT": "2"})
    servers.append(server)
    target = Address.parse(server.address).target
    drips = []
    for _ in range(20):
        sock = socket.create_connection(target, timeout=5)
        sock.recv(len(wire.MAGIC) + wire.NONCE_BYTES)
        sock.sendall(b"x")  # one byte, and never the rest: only the deadline can end it
        drips.append(sock)
    try:
        assert all(closed_by_peer(sock, 60.0) for sock in drips)  # 60: a hang guard
    finally:
        for sock in drips:
            sock.close()
    assert "within the 2 s deadline" in server.log.read_text()
    with AgentSidePortal("custom", ["CartPole-v1"], **server.kwargs()) as env:
        env.reset()


def test_idle_authenticated_connection_is_closed_with_its_env(tmp_path, servers):
    server = serve(tmp_path, {"PORTAL_ENV_IDLE_TIMEOUT": "1"})
    servers.append(server)
    env = AgentSidePortal("custom", ["CartPole-v1"], **server.kwargs())
    env.reset(seed=0)
    env.step(0)
    time.sleep(2.0)  # a vanished agent
    with pytest.raises(PortalConnectionError):
        env.step(0)
    env.close()
    assert "idle for 1 s" in server.log.read_text()


# -- 8. what a connect timeout says ------------------------------------------------------------


@pytest.mark.timeout(60)  # a hang guard; the message shows the 1.5 s was used
def test_connect_timeout_names_address_and_phase():
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody answers
    address = f"127.0.0.1:{silent.getsockname()[1]}"
    try:
        with pytest.raises(PortalConnectionError) as caught:
            AgentSidePortal("x", ["CartPole-v1"], address=address, token="t", timeout=1.5)
    finally:
        silent.close()
    message = str(caught.value)
    assert address in message and "waiting for the server's greeting" in message
    assert "1.5 s" in message


def test_handshake_honours_a_timeout_longer_than_the_default(monkeypatch):
    monkeypatch.setattr(wire, "HANDSHAKE_TIMEOUT", 0.5)  # the old cap, made short
    slow = socket.create_server(("127.0.0.1", 0))

    def greet_late() -> None:
        conn, _ = slow.accept()
        with conn:
            time.sleep(1.5)
            conn.sendall(b"HELLO" + bytes(wire.NONCE_BYTES))
            conn.recv(100)

    thread = threading.Thread(target=greet_late, daemon=True)
    thread.start()
    address = f"127.0.0.1:{slow.getsockname()[1]}"
    with pytest.raises(ProtocolError, match="is not a portal-env server"):
        AgentSidePortal("x", ["CartPole-v1"], address=address, token="t", timeout=5)
    thread.join(5)
    slow.close()


def test_refused_connection_names_address_and_phase():
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with pytest.raises(PortalConnectionError, match=rf"127\.0\.0\.1:{port} \(connecting\)"):
        AgentSidePortal("x", ["CartPole-v1"], address=f"127.0.0.1:{port}", token="t", timeout=2)


# -- 9. refusal logs under a flood -------------------------------------------------------------


def test_refusal_log_is_throttled_and_names_the_peer(tmp_path, servers):
    server = serve(tmp_path)
    servers.append(server)
    target = Address.parse(server.address).target
    for _ in range(1000):
        with socket.create_connection(target, timeout=5) as sock:
            sock.recv(len(wire.MAGIC) + wire.NONCE_BYTES)
            sock.sendall(bytes(wire.NONCE_BYTES + wire.DIGEST_BYTES))  # a wrong proof
            sock.recv(10)
    server.stop()  # shutdown flushes the count of what was left out
    lines = server.log.read_text().splitlines()
    refusals = [line for line in lines if "refused a connection from 127.0.0.1:" in line]
    refusals = [line for line in refusals if "more like it" not in line]
    text = "\n".join(lines)
    assert 1 <= len(refusals) <= 15 and all("wrong token" in line for line in refusals), text
    left_out = [int(n) for n in re.findall(r"\.\.\. and (\d+) more like it", text)]
    assert sum(left_out) + len(refusals) == 1000, text  # every refusal counted, once
    assert len(lines) < 30, text


# -- the library leaves logging to the application (issue 11) -----------------------------


def test_run_configures_logging_only_from_a_script_top_level():
    code = (
        "import logging, threading, time, gymnasium\n"
        "from portal_env import EnvSidePortal\n"
        "portal = EnvSidePortal(gymnasium.make, port=0, token='t')\n"
        "thread = threading.Thread(target=portal.run)\n"  # called by threading, not __main__
        "thread.start(); time.sleep(0.5)\n"
        "print(len(logging.getLogger().handlers)); portal.close(); thread.join(5)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0" and "serving on" not in done.stderr
    code = (
        "import gymnasium, logging\n"
        "from portal_env import EnvSidePortal\n"
        "portal = EnvSidePortal(gymnasium.make, port=0, token='t')\n"
        "import threading; threading.Timer(0.5, portal.close).start()\n"
        "portal.run()\n"  # a script's top level, like an env's env_main.py
        "print(len(logging.getLogger().handlers))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1" and "portal-env serving on" in done.stderr


class _BigObsEnv(gymnasium.Env):
    """Observations large enough for shared memory, no emulator needed."""

    observation_space = gymnasium.spaces.Box(0, 255, (256, 256, 3), dtype=np.uint8)
    action_space = gymnasium.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


@pytest.mark.parametrize(
    "request_, fails",
    [
        (["make_vec", 2, [], {}], False),
        (["make_vec", 2, [], {}, 1], False),
        (["make_vec", 2, []], True),
        (["make_vec", 2, [], {}, 1, 1, 1], True),
        (["make_vec", 2, [], {}, "1"], True),
        (["make_vec", 2, [], {}, None, 1], False),  # batch_size 1, the server picks workers
        (["make_vec", 2, [], {}, None, True], False),  # an agent before batch sizes were sent
        (["make_vec", 2, [], {}, 1, "yes"], True),
        (["async_reset", [None], None], False),
        (["async_reset", [None]], True),
        (["send", [0], [1]], False),
        (["send", 0, [1]], True),
        (["recv", 1], False),
        (["recv", 1, 0], False),  # into ring slot 0: none
        (["recv", 1, "0"], True),
        (["recv"], True),
        (["recv", "1"], True),
        (["share_memory", "/dev/shm/agent-named", 1 << 20], True),  # no path from the agent
    ],
)
def test_op_table_checks_the_vector_ops(request_, fails):
    # issue 13's ops (make_vec's num_workers, EnvPool-style async) go through the same checks.
    from portal_env.portal.server import parse_request

    if fails:
        with pytest.raises(ProtocolError, match=f"request '{request_[0]}'"):
            parse_request(request_)
    else:
        assert parse_request(request_) == (request_[0], request_[1:])


def test_server_makes_the_ring_sized_mapping_in_its_own_private_dir():
    from portal_env.portal import sharedmem
    from portal_env.portal.server import Session

    session = Session(lambda: _BigObsEnv())
    session.make([], {})
    capacity, max_ring = session.layout.capacity, session.layout.max_ring
    assert session.share_memory(capacity + 1) is None  # not a whole number of slots
    assert session.share_memory(capacity * (2 + max_ring)) is None  # more slots than allowed
    path = session.share_memory(capacity * 3)  # the first slot and a ring of two
    directory = os.path.dirname(path)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    mapping = sharedmem.attach(path, capacity * 3)
    assert mapping is not None and session.share_memory_ready(True)
    assert session.layout.ring_slots == 2 and len(session.layout.shm) == capacity * 3
    assert not os.path.exists(directory)  # removed once both sides have it mapped
    reply = session.handle(["send", [0], [1]])
    assert reply[0] == 1 and "needs a vector env" in reply[1][1]
    mapping.close()
    session.close()
