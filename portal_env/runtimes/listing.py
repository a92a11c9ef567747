"""What `portal-env ls` shows: each built-in env, the backends its files support, its locks.

The backends come from the files present, never from a table: a spec supports
micromamba and docker (an image made from its conda lockfile) when it can be
conda-locked (every pip requirement resolves to a package-index file; a git
URL does not), and venv too when it asks for nothing but Python and pip
packages; a Dockerfile.env alone supports docker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

from . import catalog, condalock, lock
from .catalog import EnvSource


@dataclass(frozen=True)
class Entry:
    """One row of `portal-env ls`.

    Attributes:
        name: The built-in env's name.
        backends: Backends its files support, in the order venv, micromamba, docker.
        venv_lock: 'yes' (a lockfile matching the spec ships), 'stale' (the spec
            changed since it was locked), 'no' (none yet), or '-' (no venv support).
    """

    name: str
    backends: List[str]
    venv_lock: str


def backends(source: EnvSource) -> List[str]:
    """The backends source's files support."""
    found = []
    conda_lockable = False
    if source.spec is not None:
        spec = lock.read_spec(source.spec)
        if not spec.ignored:  # pip packages only: a venv can hold it
            found.append("venv")
        conda_lockable = not condalock.unlockable(spec.pip)
        if conda_lockable:
            found.append("micromamba")
    if source.dockerfile is not None or conda_lockable:
        found.append("docker")
    return found


def venv_lock(source: EnvSource, supported: List[str]) -> str:
    """Whether a current venv lockfile ships with source (see Entry.venv_lock)."""
    if "venv" not in supported or source.spec is None:
        return "-"
    status = lock.venv_lock_status(source, source.spec)
    return {"current": "yes", "missing": "no"}.get(status, status)


def builtin_entries() -> List[Entry]:
    """One Entry per built-in env, sorted by name."""
    entries = []
    for name in catalog.builtin_names():
        source = catalog.find(name)
        supported = backends(source)
        entries.append(Entry(name, supported, venv_lock(source, supported)))
    return entries
