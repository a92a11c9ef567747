"""The Python lifecycle API (portal_env.serve/build/lock/running/stop) and the gymnasium
registration, with real supervisors, servers and venvs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import portal_env
from portal_env import AgentSidePortal, PortalVectorEnv
from portal_env.errors import BackendUnavailableError, CatalogError, RegistryError
from portal_env.runtimes import catalog, lock
from portal_env.serving import registry

from .conftest import pid_alive, wait_gone

pytestmark = pytest.mark.usefixtures("reap_portals")


def test_serve_as_a_context_manager_stops_everything_on_exit(cartpole_dir: Path):
    with portal_env.serve("mycart", path=cartpole_dir, backend="venv") as portal:
        record = registry.get("mycart")
        assert record is not None and record.state == registry.READY
        assert portal.address == record.address and portal.address.startswith("unix:")
        assert [r.name for r in portal_env.running()] == ["mycart"]
        env = portal.make(env_args=["CartPole-v1"])
        env.reset(seed=0)
        assert env.step(0)[1] == 1.0
        with portal.make_vec(num_envs=3, env_args=["CartPole-v1"]) as vec:
            assert isinstance(vec, PortalVectorEnv)
            obs, _ = vec.reset(seed=0)
            assert obs.shape == (3, 4)
            assert vec.step(np.zeros(3, dtype=np.int64))[1].tolist() == [1.0, 1.0, 1.0]
        env.close()
        by_name = AgentSidePortal("mycart", ["CartPole-v1"])  # the registry finds it too
        by_name.close()
    socket_path = record.address[len("unix:") :]
    assert wait_gone(record.server_pid, 5) and wait_gone(record.supervisor_pid, 5)
    assert registry.get("mycart") is None and portal_env.running() == []
    assert not os.path.exists(socket_path)


def test_an_attached_portal_ends_with_the_process_that_served_it(cartpole_dir: Path):
    """SIGKILL the caller of serve(): its supervisor sees the lifeline close and stops."""
    code = textwrap.dedent(
        f"""
        import sys, time, portal_env
        portal = portal_env.serve("mycart", path={str(cartpole_dir)!r}, backend="venv")
        print(portal.record.supervisor_pid, portal.record.server_pid, flush=True)
        time.sleep(600)
        """
    )
    caller = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        supervisor_pid, server_pid = map(int, caller.stdout.readline().split())
        assert pid_alive(server_pid)
        caller.send_signal(signal.SIGKILL)
        caller.wait(10)
        assert wait_gone(server_pid, 10) and wait_gone(supervisor_pid, 10)
        assert registry.get("mycart") is None
    finally:
        if caller.poll() is None:
            caller.kill()


def test_a_detached_portal_outlives_its_starter_until_stop(cartpole_dir: Path):
    code = (
        "import portal_env\n"
        f"p = portal_env.serve('mycart', path={str(cartpole_dir)!r}, backend='venv', detach=True)\n"
        "print(p.record.server_pid)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    server_pid = int(done.stdout.split()[-1])
    record = registry.get("mycart")
    assert record is not None and record.server_pid == server_pid and pid_alive(server_pid)
    with AgentSidePortal("mycart", ["CartPole-v1"]) as env:
        env.reset(seed=0)
    assert portal_env.stop("mycart") == ["mycart"]
    assert wait_gone(server_pid, 5) and registry.get("mycart") is None
    with pytest.raises(RegistryError, match=r"no portal named 'mycart' is running"):
        portal_env.stop("mycart")


def test_detached_portal_object_stops_it_and_stop_all(cartpole_dir: Path, tmp_path: Path):
    other = tmp_path / "other"
    other.mkdir()
    for path in cartpole_dir.iterdir():
        (other / path.name).write_bytes(path.read_bytes())
    first = portal_env.serve("mycart", path=cartpole_dir, backend="venv", detach=True)
    with portal_env.serve("second", path=other, backend="venv", detach=True):
        pass  # leaving the block of a detached portal does not stop it
    assert sorted(r.name for r in portal_env.running()) == ["mycart", "second"]
    first.stop()
    first.stop()  # idempotent
    assert [r.name for r in portal_env.running()] == ["second"]
    assert portal_env.stop(all=True) == ["second"]
    assert portal_env.running() == []


def test_serve_refuses_a_running_name_and_a_failing_server_reports_its_output(
    cartpole_dir: Path,
):
    with portal_env.serve("mycart", path=cartpole_dir, backend="venv"):
        with pytest.raises(RegistryError, match="already running"):
            portal_env.serve("mycart", path=cartpole_dir, backend="venv")
    (cartpole_dir / "env_main.py").write_text("raise SystemExit('no env here: bad env_main')\n")
    with pytest.raises(portal_env.PortalEnvError, match="bad env_main"):
        portal_env.serve("mycart", path=cartpole_dir, backend="venv", ready_timeout=30)
    assert registry.get("mycart") is None


def test_build_and_lock_through_the_api(cartpole_dir: Path):
    runtime = portal_env.build("mycart", path=cartpole_dir, backend="venv")
    assert runtime.backend == "venv" and Path(runtime.location).is_dir()
    again = portal_env.build("mycart", path=cartpole_dir, backend="venv")
    assert again.location == runtime.location  # cached
    lockfile = cartpole_dir / "spec.venv.lock.txt"
    (cartpole_dir / "spec.yml").write_text((cartpole_dir / "spec.yml").read_text() + "\n# edited\n")
    source = catalog.find("mycart", cartpole_dir)
    assert lock.venv_lock_status(source, source.spec) == "stale"
    # No backend: re-lock what the env has (only a venv lock here).
    assert portal_env.lock("mycart", path=cartpole_dir) == [lockfile]
    assert lock.venv_lock_status(source, source.spec) == "current"
    assert not (cartpole_dir / "spec.conda-lock.yml").exists()
    with pytest.raises(BackendUnavailableError, match="--base-image does not apply to -b venv"):
        portal_env.build("mycart", path=cartpole_dir, backend="venv", base_image="x")


def test_a_backend_the_env_files_do_not_support_is_refused_up_front():
    with pytest.raises(CatalogError) as info:
        portal_env.build("craftium", backend="venv")
    message = str(info.value)
    assert "env 'craftium' cannot be served with -b venv" in message
    assert "asks for conda packages" in message and "use -b micromamba or -b docker" in message


def test_gymnasium_make_by_id_passes_check_env(cartpole_dir: Path):
    with portal_env.serve("mycart", path=cartpole_dir, backend="venv"):
        env = gymnasium.make("portal_env:Portal-v0", env_name="mycart", env_args=["CartPole-v1"])
        assert isinstance(env.unwrapped, AgentSidePortal)
        assert env.spec is not None and env.spec.id == "Portal-v0"
        # Render modes are not checked: in-process CartPole fails that check here too
        # (no pygame, no display); render_mode reaches the remote factory:
        check_env(env.unwrapped, skip_render_check=True)
        rgb = gymnasium.make(
            "portal_env:Portal-v0",
            env_name="mycart",
            env_args=["CartPole-v1"],
            render_mode="rgb_array",
        )
        assert rgb.render_mode == "rgb_array" and rgb.unwrapped.env_kwargs == {
            "render_mode": "rgb_array"
        }
        rgb.close()
        reference = gymnasium.make("CartPole-v1")
        obs, _ = env.reset(seed=3)
        assert np.array_equal(obs, reference.reset(seed=3)[0])
        env.close()


def test_gymnasium_make_vec_by_id_returns_the_portal_vector_env(cartpole_dir: Path):
    with portal_env.serve("mycart", path=cartpole_dir, backend="venv"):
        vec = gymnasium.make_vec(
            "portal_env:Portal-v0",
            num_envs=4,
            vectorization_mode="vector_entry_point",
            env_name="mycart",
            env_args=["CartPole-v1"],
        )
        assert isinstance(vec, PortalVectorEnv) and vec.num_envs == 4
        reference = gymnasium.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
        obs, _ = vec.reset(seed=7)
        assert np.array_equal(obs, reference.reset(seed=7)[0])
        actions = np.array([0, 1, 1, 0])
        got, expected = vec.step(actions), reference.step(actions)
        assert len(got) == len(expected) == 5
        for ours, theirs in zip(got[:4], expected[:4]):
            assert np.array_equal(ours, theirs)
        vec.close()
