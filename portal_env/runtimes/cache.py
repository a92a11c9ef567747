"""Runtimes built once into the cache: the part the venv and conda-prefix backends share.

A runtime directory is named by a key that hashes everything it is built from,
so the same inputs give the same directory, built once. Tools such as conda
write the directory's path into the files they install, so a runtime is built
at its final path, under a file lock, and published by a completion marker
written last: a directory without the marker is removed and rebuilt, and a
build that fails or is interrupted (Ctrl-C included) removes its directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .. import config
from . import offline
from .base import Reporter
from .catalog import EnvSource

logger = logging.getLogger(__name__)

MARKER = ".portal-env-complete"


def is_complete(runtime_dir: Path) -> bool:
    """Whether a runtime directory was finished (its marker exists)."""
    return (runtime_dir / MARKER).is_file()


def write_marker(runtime_dir: Path, info: Dict[str, Any]) -> None:
    """Publish runtime_dir as complete, recording info (atomically, last step of a build)."""
    tmp = runtime_dir / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(dict(info, built_at=time.time()), indent=1, sort_keys=True))
    tmp.replace(runtime_dir / MARKER)


def read_marker(runtime_dir: Path) -> Dict[str, Any]:
    """What the build of a complete runtime directory recorded."""
    return json.loads((runtime_dir / MARKER).read_text())


class BuildLock:
    """Holds the file lock of one runtime directory; says so when it has to wait."""

    def __init__(self, runtime_dir: Path, reporter: Optional[Reporter]) -> None:
        import filelock

        runtime_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.lock = filelock.FileLock(str(runtime_dir) + ".lock")
        self.reporter = reporter
        self.timeout_error = filelock.Timeout

    def __enter__(self) -> None:
        try:
            self.lock.acquire(timeout=0)
        except self.timeout_error:
            if self.reporter is not None:
                self.reporter.status("waiting for another portal-env build of this runtime")
            self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


class CachedBackend:
    """A backend whose runtimes are directories in the cache, built from a lockfile.

    Subclasses say where the lockfile is and whether it is current, where a
    runtime goes, how to build one and how to open a built one.
    """

    name = ""
    flag = ""  # how `-b` names it in commands we suggest: "venv", "mm"
    what = "runtime"  # how notes call a runtime: "the venv", "the conda prefix"
    lock_kind = ""  # how notes call its lockfile: "venv", "conda"

    def lock(self, source: EnvSource, reporter: Reporter) -> Path:
        """(Re)write source's lockfile; returns its path."""
        raise NotImplementedError

    def lock_path(self, source: EnvSource) -> Path:
        """Where source's lockfile of this backend's kind lives."""
        raise NotImplementedError

    def check_lock(self, source: EnvSource, spec: Path) -> Path:
        """The lockfile, if it matches spec; a LockError naming the relock command if not."""
        raise NotImplementedError

    def runtime_dir(self, source: EnvSource, lock_path: Path) -> Path:
        """The cache directory of source's runtime built from lock_path."""
        raise NotImplementedError

    def build(
        self, source: EnvSource, lock_path: Path, runtime_dir: Path, reporter: Reporter
    ) -> Dict[str, Any]:
        """Build the runtime into the (new, empty) runtime_dir; what its marker records."""
        raise NotImplementedError

    def open(self, source: EnvSource, runtime_dir: Path, info: Dict[str, Any]) -> Any:
        """The Runtime of a complete runtime_dir whose marker recorded info."""
        raise NotImplementedError

    def lockfile(self, source: EnvSource, reporter: Reporter) -> Path:
        """source's current lockfile: made (and said so) if missing, refused if stale.

        The spec is read first, so that an unreadable spec is reported as such
        (file, line) rather than as a spec whose hash changed.
        """
        spec = source.require_spec(self.name)
        self.read_spec(spec)
        path = self.lock_path(source)
        if not path.is_file():
            offline.refuse(source, self.flag, f"a {self.lock_kind} lockfile", verb="lock")
            keep = "your lock of this built-in" if source.builtin else "keep it with the spec"
            reporter.note(
                f"{source.name}: no {self.lock_kind} lockfile yet; locking {spec} "
                f"into {path} ({keep})"
            )
            return self.lock(source, reporter)
        shadowed = source.shadowed_lock(path.name)
        if shadowed is not None:
            reporter.note(
                f"{source.name}: using your {self.lock_kind} lock {path}, not the one shipped "
                f"with portal-env ({shadowed}); delete yours to use the shipped one"
            )
        return self.check_lock(source, spec)

    def read_spec(self, spec: Path) -> object:
        """Parse spec the way this backend does (errors name the file and line)."""
        raise NotImplementedError

    def ensure(self, source: EnvSource, *, force: bool, reporter: Reporter) -> Any:
        """The runtime for source: locked first if it has no lockfile, built only if needed."""
        lock_path = self.lockfile(source, reporter)
        runtime_dir = self.runtime_dir(source, lock_path)

        def build() -> Dict[str, Any]:
            offline.refuse(source, self.flag, f"{self.what} {runtime_dir}", extra=self.flags())
            info = self.build(source, lock_path, runtime_dir, reporter)
            return dict(info, lockfile=str(lock_path))

        info = build_once(runtime_dir, build, force=force, reporter=reporter)
        if info.get("built_now"):
            reporter.note(f"built {self.what} for {source.name} in {info['seconds']:.1f}s")
        return self.open(source, runtime_dir, info)

    def flags(self) -> List[str]:
        """Options beyond `-b FLAG` that a command rebuilding this runtime needs."""
        return []


