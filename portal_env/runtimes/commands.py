"""The external commands builds run: uv, and one runner that logs each command and
turns a failure into a BuildError holding its output."""

from __future__ import annotations

import logging
import shlex
import subprocess
from pathlib import Path
from typing import Mapping, Optional, Sequence

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
        env=dict(env) if env is not None else None,
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()
        raise BuildError(
            f"could not {what} (exit code {done.returncode}; command: {shlex.join(command)}):\n"
            f"{output[-4000:]}{config.full_disk_hint(output)}"
        )
