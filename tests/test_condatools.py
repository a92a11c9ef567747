"""`-b mm` where no conda tool works: portal-env installed from its wheel into a venv that
lacks py-rattler and conda-lock (as on Python < 3.10, where its markers leave them out),
with no micromamba on PATH, says in one message what it tried; with micromamba given, the
executable alone builds and serves from an existing lock."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from portal_env.runtimes import condatools

from . import installers, wheel_install
from .conda_channel import build_channel, locked_cartpole

pytestmark = [pytest.mark.conda, pytest.mark.usefixtures("reap_portals")]


def test_platform_without_py_rattler_is_rattlers():
    import rattler

    assert condatools.current_platform() == str(rattler.Subdir.current())
    assert platform.machine()  # the table is keyed by it


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory, portal_env_wheel: Path) -> Path:
    """The bin/ of a venv with the wheel and its dependencies but py-rattler and conda-lock."""
    root = tmp_path_factory.mktemp("bare")
    extra = wheel_install.requirements(portal_env_wheel, leave_out=("py-rattler", "conda-lock"))
    wheel_install.venv_with(portal_env_wheel, root / "venv", system_site=False, extra=extra)
    return root / "venv" / "bin"


@pytest.fixture(scope="module")
def locked_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    channel = build_channel(tmp_path_factory.mktemp("tools-channel"))
    return locked_cartpole(tmp_path_factory.mktemp("tools-env") / "cartpole", channel)


def portal_env(bin_dir: Path, *args: str, **changes: str) -> subprocess.CompletedProcess:
    """The venv's `portal-env ARGS`, with no micromamba but what changes names."""
    env = wheel_install.clean_env(PATH=f"{bin_dir}:/usr/bin:/bin")
    env.pop("MAMBA_EXE", None)
    env.pop("PORTAL_ENV_CONDA_INSTALLER", None)
    env.update(changes)
    return subprocess.run(
        [str(bin_dir / "portal-env"), *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.mark.slow
def test_no_micromamba_and_no_py_rattler_is_one_message_listing_what_was_tried(
    bare_venv: Path, locked_env: Path, tmp_path: Path
):
    assert shutil.which("micromamba", path=f"{bare_venv}:/usr/bin:/bin") is None
    state = dict(PORTAL_ENV_STATE_DIR=str(tmp_path / "state"))
    state.update(PORTAL_ENV_CACHE_DIR=str(tmp_path / "cache"))
    python = bare_venv / "python"
    version = "{}.{}".format(*sys.version_info[:2])
    done = portal_env(bare_venv, "start", "cp", "-p", str(locked_env), "-b", "mm", "-d", **state)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "-b mm cannot install conda packages on this machine. Tried:" in done.stderr
    assert "the micromamba executable: $MAMBA_EXE is not set and there is no `micromamba`" in (
        done.stderr
    )
    assert f"py-rattler: not installed for {python} (Python {version})" in done.stderr
    assert "micromamba (put it on PATH or set MAMBA_EXE" in done.stderr
    assert "-b venv (PyPI packages only) or -b docker" in done.stderr
    assert not (tmp_path / "cache" / "conda").exists() or not any(
        p.is_dir() for p in (tmp_path / "cache" / "conda").iterdir()
    )
    # locking needs py-rattler and conda-lock whatever installs; the message says where to
    # put a lockfile made elsewhere
    lock = locked_env / "spec.conda-lock.yml"
    done = portal_env(bare_venv, "lock", "cp", "-p", str(locked_env), "-b", "mm", **state)
    assert done.returncode == 1, done.stderr
    assert "-b mm cannot lock the spec of cp on this machine. Tried:" in done.stderr
    assert "py-rattler: not installed" in done.stderr and "conda-lock: not installed" in done.stderr
    assert f"copy the lockfile to {lock}" in done.stderr


@pytest.mark.slow
def test_the_micromamba_executable_alone_builds_and_serves_an_existing_lock(
    bare_venv: Path, locked_env: Path, tmp_path: Path
):
    exe = installers.micromamba()
    if exe is None:
        pytest.skip(f"no micromamba executable here; set {installers.TEST_VAR} (see .ci/run)")
    env = installers.environment(installers.MICROMAMBA, tmp_path / "mamba")
    env.update(PORTAL_ENV_STATE_DIR=str(tmp_path / "state"))
    env.update(PORTAL_ENV_CACHE_DIR=str(tmp_path / "cache"))
    done = portal_env(bare_venv, "start", "cp", "-p", str(locked_env), "-b", "mm", "-d", **env)
    assert done.returncode == 0, done.stderr
    stopped = portal_env(bare_venv, "stop", "cp", **env)
    assert stopped.returncode == 0, stopped.stderr
    marker = next((tmp_path / "cache" / "conda").glob("*/.portal-env-complete"))
    assert '"installer": "micromamba"' in marker.read_text()
