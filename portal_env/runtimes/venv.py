"""The venv backend: a uv-made virtual environment from an env's locked pip requirements.

A runtime lives in the cache at `venv/<key>`, where key hashes the lockfile,
the Python version and env_setup.py: the same inputs give the same venv,
built once. A venv is built at its final path under a file lock and marked
complete last; one without the marker is removed and rebuilt, and a build that
fails or is interrupted removes its directory.

portal_env itself reaches the runtime as a copy of this package in the cache
(keyed by its source), put on the server's PYTHONPATH: the agent's
site-packages never are, and both sides run the same protocol code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import IO, List, Mapping, Optional, Sequence

from .. import config
from ..errors import BuildError
from . import lock, offline
from .base import ProcessHandle, Reporter, ServerHandle
from .catalog import EnvSource

logger = logging.getLogger(__name__)

MARKER = ".portal-env-complete"
_DROP_VARS = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "CONDA_PREFIX")


def uv_bin() -> str:
    """The uv executable shipped by the `uv` PyPI package (never downloaded)."""
    try:
        import uv
    except ImportError:
        raise BuildError(
            "the venv backend needs uv; install it with: pip install 'uv>=0.13,<0.14'"
        ) from None
    return uv.find_uv_bin()


def runtime_key(lock_path: Path, python: str, setup_script: Optional[Path]) -> str:
    """The cache key of a venv: its lockfile, Python version and env_setup.py."""
    digest = hashlib.sha256(lock_path.read_bytes())
    digest.update(f"\0python={python}\0".encode())
    if setup_script is not None:
        digest.update(setup_script.read_bytes())
    return f"py{python}-{digest.hexdigest()[:20]}"


def is_complete(runtime_dir: Path) -> bool:
    """Whether a runtime directory was finished (its marker exists)."""
    return (runtime_dir / MARKER).is_file()


class VenvRuntime:
    """A finished venv that launches env_main.py with its own Python."""

    backend = "venv"
    local = True

    def __init__(self, source: EnvSource, venv_dir: Path, package_dir: Path) -> None:
        self.source = source
        self.venv_dir = venv_dir
        self.package_dir = package_dir
        self.location = str(venv_dir)

    @property
    def python(self) -> Path:
        """The venv's Python interpreter."""
        return self.venv_dir / "bin" / "python"

    def environment(self, extra: Mapping[str, str]) -> dict:
        """The server's environment: ours minus Python path settings, plus extra."""
        env = {k: v for k, v in os.environ.items() if k not in _DROP_VARS}
        env.update(PYTHONPATH=str(self.package_dir), PYTHONNOUSERSITE="1", PYTHONUNBUFFERED="1")
        env.update(extra)
        return env

    def command(self) -> List[str]:
        """The command that runs the server."""
        return [str(self.python), str(self.source.main)]

    def launch(self, env: Mapping[str, str], log: IO[bytes]) -> ServerHandle:
        """Start env_main.py (in the env's working directory) with output to log."""
        return ProcessHandle.spawn(self.command(), self.environment(env), self.source.work_dir, log)


