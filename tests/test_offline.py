"""Offline compute nodes: `start` inside a network namespace with no interface but loopback
(`unshare --net`) serves from a cache built beforehand, and fails at once, naming the
build command, when the cache lacks the runtime."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from portal_env import AgentSidePortal, config
from portal_env.runtimes import offline
from portal_env.serving import registry

from . import test_conda
from .conftest import CLI, needs_netns, offline_cli

# the conda tests' local channel and locked CartPole env (fixtures)
channel, locked_template, env_dir = (
    test_conda.channel,
    test_conda.locked_template,
    test_conda.env_dir,
)

pytestmark = pytest.mark.usefixtures("reap_portals")


def test_reason_setting_overrides_detection(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(offline.OFFLINE_VAR, "1")
    assert offline.reason() == "PORTAL_ENV_OFFLINE=1"
    monkeypatch.setenv(offline.OFFLINE_VAR, "0")
    assert offline.reason() is None


@needs_netns
def test_namespace_without_interfaces_is_detected():
    code = "from portal_env.runtimes import offline; print(offline.reason())"
    done = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", code], capture_output=True, text=True
    )
    assert done.stdout.strip() == "this node has no network interface but loopback"


@needs_netns
def test_venv_start_offline_serves_from_the_cache_built_online(cartpole_dir: Path):
    built = subprocess.run(
        CLI + ["build", "-e", "mycart", "-p", str(cartpole_dir), "-b", "venv"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    done = offline_cli("start", "mycart", "-p", str(cartpole_dir), "-b", "venv", "-d")
    assert done.returncode == 0, done.stderr
    record = registry.lookup("mycart")
    assert record.address.startswith("unix:")  # Unix sockets cross network namespaces
    agent = AgentSidePortal("mycart", ["CartPole-v1"])
    agent.reset(seed=0)
    assert agent.step(0)[1] == 1.0
    agent.close()
    assert subprocess.run(CLI + ["stop", "mycart"], timeout=60).returncode == 0


@needs_netns
@pytest.mark.parametrize("backend", ["venv", "mm"])
def test_empty_cache_offline_fails_at_once_naming_the_build_command(
    cartpole_dir: Path, tmp_path: Path, backend: str
):
    # the example ships a venv lock only: offline, -b mm may not lock (an index query)
    env = dict(os.environ, **{config.CACHE_DIR_VAR: str(tmp_path / "empty-cache")})
    # offline_cli's timeout is the hang guard should it wait on the network
    done = offline_cli("start", "mycart", "-p", str(cartpole_dir), "-b", backend, env=env)
    assert done.returncode == 1
    verb = "lock mycart" if backend == "mm" else "build -e mycart"
    assert f"`portal-env {verb} -p {cartpole_dir} -b {backend}` on a node with network" in (
        done.stderr
    )
    assert "offline (this node has no network interface but loopback)" in done.stderr
    assert registry.get("mycart") is None


@needs_netns
@pytest.mark.conda
def test_mm_start_offline_serves_the_prefix_built_online_and_an_empty_cache_fails(
    env_dir: Path, tmp_path: Path
):
    built = subprocess.run(
        CLI + ["build", "-e", "mycart", "-p", str(env_dir), "-b", "mm"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    done = offline_cli("start", "mycart", "-p", str(env_dir), "-b", "mm", "-d")
    assert done.returncode == 0, done.stderr
    agent = AgentSidePortal("mycart", ["CartPole-v1"])
    agent.reset(seed=0)
    assert agent.step(1)[1] == 1.0
    agent.close()
    assert subprocess.run(CLI + ["stop", "mycart"], timeout=60).returncode == 0
    env = dict(os.environ, **{config.CACHE_DIR_VAR: str(tmp_path / "empty-cache")})
    done = offline_cli("start", "mycart", "-p", str(env_dir), "-b", "mm", env=env)
    assert done.returncode == 1
    assert f"`portal-env build -e mycart -p {env_dir} -b mm` on a node with network" in (
        done.stderr
    )
