"""Which conda tools this machine has, and the one error that lists what was tried.

Locking a conda spec needs py-rattler (the solve) and conda-lock (the lockfile's
writer). Installing a lockfile needs the micromamba executable (`$MAMBA_EXE`, else
`micromamba` on PATH) or py-rattler; `PORTAL_ENV_CONDA_INSTALLER=rattler|micromamba`
forces one. py-rattler installs only on Python >= 3.10, so on an older Python the
micromamba executable alone can build prefixes from a lockfile made elsewhere.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import List, Optional

from ..errors import BackendUnavailableError, BuildError

INSTALLER_VAR = "PORTAL_ENV_CONDA_INSTALLER"  # "rattler" or "micromamba": force one
MICROMAMBA = "micromamba"
RATTLER = "py-rattler"
RATTLER_REQUIREMENT = "'py-rattler>=0.28,<0.29' 'conda-lock>=4,<5'"
_MACHINES = {"x86_64": "64", "amd64": "64", "aarch64": "aarch64", "arm64": "arm64"}
_MACHINES.update(ppc64le="ppc64le", s390x="s390x", i686="32", i386="32")
_SYSTEMS = {"linux": "linux", "darwin": "osx", "win32": "win"}


def current_platform() -> str:
    """This machine's conda platform name, e.g. linux-64 (py-rattler not needed)."""
    system = _SYSTEMS.get(sys.platform, sys.platform)
    machine = platform.machine().lower()
    if system == "osx" and machine in ("aarch64", "arm64"):
        return "osx-arm64"
    if system == "linux" and machine in ("aarch64", "arm64"):
        return "linux-aarch64"
    return f"{system}-{_MACHINES.get(machine, machine)}"


def micromamba_exe() -> Optional[str]:
    """The micromamba executable found ($MAMBA_EXE, else `micromamba` on PATH), or None."""
    return os.environ.get("MAMBA_EXE") or shutil.which("micromamba")


def missing_module(module: str, name: str) -> Optional[str]:
    """Why the Python package `name` (module `module`) cannot be used here, or None."""
    if importlib.util.find_spec(module) is not None:
        return None
    too_old = "; it needs Python >= 3.10" if sys.version_info < (3, 10) else ""
    version = "{}.{}".format(*sys.version_info[:2])
    return f"{name}: not installed for {sys.executable} (Python {version}{too_old})"


def installer() -> str:
    """Which installer builds prefixes: micromamba when found, else py-rattler, unless
    $PORTAL_ENV_CONDA_INSTALLER forces one; an error listing what was tried when none can."""
    forced = os.environ.get(INSTALLER_VAR, "").strip().lower()
    if forced not in ("", "rattler", "py-rattler", MICROMAMBA):
        raise BuildError(
            f"{INSTALLER_VAR}={forced!r} is not an installer; use 'rattler' or 'micromamba', "
            "or unset it (micromamba when found, else py-rattler)"
        )
    if forced == MICROMAMBA and micromamba_exe() is None:
        raise BuildError(
            f"{INSTALLER_VAR}=micromamba, but no micromamba executable was found: set "
            f"MAMBA_EXE to its path or put it on PATH, or unset {INSTALLER_VAR} "
            "(then py-rattler installs)"
        )
    if forced == MICROMAMBA or (not forced and micromamba_exe() is not None):
        return MICROMAMBA
    rattler = missing_module("rattler", "py-rattler")
    if rattler is not None:
        tried = [rattler] if forced else [_micromamba_tried(), rattler]
        raise no_tool("install conda packages", tried)
    return RATTLER


def _micromamba_tried() -> str:
    return (
        "the micromamba executable: $MAMBA_EXE is not set and there is no `micromamba` on "
        f"PATH ({os.environ.get('PATH', '')})"
    )


def require_lock_tools(what: str, lockfile: Path) -> None:
    """A clear error, listing what is missing, when py-rattler or conda-lock is not here to
    do what (e.g. "lock the spec of vizdoom"); lockfile: where the lock would be written."""
    tried = [missing_module("rattler", "py-rattler"), missing_module("conda_lock", "conda-lock")]
    missing = [reason for reason in tried if reason is not None]
    if missing:
        exe = micromamba_exe()
        then = (
            f"micromamba ({exe}) installs it here"
            if exe
            else "installing it here then needs micromamba on PATH or in MAMBA_EXE"
        )
        raise no_tool(
            what,
            missing,
            f"Install them into this Python (>= 3.10): pip install {RATTLER_REQUIREMENT}; or "
            f"lock on a machine that has them and copy the lockfile to {lockfile} ({then}).",
        )


def no_tool(what: str, tried: List[str], todo: str = "") -> BackendUnavailableError:
    """The error for -b mm when no tool can do what; tried: why each one cannot."""
    lines = "".join(f"\n  - {reason}" for reason in tried)
    todo = todo or (
        "Install one: micromamba (put it on PATH or set MAMBA_EXE; HPC sites often have a "
        f"module), or py-rattler into this Python (>= 3.10): pip install {RATTLER_REQUIREMENT}."
    )
    return BackendUnavailableError(
        f"-b mm cannot {what} on this machine. Tried:{lines}\n{todo} Or serve the env "
        "without conda packages: -b venv (PyPI packages only) or -b docker."
    )
