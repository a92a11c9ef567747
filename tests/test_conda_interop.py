"""Interoperability of portal-env's conda locks and prefixes with micromamba itself.

Users mix tools: a lockfile from `portal-env lock` must work with `micromamba
create -f` on its own, and a prefix built by micromamba must equal one built by
py-rattler from the same lock, down to the trajectory its server serves.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import List

import numpy as np
import pytest

from portal_env.runtimes import prefix

from . import installers
from .conda_channel import ACTIVATE_VAR, build_channel, locked_cartpole
from .conftest import CLI, wait_gone

pytestmark = pytest.mark.conda

LOCK = "spec.conda-lock.yml"


@pytest.fixture(scope="module")
def micromamba() -> str:
    exe = installers.micromamba()
    if exe is None:
        pytest.skip(f"no micromamba executable here; set {installers.TEST_VAR} (see .ci/run)")
    return exe


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    channel = build_channel(tmp_path_factory.mktemp("interop-channel"))
    env_dir = tmp_path_factory.mktemp("interop-env") / "cartpole"
    return locked_cartpole(env_dir, channel, conda=("cloudpickle", "portal-test-activate"))


def conda_records(prefix_dir: Path) -> List[tuple]:
    """(name, version, build, sha256) of each conda package in a prefix's conda-meta/."""
    records = [json.loads(p.read_text()) for p in (prefix_dir / "conda-meta").glob("*.json")]
    return sorted((r["name"], r["version"], r["build"], r["sha256"]) for r in records)


def pip_records(prefix_dir: Path) -> List[str]:
    """The dist-info directories (name-version) of the prefix's site-packages."""
    return sorted(p.name for p in prefix_dir.glob("lib/python3*/site-packages/*.dist-info"))


def test_micromamba_creates_a_prefix_from_the_lockfile_alone(
    micromamba: str, locked: Path, tmp_path: Path
):
    target = tmp_path / "by-micromamba"
    env = dict(os.environ, **installers.environment(installers.MICROMAMBA, tmp_path / "root"))
    env["CONDA_PKGS_DIRS"] = str(tmp_path / "pkgs")
    command = [micromamba, "create", "--yes", "-p", str(target), "-f", str(locked / LOCK)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    names = {name for name, *_ in conda_records(target)}
    assert {"python", "pip", "cloudpickle", "portal-test-activate"} <= names
    locked_conda = [
        p for p in prefix.locked_packages(locked / LOCK, "linux-64") if p["manager"] == "conda"
    ]
    shas = {sha for *_, sha in conda_records(target)}
    assert shas == {p["hash"]["sha256"] for p in locked_conda}
    # and the lock's pip entries, which micromamba installs with the prefix's pip
    code = "import sys, cloudpickle, gymnasium, numpy, msgpack; print(sys.prefix)"
    out = subprocess.check_output([str(target / "bin" / "python"), "-c", code], text=True)
    assert out.strip() == str(target)
    locked_pip = {
        (p["name"], p["version"])
        for p in prefix.locked_packages(locked / LOCK, "linux-64")
        if p["manager"] == "pip"
    }
    installed = {tuple(name.rsplit(".dist-info")[0].split("-")) for name in pip_records(target)}
    assert {(n.replace("-", "_"), v) for n, v in locked_pip} <= installed


def _serve_and_roll_out(env_dir: Path, steps: int = 200) -> List[np.ndarray]:
    """start -d the env, run a seeded rollout through the portal, stop it."""
    from portal_env import AgentSidePortal
    from portal_env.serving import registry

    done = subprocess.run(
        CLI + ["start", "mycart", "-p", str(env_dir), "-b", "mm", "-d"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    record = registry.get("mycart")
    rng = np.random.default_rng(0)
    env = AgentSidePortal("mycart", env_args=["CartPole-v1"])
    try:
        obs, _ = env.reset(seed=0)
        trajectory, episode = [obs], 0
        for _ in range(steps):
            obs, reward, terminated, truncated, _ = env.step(int(rng.integers(2)))
            trajectory += [obs, np.array([reward, terminated, truncated], dtype=np.float64)]
            if terminated or truncated:
                episode += 1
                obs, _ = env.reset(seed=episode)
                trajectory.append(obs)
    finally:
        env.close()
        subprocess.run(CLI + ["stop", "mycart"], capture_output=True, timeout=60)
    assert wait_gone(record.server_pid)
    return trajectory


@pytest.mark.slow
def test_both_installers_build_the_same_prefix_and_serve_the_same_trajectory(
    micromamba: str,
    locked: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reap_portals: None,
):
    prefixes, trajectories = {}, {}
    for installer in installers.ALL:
        env_dir = tmp_path / installer / "cartpole"
        shutil.copytree(locked, env_dir)
        cache = tmp_path / installer / "cache"
        monkeypatch.setenv("PORTAL_ENV_CACHE_DIR", str(cache))
        for key, value in installers.environment(installer, tmp_path / "root").items():
            monkeypatch.setenv(key, value)
        trajectories[installer] = _serve_and_roll_out(env_dir)
        (prefixes[installer],) = [p for p in (cache / "conda").iterdir() if p.is_dir()]
        marker = json.loads((prefixes[installer] / ".portal-env-complete").read_text())
        assert marker["installer"] == installer
        assert marker["activation"]["variables"][ACTIVATE_VAR].startswith("yes-from-")

    rattler, mamba = (prefixes[name] for name in installers.ALL)
    assert rattler.name == mamba.name  # one cache key: the lock, not the installer
    assert conda_records(rattler) == conda_records(mamba)
    assert len(conda_records(rattler)) == 4  # python, pip, cloudpickle, portal-test-activate
    assert pip_records(rattler) == pip_records(mamba) and pip_records(rattler)
    first, second = (trajectories[name] for name in installers.ALL)
    assert len(first) == len(second) > 200
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
