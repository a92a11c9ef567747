"""The micromamba (`mm`) backend: a conda prefix built from an env's conda-lock file.

A prefix lives in the cache at `conda/<key>`, where key hashes this platform's
locked packages (URLs and hashes) and env_setup.py: the same lock gives the
same prefix, built once. Conda writes the prefix path into installed files, so
a prefix is built at its final path under a file lock, and its completion
marker is written last; one without the marker is removed and rebuilt, and a
build that fails or is interrupted removes its directory.

The conda packages are installed by the micromamba executable when there is
one (`$MAMBA_EXE`, else `micromamba` on PATH; the user's micromamba config
applies), otherwise by py-rattler, which checks each package's sha256.
Either way the locked pip packages are then installed by uv from their pinned
URLs with hash checking and no dependency resolution.

The server runs the prefix's own interpreter with the prefix activated the
way `micromamba run` would (PATH, CONDA_PREFIX and what the prefix's
`etc/conda/activate.d/*.sh` scripts export, captured once at build time), but
as a direct child of the supervisor, so signals reach it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from .. import config
from ..errors import BackendUnavailableError, BuildError
from . import condalock, offline
from .base import Reporter
from .catalog import EnvSource
from .venv import MARKER, VenvRuntime, _build_lock, _run, is_complete, package_dir, uv_bin

logger = logging.getLogger(__name__)

PKGS_DIR_VAR = "PORTAL_ENV_PKGS_DIR"
INSTALLER_VAR = "PORTAL_ENV_CONDA_INSTALLER"  # "rattler" forces py-rattler even with micromamba
_KEY_FORMAT = "portal-env-prefix-1"
_ACTIVATE = 'for f in "$CONDA_PREFIX"/etc/conda/activate.d/*.sh; do . "$f"; done; env -0'


def pkgs_dir() -> Path:
    """Where downloaded conda packages are kept ($PORTAL_ENV_PKGS_DIR, else the cache)."""
    explicit = os.environ.get(PKGS_DIR_VAR)
    path = Path(explicit) if explicit else config.cache_dir() / "pkgs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def current_platform() -> str:
    """This machine's conda platform name, e.g. linux-64."""
    import rattler

    return str(rattler.Subdir.current())


def micromamba_exe() -> Optional[str]:
    """The micromamba executable to use, or None (then py-rattler installs)."""
    if os.environ.get(INSTALLER_VAR, "").lower() == "rattler":
        return None
    return os.environ.get("MAMBA_EXE") or shutil.which("micromamba")


