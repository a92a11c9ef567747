"""The external commands builds run: uv, and one runner that logs each command and
turns a failure into a BuildError holding its output."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

from .. import config
from ..errors import BuildError

logger = logging.getLogger(__name__)


def uv_bin() -> str:
    """The uv executable shipped by the `uv` PyPI package (never downloaded)."""
    try:
        import uv
    except ImportError:
        raise BuildError(
            "building runtimes needs uv; install it with: pip install 'uv>=0.13,<0.14'"
        ) from None
    return uv.find_uv_bin()


def tool_environment(env: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """env (default: ours) for a build command, with uv's cache in portal-env's cache when
    uv's own default (~/.cache/uv) cannot be written: a read-only home, as in containers."""
    result = dict(os.environ if env is None else env)
    if result.get("UV_CACHE_DIR") or result.get("UV_NO_CACHE") or _uv_default_writable(result):
        return result
    result["UV_CACHE_DIR"] = str(config.cache_dir() / "uv")
    logger.debug("uv's default cache cannot be written; using %s", result["UV_CACHE_DIR"])
    return result


def _uv_default_writable(env: Mapping[str, str]) -> bool:
    base = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME") or "~", ".cache")
    path = Path(os.path.expanduser(base)) / "uv"
    if not path.is_absolute():
        return False
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def run(
    command: Sequence[str],
    what: str,
    cwd: Optional[Path] = None,
    env: Optional[Mapping[str, str]] = None,
) -> None:
    """Run command; a BuildError saying it could not `what`, with its output, if it fails."""
    logger.debug("running %s", shlex.join(command))
    done = subprocess.run(
        list(command),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=tool_environment(env),
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()
        raise BuildError(
            f"could not {what} (exit code {done.returncode}; command: {shlex.join(command)}):\n"
            f"{output[-4000:]}{config.full_disk_hint(output)}"
        )
