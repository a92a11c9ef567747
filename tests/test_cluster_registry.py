"""A registry shared by nodes: records per node, liveness by asking the server, node-local
sockets, long paths, and `start --host` (TCP, token only in the 0600 record)."""

import os
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from portal_env import AgentSidePortal, config
from portal_env.errors import PortalEnvError
from portal_env.serving import liveness, registry

from .conftest import CLI, ServerProcess
from .test_registry import _record as record_of


def _record(name: str = "mycart", node: str = "", **changes) -> registry.Record:
    """A ready record of this process, on node (test_registry's, with a node)."""
    changes = dict(dict(log_path="/nowhere.log", state=registry.READY, node=node), **changes)
    return record_of(name, **changes)


def _refused_address() -> str:
    with socket.socket() as sock:  # bound, never listening: connecting is refused
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def shared_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "job" / "registry"
    monkeypatch.setenv(config.REGISTRY_DIR_VAR, str(path))
    monkeypatch.setenv(config.NODE_VAR, "n1")
    return path


def test_registry_dir_setting_is_private_and_refuses_an_open_one(shared_registry: Path):
    registry.claim(_record())
    record_file = shared_registry / "mycart@n1.json"
    assert stat.S_IMODE(shared_registry.stat().st_mode) == 0o700
    assert stat.S_IMODE(record_file.stat().st_mode) == 0o600
    assert registry.get("mycart").node == "n1"
    shared_registry.chmod(0o770)
    with pytest.raises(PortalEnvError, match=f"chmod 700 {shared_registry}"):
        registry.get("mycart")


def test_one_record_per_node_and_lookup_all_asks_remote_servers(
    shared_registry: Path, server: ServerProcess
):
    registry.claim(_record(address="unix:/n1/sock"))
    registry.write(_record(node="n2", address=server.address, token=server.token))
    assert sorted(p.name for p in shared_registry.glob("*.json")) == [
        "mycart@n1.json",
        "mycart@n2.json",
    ]
    found = registry.lookup_all("mycart")
    assert [(r.node, r.address) for r in found] == [("n1", "unix:/n1/sock"), ("n2", server.address)]
    assert registry.lookup("mycart").node == "n1"  # this node's own server first
    assert [r.node for r in registry.all_records()] == ["n1"]  # `stop --all` kills local pids only
    registry.release("mycart", os.getpid())
    assert registry.lookup("mycart").node == "n2"  # else another node's
    # its pid means nothing here: the dead-pid rule must not touch it
    registry.write(_record(node="n2", name="other", supervisor_pid=1, supervisor_start="1",
                           address=server.address, token=server.token))  # fmt: skip
    assert [r.node for r in registry.lookup_all("other")] == ["n2"]


def test_remote_record_that_does_not_answer_is_kept_but_not_used(shared_registry: Path):
    registry.write(_record(node="n2", address=_refused_address()))
    registry.write(_record(node="n3", address="unix:/nonexistent/of/another/node.sock"))
    assert registry.lookup_all("mycart") == []
    assert registry.lookup("mycart") is None
    # may be restarting, or unreachable from this node: only its own node removes it
    assert (shared_registry / "mycart@n2.json").exists()
    assert (shared_registry / "mycart@n3.json").exists()


def test_remote_record_answered_by_another_server_is_removed(
    shared_registry: Path, server: ServerProcess
):
    registry.write(_record(node="n2", address=server.address, token="not-its-token"))
    assert liveness.ask(server.address, "not-its-token") == liveness.GONE
    assert registry.lookup_all("mycart") == []
    assert not (shared_registry / "mycart@n2.json").exists()


def test_liveness_verdicts(server: ServerProcess):
    assert liveness.ask(server.address, server.token) == liveness.LIVE
    assert liveness.ask(_refused_address(), "x") == "refused"
    with socket.socket() as listener:  # something that is not a portal answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        assert liveness.ask(address, "x", timeout=0.5) != liveness.LIVE


def test_socket_dir_is_node_local_and_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    node_dir = tmp_path / "n1"
    monkeypatch.setenv(config.RUNTIME_DIR_VAR, str(node_dir))
    assert config.socket_dir() == node_dir
    assert stat.S_IMODE(node_dir.stat().st_mode) == 0o700
    monkeypatch.setenv(config.RUNTIME_DIR_VAR, str(tmp_path / ("x" * 120)))
    fallback = config.socket_dir()
    assert fallback is not None and len(str(fallback)) < 70


def _long_dir(base: Path, label: str) -> Path:
    path = base / label / ("d" * 60) / ("e" * 60)
    assert len(os.fsencode(str(path))) > 107
    return path


def test_long_state_cache_and_registry_paths_still_get_a_unix_socket(
    tmp_path: Path, cartpole_dir: Path, reap_portals, monkeypatch: pytest.MonkeyPatch, request
):
    env = dict(os.environ)
    for var, label in (
        (config.STATE_DIR_VAR, "state"),
        (config.REGISTRY_DIR_VAR, "registry"),
        (config.CACHE_DIR_VAR, "cache"),
    ):
        env[var] = str(_long_dir(tmp_path, label))
    run_dir = Path(tempfile.mkdtemp(prefix="pe-run-"))  # node-local and short, as on a node
    request.addfinalizer(lambda: shutil.rmtree(run_dir, ignore_errors=True))
    env[config.RUNTIME_DIR_VAR] = str(run_dir)
    for var in (config.STATE_DIR_VAR, config.REGISTRY_DIR_VAR):
        monkeypatch.setenv(var, env[var])  # this test reads the same registry
    done = subprocess.run(
        CLI + ["start", "mycart", "-p", str(cartpole_dir), "-b", "venv", "-d"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    record = registry.lookup("mycart")
    assert record.address.startswith(f"unix:{run_dir}/")
    agent = AgentSidePortal("mycart", ["CartPole-v1"])
    agent.reset(seed=0)
    assert agent.step(0)[1] == 1.0
    agent.close()
    stop = subprocess.run(CLI + ["stop", "mycart"], env=env, capture_output=True, timeout=60)
    assert stop.returncode == 0
    assert registry.get("mycart") is None
    assert not Path(record.address[len("unix:") :]).exists()


def test_start_host_listens_on_tcp_with_the_token_only_in_the_record(
    cartpole_dir: Path, reap_portals
):
    done = subprocess.run(
        CLI + ["start", "mycart", "-p", str(cartpole_dir), "-b", "venv", "-d"]
        + ["--host", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = registry.lookup("mycart")
    host, port = record.address.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    for pid in (record.supervisor_pid, record.server_pid):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert record.token not in cmdline
    agent = AgentSidePortal("mycart", ["CartPole-v1"])  # found by name, token from the record
    agent.reset(seed=0)
    assert agent.step(1)[1] == 1.0
    agent.close()
    token = subprocess.run(CLI + ["token", "mycart"], capture_output=True, text=True, timeout=30)
    assert token.stdout.strip() == record.token
    assert subprocess.run(CLI + ["stop", "mycart"], timeout=60).returncode == 0