def locked_packages(lock_path: Path, platform: str) -> List[dict]:
    """The lockfile's package entries for platform (conda and pip), as plain dicts."""
    import yaml

    try:
        data = yaml.safe_load(lock_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise BuildError(f"cannot read the lockfile {lock_path}: {exc}") from exc
    packages = [p for p in data.get("package") or [] if p.get("platform") == platform]
    if not packages:
        raise BuildError(
            f"{lock_path} has no packages for this platform ({platform}); "
            f"locked: {', '.join((data.get('metadata') or {}).get('platforms') or []) or 'none'}. "
            f"Re-lock with --platform {platform}."
        )
    return packages


def prefix_key(lock_path: Path, platform: str, setup_script: Optional[Path]) -> str:
    """The cache key of a prefix: this platform's locked packages and env_setup.py."""
    digest = hashlib.sha256(f"{_KEY_FORMAT}\0{platform}\0".encode())
    for entry in sorted(locked_packages(lock_path, platform), key=_entry_id):
        digest.update(_entry_id(entry).encode() + b"\0")
    if setup_script is not None:
        digest.update(setup_script.read_bytes())
    return f"{platform}-{digest.hexdigest()[:20]}"


def _entry_id(entry: dict) -> str:
    hashes = entry.get("hash") or {}
    return f"{entry.get('manager')} {entry.get('url')} {hashes.get('sha256') or hashes.get('md5')}"


class MicromambaRuntime(VenvRuntime):
    """A finished conda prefix that launches env_main.py with its own, activated Python."""

    backend = "micromamba"
    local = True

    def __init__(
        self, source: EnvSource, prefix: Path, package_dir: Path, activation: Mapping[str, str]
    ) -> None:
        super().__init__(source, prefix, package_dir)
        self.prefix = prefix
        self.activation = dict(activation)

    def environment(self, extra: Mapping[str, str]) -> dict:
        """The venv backend's environment plus the prefix's activation, plus extra."""
        env = super().environment({})
        env["PATH"] = os.pathsep.join([str(self.prefix / "bin"), env.get("PATH", os.defpath)])
        env.update(CONDA_PREFIX=str(self.prefix), CONDA_DEFAULT_ENV=str(self.prefix))
        env.update(CONDA_SHLVL="1")
        env.update(self.activation)
        env.update(extra)
        return env


class MicromambaBackend:
    """Builds conda prefixes from conda-lock files (micromamba executable or py-rattler)."""

    name = "micromamba"

    def __init__(self, platforms: Optional[List[str]] = None) -> None:
        self.platforms = list(platforms or [])
        missing = [m for m in ("rattler", "conda_lock") if importlib.util.find_spec(m) is None]
        if missing:  # found without importing them (conda_lock alone takes 0.7 s to import)
            raise BackendUnavailableError(
                f"the micromamba backend needs py-rattler and conda-lock (missing: "
                f"{', '.join(missing)}); install them with: "
                "pip install 'py-rattler>=0.28,<0.29' 'conda-lock>=4,<5' (Python >= 3.10)"
            )

    def lock(self, source: EnvSource, reporter: Reporter) -> Path:
        """(Re)lock source's spec.yml into its conda-lock file."""
        reporter.status(f"locking {source.require_spec(self.name)} with py-rattler and uv")
        path = condalock.write(source, self.platforms, uv_bin())
        reporter.note(f"wrote {path}")
        return path

    def ensure(self, source: EnvSource, *, force: bool, reporter: Reporter) -> MicromambaRuntime:
        """The prefix for source: locked first if it has no lockfile, built only if needed."""
        lock_path = self.lockfile(source, reporter)
        prefix = self._prefix(source, lock_path)
        with _build_lock(prefix, reporter):
            if force and prefix.exists():
                reporter.status(f"removing {prefix} (forced rebuild)")
                shutil.rmtree(prefix)
            if is_complete(prefix):
                logger.debug("conda prefix cache hit: %s", prefix)
            else:
                offline.refuse(source, "mm", f"the conda prefix {prefix}")
                self._build(source, lock_path, prefix, reporter)
            activation = json.loads((prefix / MARKER).read_text()).get("activation", {})
        return MicromambaRuntime(source, prefix, package_dir(), activation)

    def remove(self, source: EnvSource) -> List[Path]:
        """Delete the cached prefix of source's current lockfile."""
        lock_path = condalock.lock_path(source)
        if not lock_path.is_file():
            return []
        prefix = self._prefix(source, lock_path)
        with _build_lock(prefix, None):
            if not prefix.exists():
                return []
            shutil.rmtree(prefix)
        return [prefix]

    def _prefix(self, source: EnvSource, lock_path: Path) -> Path:
        key = prefix_key(lock_path, current_platform(), source.setup_script)
        return config.cache_dir() / "conda" / key

    def lockfile(self, source: EnvSource, reporter: Reporter) -> Path:
        """source's current lockfile: made (and said so) if missing, refused if stale."""
        spec = source.require_spec(self.name)
        if condalock.status(source, spec) == "missing":
            offline.refuse(source, "mm", "a conda lockfile", verb="lock")
            reporter.note(
                f"{source.name}: no conda lockfile yet; locking {spec} "
                f"into {condalock.lock_path(source)} (keep it with the spec)"
            )
            return self.lock(source, reporter)
        return condalock.check(source, spec)

    def _build(self, source: EnvSource, lock_path: Path, prefix: Path, reporter: Reporter) -> None:
        if prefix.exists():
            logger.warning("removing the unfinished prefix %s", prefix)
            shutil.rmtree(prefix)
        started = time.monotonic()
        platform = current_platform()
        try:
            exe = micromamba_exe()
            reporter.status(f"installing the conda packages of {lock_path.name} into {prefix}")
            if exe is not None:
                _install_conda_micromamba(exe, lock_path, prefix)
            else:
                _install_conda_rattler(lock_path, platform, prefix)
            _install_pip(lock_path, platform, prefix, reporter)
            activation = _activation(prefix)
            if source.setup_script is not None:
                reporter.status(f"running {source.setup_script}")
                runtime = MicromambaRuntime(source, prefix, package_dir(), activation)
                command = [str(runtime.python), str(source.setup_script)]
                what = f"run {source.setup_script}"
                _run(command, what, cwd=source.work_dir, env=runtime.environment({}))
            _write_marker(prefix, lock_path, activation, "micromamba" if exe else "py-rattler")
        except BaseException:
            shutil.rmtree(prefix, ignore_errors=True)
            raise
        seconds = time.monotonic() - started
        reporter.note(f"built the conda prefix for {source.name} in {seconds:.1f}s")


def _install_conda_micromamba(exe: str, lock_path: Path, prefix: Path) -> None:
    env = dict(os.environ)
    if os.environ.get(PKGS_DIR_VAR):
        env["CONDA_PKGS_DIRS"] = str(pkgs_dir())
    command = [exe, "create", "-p", str(prefix), "-f", str(lock_path), "-y"]
    _run(command, f"create the conda prefix from {lock_path}", env=env)


def _verify_local_archives(lock_path: Path, platform: str) -> None:
    """Check the sha256 of file:// packages (py-rattler 0.28 checks only downloads)."""
    from urllib.parse import unquote, urlparse

    for entry in locked_packages(lock_path, platform):
        url = urlparse(str(entry.get("url")))
        expected = (entry.get("hash") or {}).get("sha256")
        if entry.get("manager") != "conda" or url.scheme != "file" or not expected:
            continue
        path = Path(unquote(url.path))
        try:
            actual = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise BuildError(f"cannot read {entry['name']} from {path}: {exc}") from None
        if actual != expected:
            raise BuildError(
                f"hash mismatch for conda package {entry['name']} at {path}: {lock_path} "
                f"expects sha256 {expected}, the file has {actual}. The channel changed "
                "since the lock was made: restore it, or re-lock."
            )


def _install_conda_rattler(
    lock_path: Path, platform: str, prefix: Path, alternative_prefix: Optional[str] = None
) -> None:
    """Install with py-rattler; with alternative_prefix, for a prefix that will live there."""
    from .rattler_calls import RattlerCallError, install

    _verify_local_archives(lock_path, platform)
    logger.debug("installing the conda packages of %s into %s with py-rattler", lock_path, prefix)
    try:
        install(str(lock_path), platform, str(prefix), str(pkgs_dir()), alternative_prefix)
    except RattlerCallError as exc:
        raise BuildError(
            f"could not install the conda packages of {lock_path} into {prefix}: {exc}"
        ) from None


def _install_pip(lock_path: Path, platform: str, prefix: Path, reporter: Reporter) -> None:
    """Install the locked pip packages from their URLs: hashes checked, no resolution."""
    entries = [p for p in locked_packages(lock_path, platform) if p.get("manager") == "pip"]
    if not entries:
        return
    lines = [f"{p['name']} @ {p['url']} --hash=sha256:{p['hash']['sha256']}\n" for p in entries]
    reporter.status(f"installing {len(entries)} locked pip packages with uv")
    with tempfile.TemporaryDirectory(prefix="portal-env-pip-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text("".join(sorted(lines)))
        command = [uv_bin(), "pip", "install", "--quiet", "--no-deps", "--require-hashes"]
        command += ["--python", str(prefix / "bin" / "python"), "-r", str(requirements)]
        _run(command, f"install the pip packages of {lock_path}")


def _activation(prefix: Path) -> Dict[str, str]:
    """Variables the prefix's activate.d scripts set (run once, now, in bash)."""
    scripts = sorted((prefix / "etc" / "conda" / "activate.d").glob("*.sh"))
    if not scripts:
        return {}
    bash = shutil.which("bash")
    if bash is None:
        raise BuildError(f"{prefix} has activation scripts, and running them needs bash")
    base = {k: v for k, v in os.environ.items() if k != "BASH_ENV"}
    base.update(CONDA_PREFIX=str(prefix), CONDA_DEFAULT_ENV=str(prefix), CONDA_SHLVL="1")
    base["PATH"] = os.pathsep.join([str(prefix / "bin"), os.environ.get("PATH", os.defpath)])
    logger.debug("running %s", shlex.join([bash, "-c", _ACTIVATE]))
    done = subprocess.run([bash, "-c", _ACTIVATE], env=base, capture_output=True)
    if done.returncode != 0:
        raise BuildError(
            f"the activation scripts of {prefix} failed (exit code {done.returncode}):\n"
            f"{done.stderr.decode(errors='replace')[-4000:]}"
        )
    after = dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
    delta = {k: v for k, v in after.items() if base.get(k) != v and not k.startswith("BASH")}
    for noise in ("_", "SHLVL", "PWD", "OLDPWD", "PATH"):
        delta.pop(noise, None)
    return delta


def _write_marker(prefix: Path, lock_path: Path, activation: Dict[str, str], tool: str) -> None:
    info = {"lockfile": str(lock_path), "installer": tool, "activation": activation}
    info["built_at"] = time.time()
    tmp = prefix / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(info, indent=1, sort_keys=True))
    tmp.replace(prefix / MARKER)
