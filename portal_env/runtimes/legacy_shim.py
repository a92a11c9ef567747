"""The `portal_env` package a runtime too old for portal-env imports: the small server.

portal-env needs Python >= 3.8; an env runtime on Python 2.7 or 3.5-3.7 gets, on
its path, a package of the same name made of the small server (`portal_env/legacy`),
what it shares with the main server (the protocol's constants, `portal/protocol.py`,
and the spin policy, `portal/spin.py`), and `legacy/package_init.py` as its
`__init__.py`. So an unchanged env_main.py
(`from portal_env import EnvSidePortal`) serves through it. The copy is made once
per content, in the cache, as `cache.package_dir` is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

from .. import config
from .cache import content_dir

# The first Python the full package runs on; older ones get this package.
MIN_FULL_PYTHON = (3, 8)
# The oldest the small server runs on (besides 2.7).
MIN_SMALL_PYTHON3 = (3, 5)


def needs_shim(version: Tuple[int, int]) -> bool:
    """Whether a runtime of this Python version needs the small server's package."""
    return tuple(version) < MIN_FULL_PYTHON


def check_supported(version: Tuple[int, int], where: str) -> None:
    """Refuse a Python the small server cannot run on, naming it and where it was found."""
    major, minor = version[:2]
    if (major, minor) == (2, 7) or MIN_SMALL_PYTHON3 <= (major, minor):
        return
    from ..errors import BuildError

    raise BuildError(
        f"{where} runs Python {major}.{minor}, which portal-env cannot serve from: the env "
        "side needs Python 2.7, 3.5 or newer (3.8+ for the full package). Install a newer "
        "python in the image, or make env_main.py run with one."
    )


def _files() -> Dict[str, Path]:
    """Where each file of the shim package comes from, by its path inside it."""
    package = Path(__file__).resolve().parent.parent
    files = {
        "portal_env/__init__.py": package / "legacy" / "package_init.py",
        "portal_env/portal/protocol.py": package / "portal" / "protocol.py",
        "portal_env/portal/spin.py": package / "portal" / "spin.py",
    }
    for path in sorted((package / "legacy").glob("*.py")):
        if path.name != "package_init.py":
            files[f"portal_env/legacy/{path.name}"] = path
    return files


def shim_dir(root: Optional[Path] = None) -> Path:
    """A directory holding the shim `portal_env` package (for PYTHONPATH), made once."""
    contents = {name: path.read_bytes() for name, path in _files().items()}
    contents["portal_env/portal/__init__.py"] = b""
    return content_dir(root or config.cache_dir() / "portal_env-shim", contents)
