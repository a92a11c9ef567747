"""The design card's command, end to end, as a user on a cluster runs it:

    portal-env lock vizdoom -b mm && portal-env start vizdoom -b mm -d
    (an agent steps VizdoomBasic-v1 by name)
    portal-env stop vizdoom

with portal-env installed from its wheel into a venv whose site-packages is read-only,
conda-forge reached only through a mirror in ~/.condarc (the conda tests' local channel
of real packages, served as `conda-forge`), ViZDoom's real wheel from PyPI (the spec's
pip: section, installed by uv), under each installer (py-rattler, the micromamba
executable); then the same start on a "compute node" without network (`unshare --net`)
from the cache and user lock made on the "login node".

One cold build per installer: the lock, cache and state of each installer's run are
reused by its offline start; ViZDoom's wheel is downloaded once into uv's cache.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Dict, List

import pytest

from portal_env.runtimes import mirrors, prefix

from . import installers, wheel_install
from .conda_channel import build_channel

pytestmark = [pytest.mark.conda, pytest.mark.slow, pytest.mark.usefixtures("reap_portals")]

CANONICAL = f"{mirrors.DEFAULT_ALIAS}/conda-forge/"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, portal_env_wheel: Path) -> Path:
    """The site-packages of a venv holding portal-env's wheel (its dependencies from this
    Python's site-packages)."""
    root = tmp_path_factory.mktemp("wheel")
    return wheel_install.venv_with(portal_env_wheel, root / "venv", system_site=True)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose ~/.condarc serves conda-forge from a local mirror (file://)."""
    channel = build_channel(tmp_path_factory.mktemp("vizdoom-channel"))
    mirror = tmp_path_factory.mktemp("mirror")
    (mirror / "conda-forge").symlink_to(channel, target_is_directory=True)
    home = tmp_path_factory.mktemp("home")
    (home / ".condarc").write_text(
        f"mirrored_channels:\n  conda-forge:\n    - {mirror.as_uri()}/conda-forge\n"
    )
    return home


def run(
    prefix_: List[str], site: Path, *args: str, env: Dict[str, str]
) -> subprocess.CompletedProcess:
    """`portal-env ARGS` of the wheel's venv, behind prefix_ (read-only, offline)."""
    exe = str(site.parents[2] / "bin" / "portal-env")
    return subprocess.run(
        [*prefix_, exe, *args], capture_output=True, text=True, env=env, timeout=1200
    )


def step_vizdoom(steps: int = 20) -> None:
    from portal_env import AgentSidePortal

    env = AgentSidePortal("vizdoom", env_args=["VizdoomBasic-v1"])
    try:
        obs, _ = env.reset(seed=0)
        assert obs["screen"].ndim == 3 and obs["screen"].size > 0
        for _ in range(steps):
            obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()
    finally:
        env.close()


@pytest.mark.parametrize("installer", installers.ALL)
def test_lock_start_step_stop_through_a_mirror_then_offline_on_a_compute_node(
    installer: str, site: Path, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    if installer == installers.MICROMAMBA and installers.micromamba() is None:
        pytest.skip(f"no micromamba executable here; set {installers.TEST_VAR} (see .ci/run)")
    state, cache = tmp_path / "state", tmp_path / "cache"  # shared by "login" and "compute"
    env = wheel_install.clean_env(**installers.environment(installer, tmp_path / "mamba"))
    env.update(HOME=str(home), PORTAL_ENV_STATE_DIR=str(state), PORTAL_ENV_CACHE_DIR=str(cache))
    env["UV_CACHE_DIR"] = installers.uv_cache_dir()
    monkeypatch.setenv("PORTAL_ENV_STATE_DIR", str(state))  # the agent's registry
    login = wheel_install.read_only(site)
    times = {}

    started = time.monotonic()
    done = run(login, site, "lock", "vizdoom", "-b", "mm", env=env)
    times["lock"] = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    lock = state / "lockfiles" / "vizdoom.conda-lock.yml"  # the user's lock, not the package's
    assert f"locked vizdoom: {lock}" in done.stdout
    assert not (site / "portal_env" / "builtin" / "lockfiles" / lock.name).exists()
    entries = prefix.locked_packages(lock, prefix.current_platform())
    conda = [e["url"] for e in entries if e["manager"] == "conda"]
    assert conda and all(url.startswith(CANONICAL) for url in conda), conda  # no mirror URL
    assert "file://" not in lock.read_text()
    assert any(e["name"] == "vizdoom" for e in entries if e["manager"] == "pip")

    started = time.monotonic()
    done = run(login, site, "start", "vizdoom", "-b", "mm", "-d", env=env)
    times["cold start -d"] = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert "portal 'vizdoom' ready" in done.stdout and "built the conda prefix" in done.stderr
    step_vizdoom()
    assert run([], site, "stop", "vizdoom", env=env).returncode == 0

    # the compute node: no network at all, the login node's cache and lock
    compute = wheel_install.read_only(site, offline=True)
    started = time.monotonic()
    done = run(compute, site, "start", "vizdoom", "-b", "mm", "-d", env=env)
    times["offline start -d"] = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert "built" not in done.stderr and "locking" not in done.stderr
    step_vizdoom()
    assert run([], site, "stop", "vizdoom", env=env).returncode == 0
    built = [p for p in (cache / "conda").iterdir() if p.is_dir()]
    assert len(built) == 1 and installer in (built[0] / ".portal-env-complete").read_text()
    print(f"\n{installer}: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))
