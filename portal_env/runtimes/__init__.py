"""Backends by name: each one builds runtimes of one kind and launches servers in them.

Backend modules are imported only when selected, so `import portal_env` never
pulls in a build tool.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Dict, List

from ..errors import BackendUnavailableError
from .base import Backend, LogReporter, ProcessHandle, Reporter, Runtime, ServerHandle

AVAILABLE: Dict[str, str] = {
    "venv": "portal_env.runtimes.venv:VenvBackend",
    "micromamba": "portal_env.runtimes.micromamba:MicromambaBackend",
    "docker": "portal_env.runtimes.docker:DockerBackend",
    "charliecloud": "portal_env.runtimes.charliecloud:CharliecloudBackend",
    "apptainer": "portal_env.runtimes.apptainer:ApptainerBackend",
}
ALIASES = {"mm": "micromamba", "ch": "charliecloud"}

__all__ = [
    "Backend",
    "LogReporter",
    "ProcessHandle",
    "Reporter",
    "Runtime",
    "ServerHandle",
    "canonical",
    "choices",
    "get",
]


def choices() -> List[str]:
    """Every backend name the CLI accepts, aliases included."""
    return sorted(set(AVAILABLE) | set(ALIASES))


def canonical(name: str) -> str:
    """The backend's own name for name or an alias ('mm' -> 'micromamba')."""
    name = ALIASES.get(name, name)
    if name not in AVAILABLE:
        raise BackendUnavailableError(
            f"unknown backend {name!r}; choose one of: {', '.join(choices())}"
        )
    return name


def get(name: str, **options: Any) -> Backend:
    """The backend called name (or an alias), made with options (e.g. docker's
    base_image); an option the backend does not take is a clear error."""
    module, _, attr = AVAILABLE[canonical(name)].partition(":")
    backend = getattr(importlib.import_module(module), attr)
    unknown = sorted(set(options) - set(inspect.signature(backend).parameters))
    if unknown:
        flags = ", ".join("--" + option.replace("_", "-") for option in unknown)
        raise BackendUnavailableError(f"{flags} does not apply to -b {name}")
    return backend(**options)
