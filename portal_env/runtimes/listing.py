"""What `portal-env ls` shows: each built-in env, the backends its files support, its locks.

The backends come from the files present, never from a table: a spec supports
micromamba and docker (an image made from its conda lockfile) when it can be
conda-locked (every pip requirement resolves to a package-index file; a git
URL does not), and venv too when it asks for nothing but Python and pip
packages; a Dockerfile.env alone supports docker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from . import catalog, condalock, lock
from .catalog import EnvSource


@dataclass(frozen=True)
class Entry:
    """One row of `portal-env ls`.

    Attributes:
        name: The built-in env's name.
        backends: Backends its files support, in the order venv, micromamba, docker,
            charliecloud, apptainer.
        venv_lock: Its venv lock (see lock_state), or '-' (no venv support).
        conda_lock: Its conda lock (see lock_state), or '-' (no micromamba support).
    """

    name: str
    backends: List[str]
    venv_lock: str
    conda_lock: str = "-"


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
    if conda_lockable:  # an image exported from the conda lock
        found += ["charliecloud", "apptainer"]
    return found


def lock_state(source: EnvSource, path: Path, recorded: Callable[[Path], Optional[str]]) -> str:
    """Which lockfile of path's kind a built-in uses: 'shipped', 'yours' or 'yours (over
    shipped)' (a lock of your own made with `portal-env lock`, used first), with ', stale'
    when the spec changed since it was made; 'no' when there is none yet."""
    if source.spec is None or not path.is_file():
        return "no"
    if source.shipped_lock(path.name) == path:
        state = "shipped"
    else:
        state = "yours (over shipped)" if source.shadowed_lock(path.name) else "yours"
    stale = lock.freshness(path, source.spec, recorded) == "stale"
    return f"{state}, stale" if stale else state


def builtin_entries() -> List[Entry]:
    """One Entry per built-in env, sorted by name."""
    entries = []
    for name in catalog.builtin_names():
        source = catalog.find(name)
        supported = backends(source)
        venv = conda = "-"
        if "venv" in supported:
            venv = lock_state(source, lock.venv_lock_path(source), lock.recorded_venv_hash)
        if "micromamba" in supported:
            path = condalock.lock_path(source)
            conda = lock_state(source, path, condalock.recorded_spec_hash)
        entries.append(Entry(name, supported, venv, conda))
    return entries
