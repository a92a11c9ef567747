"""The two conda installers the conda tests and benchmarks run under: py-rattler and the
micromamba executable.

The micromamba executable is `$PORTAL_ENV_TEST_MICROMAMBA` (what `.ci/run` builds
and sets), else `$MAMBA_EXE`, else `micromamba` on PATH. micromamba gets a root
prefix and a HOME of its own in a temporary directory, so it never writes to the
user's (it records every prefix it creates in `~/.conda/environments.txt`); uv
keeps the user's cache, so wheels are not downloaded again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Dict, Optional

TEST_VAR = "PORTAL_ENV_TEST_MICROMAMBA"
RATTLER = "py-rattler"
MICROMAMBA = "micromamba"
ALL = (RATTLER, MICROMAMBA)


def micromamba() -> Optional[str]:
    """The micromamba executable to test with, or None."""
    given = os.environ.get(TEST_VAR)
    if given:
        if not os.access(given, os.X_OK):
            raise RuntimeError(f"{TEST_VAR}={given} is not an executable file")
        return given
    return os.environ.get("MAMBA_EXE") or shutil.which("micromamba")


def environment(installer: str, root: Path) -> Dict[str, str]:
    """Variables that make portal-env install with installer (root: micromamba's root)."""
    if installer == RATTLER:
        return {"PORTAL_ENV_CONDA_INSTALLER": "rattler"}
    exe = micromamba()
    if exe is None:
        raise RuntimeError(f"no micromamba executable: set {TEST_VAR}")
    (root / "home").mkdir(parents=True, exist_ok=True)
    return {
        "PORTAL_ENV_CONDA_INSTALLER": "micromamba",
        "MAMBA_EXE": exe,
        "MAMBA_ROOT_PREFIX": str(root),
        "HOME": str(root / "home"),
        "UV_CACHE_DIR": uv_cache_dir(),
    }


def uv_cache_dir() -> str:
    """uv's cache as it is before HOME is changed (uv's own default rule)."""
    if os.environ.get("UV_CACHE_DIR"):
        return os.environ["UV_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "uv")
