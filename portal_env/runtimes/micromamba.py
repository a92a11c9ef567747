"""The micromamba (`mm`) backend: a conda prefix built from an env's conda-lock file.

A prefix lives in the cache at `conda/<key>`, where key hashes this platform's
locked packages (URLs and hashes) and env_setup.py (see `cache` for how it is
built and published, `prefix` for how it is installed and activated: the
micromamba executable when there is one, else py-rattler).

The server runs the prefix's own interpreter with the prefix activated the way
`micromamba run` would, but as a direct child of the supervisor, so signals
reach it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from .. import config
from ..errors import ChannelError
from . import condalock, condatools, listing, lock, prefix
from .base import Reporter
from .cache import CachedBackend, package_dir
from .catalog import EnvSource
from .commands import uv_bin
from .prefix import Activation, PrefixRuntime


class MicromambaBackend(CachedBackend):
    """Builds conda prefixes from conda-lock files (micromamba executable or py-rattler)."""

    name = "micromamba"
    flag = "mm"
    what = "the conda prefix"
    lock_kind = "conda"

    def __init__(self, platforms: Optional[List[str]] = None) -> None:
        self.platforms = list(platforms or [])

    def lock(self, source: EnvSource, reporter: Reporter) -> Path:
        """(Re)lock source's spec.yml into its conda-lock file."""
        spec = source.require_spec(self.name)
        target = source.lock_for_writing(condalock.lock_name(source))
        condatools.require_lock_tools(f"lock the spec of {source.name}", target)
        reporter.status(f"locking {spec} with py-rattler and uv")
        with _venv_hint(source):
            path = condalock.write(source, self.platforms, uv_bin())
        reporter.note(f"wrote {path}")
        return path

    def lock_path(self, source: EnvSource) -> Path:
        return condalock.lock_path(source)

    def check_lock(self, source: EnvSource, spec: Path) -> Path:
        return condalock.check(source, spec)

    def read_spec(self, spec: Path) -> condalock.CondaSpec:
        parsed = condalock.read_spec(spec)
        lock.require_modern_python(spec, parsed.conda, self.flag)
        return parsed

    def runtime_dir(self, source: EnvSource, lock_path: Path) -> Path:
        key = prefix.prefix_key(lock_path, condatools.current_platform(), source.setup_script)
        return config.cache_dir() / "conda" / key

    def build(
        self, source: EnvSource, lock_path: Path, runtime_dir: Path, reporter: Reporter
    ) -> Dict[str, Any]:
        with _venv_hint(source):
            activation, tool = prefix.build(source, lock_path, runtime_dir, reporter)
        return {"installer": tool, "activation": activation.to_json()}

    def open(self, source: EnvSource, runtime_dir: Path, info: Dict[str, Any]) -> PrefixRuntime:
        activation = Activation.from_json(info.get("activation") or {})
        return PrefixRuntime(source, runtime_dir, package_dir(), activation)


class _venv_hint:
    """Adds "or use -b venv" to a ChannelError when source's files support venv."""

    def __init__(self, source: EnvSource) -> None:
        self.source = source

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if not isinstance(exc, ChannelError) or "venv" not in listing.backends(self.source):
            return
        command = f"portal-env start {self.source.name} -b venv"
        if not self.source.builtin:
            command = f"portal-env start {self.source.name} -p {self.source.env_dir} -b venv"
        raise ChannelError(
            f"{exc}\n{self.source.name} can also run without conda packages, in a venv of "
            f"PyPI packages: {command}"
        ) from None
