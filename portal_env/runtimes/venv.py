"""The venv backend: a uv-made virtual environment from an env's locked pip requirements.

A runtime lives in the cache at `venv/<key>`, where key hashes the lockfile,
the Python version and env_setup.py (see `cache` for how it is built and
published).

portal_env itself reaches the runtime as a copy of this package in the cache
(keyed by its source), put on the server's PYTHONPATH: the agent's
site-packages never are, and both sides run the same protocol code.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import IO, Any, Dict, List, Mapping, Optional

from .. import config
from . import lock
from .base import ProcessHandle, Reporter, ServerHandle
from .cache import CachedBackend, package_dir
from .catalog import EnvSource
from .commands import run, uv_bin

_DROP_VARS = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "CONDA_PREFIX")


def runtime_key(lock_path: Path, python: str, setup_script: Optional[Path]) -> str:
    """The cache key of a venv: its lockfile, Python version and env_setup.py."""
    digest = hashlib.sha256(lock_path.read_bytes())
    digest.update(f"\0python={python}\0".encode())
    if setup_script is not None:
        digest.update(setup_script.read_bytes())
    return f"py{python}-{digest.hexdigest()[:20]}"


class VenvRuntime:
    """A finished venv that launches env_main.py with its own Python."""

    backend = "venv"

    def __init__(self, source: EnvSource, venv_dir: Path, package_dir: Path) -> None:
        self.source = source
        self.venv_dir = venv_dir
        self.package_dir = package_dir
        self.location = str(venv_dir)

    def socket_dir(self) -> Optional[Path]:
        """The node's private socket directory: the server shares this host's filesystem."""
        return config.socket_dir()

    @property
    def python(self) -> Path:
        """The runtime's Python interpreter."""
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

    def run_setup(self, extra: Optional[Mapping[str, str]] = None) -> None:
        """Run the env's env_setup.py with the runtime's Python, as the server would run."""
        script = self.source.setup_script
        if script is not None:
            env = self.environment(extra or {})
            run([str(self.python), str(script)], f"run {script}", cwd=self.source.work_dir, env=env)


class VenvBackend(CachedBackend):
    """Builds venvs with uv from a spec's locked pip section."""

    name = "venv"
    flag = "venv"
    what = "the venv"
    lock_kind = "venv"

    def lock(self, source: EnvSource, reporter: Reporter) -> Path:
        """(Re)lock source's spec.yml into its venv lockfile."""
        reporter.status(f"locking {source.require_spec(self.name)} with uv")
        path = lock.write_venv_lock(source, uv_bin())
        reporter.note(f"wrote {path}")
        return path

    def lock_path(self, source: EnvSource) -> Path:
        return lock.venv_lock_path(source)

    def check_lock(self, source: EnvSource, spec: Path) -> Path:
        return lock.check_venv_lock(source, spec)

    def read_spec(self, spec: Path) -> lock.VenvSpec:
        parsed = lock.read_spec(spec)
        lock.require_modern_python(spec, [f"python={parsed.python}"], self.flag)
        return parsed

    def runtime_dir(self, source: EnvSource, lock_path: Path) -> Path:
        key = runtime_key(lock_path, self._python(source, lock_path), source.setup_script)
        return config.cache_dir() / "venv" / key

    def _python(self, source: EnvSource, lock_path: Path) -> str:
        spec = source.require_spec(self.name)
        return lock.locked_python(lock_path) or lock.read_spec(spec).python

    def build(
        self, source: EnvSource, lock_path: Path, runtime_dir: Path, reporter: Reporter
    ) -> Dict[str, Any]:
        python = self._python(source, lock_path)
        reporter.status(f"creating a Python {python} venv for {source.name}")
        run([uv_bin(), "venv", "--quiet", "--python", python, str(runtime_dir)], "create the venv")
        reporter.status(f"installing {lock_path.name} into the venv")
        run(_install_command(runtime_dir, lock_path), f"install {lock_path}")
        if source.setup_script is not None:
            reporter.status(f"running {source.setup_script}")
            VenvRuntime(source, runtime_dir, package_dir()).run_setup()
        return {"python": python}

    def open(self, source: EnvSource, runtime_dir: Path, info: Dict[str, Any]) -> VenvRuntime:
        return VenvRuntime(source, runtime_dir, package_dir())


def _install_command(venv_dir: Path, lock_path: Path) -> List[str]:
    python = str(venv_dir / "bin" / "python")
    return [uv_bin(), "pip", "sync", "--quiet", "--require-hashes", "--python", python] + [
        str(lock_path)
    ]
