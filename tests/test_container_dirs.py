"""Where portal-env keeps things in a container: a read-only or missing $HOME moves the
state dir, the cache and uv's cache to a private directory under $TMPDIR; settings the
user gave are never second-guessed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from portal_env import config
from portal_env.errors import DirectoryError
from portal_env.runtimes import commands

from .conftest import ROOT, needs_mount_namespace

REPORT = """
import json
from portal_env import config
from portal_env.runtimes import commands
print(json.dumps({
    "state": str(config.state_dir()),
    "cache": str(config.cache_dir()),
    "uv": commands.tool_environment().get("UV_CACHE_DIR"),
}))
"""


@pytest.fixture
def container_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No portal-env or XDG settings, $TMPDIR private to the test; returns $TMPDIR."""
    for var in (config.STATE_DIR_VAR, config.CACHE_DIR_VAR, "UV_CACHE_DIR", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    for var in ("XDG_STATE_HOME", "XDG_CACHE_HOME", config.RUNTIME_DIR_VAR):
        monkeypatch.delenv(var, raising=False)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    return tmp


def test_a_home_that_cannot_hold_directories_moves_state_and_caches_to_tmp(
    container_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    home = tmp_path / "home-is-a-file"
    home.write_text("")
    monkeypatch.setenv("HOME", str(home))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read $TMPDIR
    private = container_env / f"portal-env-{os.getuid()}"
    assert config.state_dir() == private / "state"
    assert config.cache_dir() == private / "cache"
    assert commands.tool_environment()["UV_CACHE_DIR"] == str(private / "cache" / "uv")
    assert (private.stat().st_mode & 0o777) == 0o700


def test_a_setting_that_cannot_be_written_is_an_error_not_a_fallback(
    container_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv(config.STATE_DIR_VAR, str(blocked / "state"))
    with pytest.raises(DirectoryError, match=f"set {config.STATE_DIR_VAR}=DIR"):
        config.state_dir()


@needs_mount_namespace
def test_a_read_only_home_as_in_a_container(container_env: Path, tmp_path: Path):
    """$HOME on a read-only file system (a bind mount in a namespace of this test's own):
    EROFS even for root."""
    home = tmp_path / "home"
    home.mkdir()
    shell = (
        f'mount --bind "{home}" "{home}" && mount -o remount,bind,ro "{home}" && '
        f'exec "{sys.executable}" -c "$REPORT"'
    )
    env = dict(os.environ, HOME=str(home), REPORT=REPORT, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", shell],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    private = container_env / f"portal-env-{os.getuid()}"
    assert found == {
        "state": str(private / "state"),
        "cache": str(private / "cache"),
        "uv": str(private / "cache" / "uv"),
    }
    assert list(home.iterdir()) == []
