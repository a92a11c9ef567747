"""supervisor: start, health check, fail fast, restart on the same port, give up, stop."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from portal_env import AgentSidePortal
from portal_env.errors import PortalConnectionError, ServerStartError, SupervisorError
from portal_env.runtimes import LogReporter, catalog
from portal_env.runtimes.venv import VenvBackend
from portal_env.serving import registry
from portal_env.serving.supervisor import Policy, Supervisor

from .conftest import pid_alive, wait_gone

pytestmark = pytest.mark.usefixtures("reap_portals")


def _supervisor(env_dir: Path, name: str = "mycart", **policy) -> Supervisor:
    source = catalog.find(name, env_dir)
    runtime = VenvBackend().ensure(source, force=False, reporter=LogReporter())
    return Supervisor(name, runtime, source.env_dir, Policy(**policy))


def _agent(name: str) -> AgentSidePortal:
    record = registry.lookup(name)
    return AgentSidePortal(name, ["CartPole-v1"], address=record.address, token=record.token)


def test_start_serves_and_close_leaves_nothing(cartpole_dir: Path):
    with _supervisor(cartpole_dir) as sup:
        record = sup.start()
        assert record.state == "ready" and record.server_pid == sup.handle.pid
        env = _agent("mycart")
        env.reset(seed=0)
        assert env.step(0)[1] == 1.0
        env.close()
        server = sup.handle.pid
    assert not pid_alive(server)
    assert registry.get("mycart") is None
    log = registry.log_path("mycart").read_text()
    assert "portal-env serving on" in log and "stopped (exit code 0)" in log


def test_ready_files_are_removed_once_read_and_old_ones_swept(
    cartpole_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    runtime_dir = tmp_path / "run"
    runtime_dir.mkdir(mode=0o700)
    monkeypatch.setenv("PORTAL_ENV_RUNTIME_DIR", str(runtime_dir))
    old, recent = runtime_dir / ".gone-0a1b2c3d.ready", runtime_dir / ".other-4e5f6a7b.ready"
    for path in (old, recent):  # a supervisor SIGKILLed while its server started; one starting
        path.write_text("unix:/nowhere")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    with _supervisor(cartpole_dir) as sup:
        sup.start()
        assert sorted(p.name for p in runtime_dir.glob(".*.ready")) == [recent.name]


@pytest.mark.parametrize(
    "main, expected",
    [
        ("import gymnasium\ndef broken(:\n", "SyntaxError"),
        ("import no_such_module_xyz\n", "No module named 'no_such_module_xyz'"),
    ],
)
@pytest.mark.timeout(300)  # the exit is noticed; the ready timeout would hang past this
def test_broken_env_main_fails_fast_with_its_traceback(cartpole_dir: Path, main, expected):
    (cartpole_dir / "env_main.py").write_text(main)
    with _supervisor(cartpole_dir, ready_timeout=3600) as sup:
        with pytest.raises(ServerStartError, match="exited with code 1 before it was ready") as e:
            sup.start()
    assert expected in str(e.value) and "env_main.py" in str(e.value)
    assert registry.get("mycart") is None


@pytest.mark.slow
def test_killed_server_is_restarted_on_the_same_port(cartpole_dir: Path):
    with _supervisor(cartpole_dir) as sup:
        first = sup.start()
        watcher = threading.Thread(target=sup.watch, daemon=True)
        watcher.start()
        env = _agent("mycart")
        env.reset(seed=0)
        os.kill(first.server_pid, signal.SIGKILL)
        with pytest.raises(PortalConnectionError, match="lost the connection"):
            env.step(0)
        deadline = time.monotonic() + 30
        while (registry.lookup("mycart").restarts < 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        second = registry.lookup("mycart")
        assert second.restarts == 1 and second.server_pid != first.server_pid
        assert second.address == first.address and second.token == first.token
        env.reset(seed=1)  # reconnects and makes a new remote env
        assert env.step(1)[1] == 1.0
        env.close()
        sup.stop()
        watcher.join(10)
    assert not pid_alive(second.server_pid)


@pytest.mark.slow
def test_gives_up_on_a_server_that_keeps_dying(cartpole_dir: Path):
    (cartpole_dir / "env_main.py").write_text(
        "import os, threading, gymnasium\n"
        "from portal_env import EnvSidePortal\n"
        "portal = EnvSidePortal(gymnasium.make)\n"
        "threading.Timer(0.2, lambda: os._exit(3)).start()\n"
        "portal.run()\n"
    )
    with _supervisor(cartpole_dir, backoff=(0.05,), max_failures=3) as sup:
        sup.start()
        with pytest.raises(SupervisorError, match=r"died 3 times .*exit code 3.*giving up"):
            sup.watch()
    assert registry.get("mycart") is None
    assert registry.log_path("mycart").read_text().count("restarting in") == 2  # not the 3rd
    # the README's "gives up after 5 deaths in 60 s"
    assert (Policy().max_failures, Policy().failure_window) == (5, 60.0)


@pytest.mark.slow
def test_two_portals_of_one_env_side_by_side(cartpole_dir: Path):
    with _supervisor(cartpole_dir, name="cart-a") as a, _supervisor(cartpole_dir, "cart-b") as b:
        ra, rb = a.start(), b.start()
        assert ra.address != rb.address and ra.token != rb.token
        envs = [_agent("cart-a"), _agent("cart-b")]
        for env in envs:
            env.reset(seed=0)
            assert env.step(0)[1] == 1.0
            env.close()
    assert wait_gone(ra.server_pid) and wait_gone(rb.server_pid)