def build_once(
    runtime_dir: Path,
    build: Callable[[], Dict[str, Any]],
    *,
    force: bool,
    reporter: Optional[Reporter],
) -> Dict[str, Any]:
    """What runtime_dir's marker records, after build() made it, unless it was complete.

    Under runtime_dir's file lock; force rebuilds. build() fills the new, empty (not yet
    existing) runtime_dir; whatever it raises (Ctrl-C too) removes runtime_dir, so no
    half-built runtime is ever left. The info of a build made now has built_now and seconds.
    """
    with BuildLock(runtime_dir, reporter):
        if force and runtime_dir.exists():
            if reporter is not None:
                reporter.status(f"removing {runtime_dir} (forced rebuild)")
            shutil.rmtree(runtime_dir)
        if is_complete(runtime_dir):
            logger.debug("cache hit: %s", runtime_dir)
            return read_marker(runtime_dir)
        if runtime_dir.exists():
            logger.warning("removing the unfinished runtime %s", runtime_dir)
            shutil.rmtree(runtime_dir)
        started = time.monotonic()
        try:
            info = build()
            write_marker(runtime_dir, info)
        except BaseException:  # Ctrl-C too: never leave a half-built runtime
            shutil.rmtree(runtime_dir, ignore_errors=True)
            raise
        return dict(read_marker(runtime_dir), built_now=True, seconds=time.monotonic() - started)


def package_dir() -> Path:
    """A cached copy of the portal_env package for runtimes' PYTHONPATH (made once)."""
    source = Path(config.__file__).resolve().parent
    files = sorted(p for p in source.rglob("*.py") if "builtin" not in p.relative_to(source).parts)
    contents = {f"portal_env/{p.relative_to(source)}": p.read_bytes() for p in files}
    contents["portal_env/py.typed"] = (source / "py.typed").read_bytes()
    return content_dir(config.cache_dir() / "portal_env-src", contents)


def content_dir(root: Path, contents: Dict[str, bytes]) -> Path:
    """root/<hash of contents>, holding contents (relative path: bytes), written once.

    Written beside it and renamed into place: readers, and a concurrent writer of the
    same contents, see all of it or nothing.
    """
    digest = hashlib.sha256()
    for name in sorted(contents):
        digest.update(name.encode() + b"\0" + contents[name])
    target = root / digest.hexdigest()[:20]
    if target.is_dir():
        return target
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    try:
        for name, data in contents.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # not a concurrent copy that won
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