class VenvBackend:
    """Builds venvs with uv from a spec's locked pip section."""

    name = "venv"

    def lock(self, source: EnvSource, reporter: Reporter) -> Path:
        """(Re)lock source's spec.yml into its venv lockfile."""
        reporter.status(f"locking {source.require_spec(self.name)} with uv")
        path = lock.write_venv_lock(source, uv_bin())
        reporter.note(f"wrote {path}")
        return path

    def ensure(self, source: EnvSource, *, force: bool, reporter: Reporter) -> VenvRuntime:
        """The venv for source: locked first if it has no lockfile, built only if needed."""
        lock_path = self.lockfile(source, reporter)
        python = lock.locked_python(lock_path) or lock.read_spec(source.spec).python
        key = runtime_key(lock_path, python, source.setup_script)
        venv_dir = config.cache_dir() / "venv" / key
        with _build_lock(venv_dir, reporter):
            if force and venv_dir.exists():
                reporter.status(f"removing {venv_dir} (forced rebuild)")
                shutil.rmtree(venv_dir)
            if is_complete(venv_dir):
                logger.debug("venv cache hit: %s", venv_dir)
            else:
                offline.refuse(source, self.name, f"the venv {venv_dir}")
                self._build(source, lock_path, python, venv_dir, reporter)
        return VenvRuntime(source, venv_dir, package_dir())

    def remove(self, source: EnvSource) -> List[Path]:
        """Delete the cached venv of source's current lockfile."""
        lock_path = lock.venv_lock_path(source)
        if not lock_path.is_file():
            return []
        python = lock.locked_python(lock_path) or ""
        venv_dir = config.cache_dir() / "venv" / runtime_key(lock_path, python, source.setup_script)
        with _build_lock(venv_dir, None):
            if not venv_dir.exists():
                return []
            shutil.rmtree(venv_dir)
        return [venv_dir]

    def lockfile(self, source: EnvSource, reporter: Reporter) -> Path:
        """source's current lockfile: made (and said so) if missing, refused if stale."""
        spec = source.require_spec(self.name)
        if lock.venv_lock_status(source, spec) == "missing":
            offline.refuse(source, self.name, "a venv lockfile", verb="lock")
            reporter.note(
                f"{source.name}: no venv lockfile yet; locking {spec} "
                f"into {lock.venv_lock_path(source)} (keep it with the spec)"
            )
            return self.lock(source, reporter)
        return lock.check_venv_lock(source, spec)

    def _build(
        self, source: EnvSource, lock_path: Path, python: str, venv_dir: Path, reporter: Reporter
    ) -> None:
        if venv_dir.exists():
            logger.warning("removing the unfinished runtime %s", venv_dir)
            shutil.rmtree(venv_dir)
        started = time.monotonic()
        try:
            reporter.status(f"creating a Python {python} venv for {source.name}")
            _run(
                [uv_bin(), "venv", "--quiet", "--python", python, str(venv_dir)], "create the venv"
            )
            reporter.status(f"installing {lock_path.name} into the venv")
            _run(_install_command(venv_dir, lock_path), f"install {lock_path}")
            if source.setup_script is not None:
                reporter.status(f"running {source.setup_script}")
                _run_setup(source, venv_dir)
            _write_marker(venv_dir, lock_path, python)
        except BaseException:
            shutil.rmtree(venv_dir, ignore_errors=True)
            raise
        reporter.note(f"built the venv for {source.name} in {time.monotonic() - started:.1f}s")


def _install_command(venv_dir: Path, lock_path: Path) -> List[str]:
    python = str(venv_dir / "bin" / "python")
    return [uv_bin(), "pip", "sync", "--quiet", "--require-hashes", "--python", python] + [
        str(lock_path)
    ]


def _run_setup(source: EnvSource, venv_dir: Path) -> None:
    runtime = VenvRuntime(source, venv_dir, package_dir())
    command = [str(runtime.python), str(source.setup_script)]
    _run(command, f"run {source.setup_script}", cwd=source.work_dir, env=runtime.environment({}))


def _run(
    command: Sequence[str], what: str, cwd: Optional[Path] = None, env: Optional[dict] = None
) -> None:
    logger.debug("running %s", shlex.join(command))
    done = subprocess.run(list(command), capture_output=True, text=True, cwd=cwd, env=env)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()
        raise BuildError(
            f"could not {what} (exit code {done.returncode}; command: {shlex.join(command)}):\n"
            f"{output[-4000:]}{config.full_disk_hint(output)}"
        )


def _write_marker(venv_dir: Path, lock_path: Path, python: str) -> None:
    info = {"lockfile": str(lock_path), "python": python, "built_at": time.time()}
    tmp = venv_dir / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(info))
    tmp.replace(venv_dir / MARKER)


class _build_lock:
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


def package_dir() -> Path:
    """A cached copy of the portal_env package for runtimes' PYTHONPATH (made once)."""
    source = Path(config.__file__).resolve().parent
    files = sorted(p for p in source.rglob("*.py") if "builtin" not in p.relative_to(source).parts)
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    root = config.cache_dir() / "portal_env-src" / digest.hexdigest()[:20]
    if not (root / "portal_env").is_dir():
        _copy_package(source, files, root)
    return root


def _copy_package(source: Path, files: List[Path], root: Path) -> None:
    staging = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    try:
        for path in files + [source / "py.typed"]:
            target = staging / "portal_env" / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        try:
            staging.rename(root)  # atomic: readers see all of it or nothing
        except OSError:
            if not (root / "portal_env").is_dir():  # not a concurrent copy that won
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
