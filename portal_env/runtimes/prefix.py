"""A conda prefix from a conda-lock file: the builder the micromamba backend and `export`
share.

The conda packages are installed by the micromamba executable when there is
one (`$MAMBA_EXE`, else `micromamba` on PATH), otherwise by py-rattler;
`PORTAL_ENV_CONDA_INSTALLER=rattler|micromamba` forces either. Both check each
package's sha256 and keep packages in `pkgs_dir()`. Then the locked pip
packages are installed by uv from their pinned URLs with hash checking and no
dependency resolution, and env_setup.py runs with the prefix activated.

Activation is what `micromamba run` would do (PATH, CONDA_PREFIX and what the
prefix's `etc/conda/activate.d/*.sh` scripts export), captured once at build
time, so a server can run as a direct child of the supervisor and get signals.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .. import config
from ..errors import BuildError, ChannelError
from . import mirrors
from .base import Reporter
from .cache import package_dir
from .catalog import EnvSource
from .commands import run, uv_bin
from .condalock import read_lockfile
from .condatools import (
    MICROMAMBA,
    RATTLER,
    current_platform,
    installer,
    micromamba_exe,
    missing_module,
    no_tool,
)
from .mirrors import Router
from .venv import VenvRuntime

logger = logging.getLogger(__name__)

PKGS_DIR_VAR = "PORTAL_ENV_PKGS_DIR"
PATH_SLOT = "${PATH}"  # in a captured PATH: where the PATH outside the prefix goes
_KEY_FORMAT = "portal-env-prefix-2"  # bump when a prefix's layout or activation changes
_ACTIVATE = 'for f in "$CONDA_PREFIX"/etc/conda/activate.d/*.sh; do . "$f"; done; env -0'
_NOISE = ("_", "SHLVL", "PWD", "OLDPWD")
# How micromamba and py-rattler say that a download failed to connect at all.
_UNREACHABLE = re.compile(
    r"(?i)error sending request|tcp connect error|dns error|could not resolve host|"
    r"couldn't connect|connection refused|failed to connect|network is unreachable|"
    r"no such file or directory"  # a file:// channel or mirror that is not there
)


def pkgs_dir() -> Path:
    """Where downloaded conda packages are kept ($PORTAL_ENV_PKGS_DIR, else the cache)."""
    explicit = os.environ.get(PKGS_DIR_VAR)
    path = Path(explicit) if explicit else config.cache_dir() / "pkgs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def locked_packages(lock_path: Path, platform: str) -> List[dict]:
    """The lockfile's package entries for platform (conda and pip), as plain dicts."""
    return _platform_packages(read_lockfile(lock_path), lock_path, platform)


def _platform_packages(data: dict, lock_path: Path, platform: str) -> List[dict]:
    packages = [p for p in data.get("package") or [] if p.get("platform") == platform]
    if not packages:
        raise BuildError(
            f"{lock_path} has no packages for this platform ({platform}); "
            f"locked: {', '.join((data.get('metadata') or {}).get('platforms') or []) or 'none'}. "
            f"Re-lock with --platform {platform}."
        )
    return packages


def prefix_key(lock_path: Path, platform: str, setup_script: Optional[Path]) -> str:
    """The cache key of a prefix: this platform's locked packages and env_setup.py.

    The installer is not part of it: both install the same files from one lock.
    """
    digest = hashlib.sha256(f"{_KEY_FORMAT}\0{platform}\0".encode())
    for entry in sorted(locked_packages(lock_path, platform), key=_entry_id):
        digest.update(_entry_id(entry).encode() + b"\0")
    if setup_script is not None:
        digest.update(setup_script.read_bytes())
    return f"{platform}-{digest.hexdigest()[:20]}"


def _entry_id(entry: dict) -> str:
    hashes = entry.get("hash") or {}
    return f"{entry.get('manager')} {entry.get('url')} {hashes.get('sha256') or hashes.get('md5')}"


@dataclass(frozen=True)
class Activation:
    """What activating a prefix changes in the environment.

    Attributes:
        variables: Variables the activate.d scripts set (PATH aside).
        path: PATH after activation, with PATH_SLOT where the outside PATH goes
            (the prefix's bin/ and what scripts prepend before it).
    """

    variables: Dict[str, str] = field(default_factory=dict)
    path: str = ""

    def environment(self, prefix: str, outside: Mapping[str, str]) -> Dict[str, str]:
        """outside (an environment) with the prefix at prefix activated."""
        env = dict(outside)
        template = self.path or os.pathsep.join([f"{prefix}/bin", PATH_SLOT])
        env["PATH"] = template.replace(PATH_SLOT, outside.get("PATH") or os.defpath)
        env.update(CONDA_PREFIX=prefix, CONDA_DEFAULT_ENV=prefix, CONDA_SHLVL="1")
        env.update(self.variables)
        return env

    def moved(self, old: str, new: str) -> Activation:
        """This activation with the prefix path old written as new (for a staged prefix)."""
        variables = {key: value.replace(old, new) for key, value in self.variables.items()}
        return Activation(variables, self.path.replace(old, new))

    def to_json(self) -> Dict[str, Any]:
        return {"variables": self.variables, "path": self.path}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Activation:
        return cls(dict(data.get("variables") or {}), str(data.get("path") or ""))


def capture_activation(prefix: Path) -> Activation:
    """Run the prefix's activate.d scripts once, now, in bash; what they change."""
    scripts = sorted((prefix / "etc" / "conda" / "activate.d").glob("*.sh"))
    if not scripts:
        return Activation()
    bash = shutil.which("bash")
    if bash is None:
        raise BuildError(f"{prefix} has activation scripts, and running them needs bash")
    outside = {k: v for k, v in os.environ.items() if k != "BASH_ENV"}
    base = Activation().environment(str(prefix), outside)
    logger.debug("running %s", shlex.join([bash, "-c", _ACTIVATE]))
    done = subprocess.run([bash, "-c", _ACTIVATE], env=base, capture_output=True)
    if done.returncode != 0:
        raise BuildError(
            f"the activation scripts of {prefix} failed (exit code {done.returncode}):\n"
            f"{done.stderr.decode(errors='replace')[-4000:]}"
        )
    after = dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
    variables = {k: v for k, v in after.items() if base.get(k) != v and not k.startswith("BASH")}
    for noise in _NOISE + ("PATH",):
        variables.pop(noise, None)
    return Activation(variables, _path_template(after.get("PATH", ""), base["PATH"], outside))


def _path_template(after: str, activated: str, outside: Mapping[str, str]) -> str:
    """PATH after the scripts, as a template: the outside PATH replaced by PATH_SLOT."""
    own = outside.get("PATH") or os.defpath
    if after == activated:
        return ""
    if after.endswith(own):
        return after[: len(after) - len(own)] + PATH_SLOT
    # the scripts reordered or dropped entries: keep what they added, in front
    known = set(own.split(os.pathsep))
    added = [entry for entry in after.split(os.pathsep) if entry and entry not in known]
    return os.pathsep.join(added + [PATH_SLOT])


class PrefixRuntime(VenvRuntime):
    """A finished conda prefix that launches env_main.py with its own, activated Python."""

    backend = "micromamba"

    def __init__(
        self, source: EnvSource, prefix: Path, package_dir: Path, activation: Activation
    ) -> None:
        super().__init__(source, prefix, package_dir)
        self.prefix = prefix
        self.activation = activation

    def environment(self, extra: Mapping[str, str]) -> dict:
        """The venv backend's environment, activated for the prefix, plus extra."""
        env = self.activation.environment(str(self.prefix), super().environment({}))
        env.update(extra)
        return env


def build(
    source: EnvSource,
    lock_path: Path,
    prefix: Path,
    reporter: Reporter,
    *,
    alternative_prefix: Optional[str] = None,
) -> Tuple[Activation, str]:
    """Install this platform's locked conda and pip packages into prefix, capture its
    activation and run env_setup.py in it; returns the activation and the installer.

    With alternative_prefix, the files are made for a prefix that will live at that
    path (an image's), which only py-rattler can do.
    """
    platform = current_platform()
    if alternative_prefix is None:
        tool = installer()  # it checks that the one it picks is there
    else:  # export: only py-rattler installs for another path
        tool = RATTLER
        missing = missing_module("rattler", "py-rattler")
        if missing is not None:
            why = f"install a prefix for {alternative_prefix} (only py-rattler can)"
            raise no_tool(why, [missing])
    where = alternative_prefix or prefix
    reporter.status(f"installing the conda packages of {lock_path.name} for {where} ({tool})")
    router = Router.from_environment()  # this machine's mirrors, read once per build
    data = read_lockfile(lock_path)  # once: a large lock takes a while to parse
    packages = _platform_packages(data, lock_path, platform)
    conda = [p for p in packages if p.get("manager") == "conda"]
    with tempfile.TemporaryDirectory(prefix="portal-env-conda-") as tmp:
        fetched, to_fetch = _fetch_lock(data, conda, lock_path, Path(tmp), router)
        try:
            _verify_local_archives(to_fetch, lock_path)
            if tool == MICROMAMBA:
                _install_conda_micromamba(str(micromamba_exe()), fetched, prefix, lock_path)
            else:
                _install_conda_rattler(fetched, lock_path, platform, prefix, alternative_prefix)
        except BuildError as exc:
            raise _unreachable(exc, conda, lock_path, router) from None
    _install_pip([p for p in packages if p.get("manager") == "pip"], lock_path, prefix, reporter)
    activation = capture_activation(prefix)
    if source.setup_script is not None:
        reporter.status(f"running {source.setup_script}")
        runtime = PrefixRuntime(source, prefix, package_dir(), activation)
        runtime.run_setup({"PYTHONDONTWRITEBYTECODE": "1"} if alternative_prefix else {})
    return activation, tool


def _install_conda_micromamba(exe: str, fetched: Path, prefix: Path, lock_path: Path) -> None:
    """`micromamba create -f LOCK` for the conda packages of fetched (lock_path's copy to
    install), with our package cache."""
    env = dict(os.environ, CONDA_PKGS_DIRS=str(pkgs_dir()))
    command = [exe, "create", "--yes", "--prefix", str(prefix), "--file", str(fetched)]
    run(command, f"create the conda prefix {prefix} from {lock_path} with micromamba", env=env)


def _fetch_lock(
    data: dict, conda: List[dict], lock_path: Path, directory: Path, router: Router
) -> Tuple[Path, List[dict]]:
    """A copy of lock_path (read as data), in directory, that the installers read, and its
    entries: the conda packages of this platform, each at the URL this machine fetches it
    from (its mirror, see `mirrors`).

    The same file name: micromamba reads a file as a conda-lock file by its `-lock.yml`
    ending. The pip entries are left out: micromamba would install them with the prefix's
    pip, which it may lack; uv installs them next, as after py-rattler, so both installers
    leave the same files.
    """
    import yaml

    entries = [dict(p, url=router.fetch_url(str(p["url"]))[0]) for p in conda]
    path = directory / lock_path.name
    path.write_text(yaml.safe_dump(dict(data, package=entries), sort_keys=False))
    return path, entries


def _unreachable(exc: BuildError, conda: List[dict], lock_path: Path, router: Router) -> BuildError:
    """exc, or a ChannelError naming the channels, mirror settings and how to add one when
    exc says one of the conda packages could not be downloaded."""
    if not _UNREACHABLE.search(str(exc)):
        return exc
    routes = router.package_routes([str(p["url"]) for p in conda])
    return ChannelError(
        f"cannot install the conda packages of {lock_path}: "
        f"{mirrors.unreachable(routes, str(exc), router)}"
    )


def _verify_local_archives(entries: List[dict], lock_path: Path) -> None:
    """Check the sha256 of the file:// conda packages among entries, as they are fetched
    (py-rattler 0.28 checks only downloads)."""
    from urllib.parse import unquote, urlparse

    for entry in entries:
        url = urlparse(str(entry.get("url")))
        expected = (entry.get("hash") or {}).get("sha256")
        if url.scheme != "file" or not expected:
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
    fetched: Path,
    lock_path: Path,
    platform: str,
    prefix: Path,
    alternative_prefix: Optional[str] = None,
) -> None:
    """Install the conda packages of fetched (lock_path's copy to install) with py-rattler;
    with alternative_prefix, for a prefix that will live there."""
    from .rattler_calls import RattlerCallError, install

    logger.debug("installing the conda packages of %s into %s with py-rattler", fetched, prefix)
    try:
        install(str(fetched), platform, str(prefix), str(pkgs_dir()), alternative_prefix)
    except RattlerCallError as exc:
        if exc.kind in ("ImportError", "ModuleNotFoundError"):  # installed, but broken here
            tried = [f"py-rattler: cannot be imported by {sys.executable}: {exc}"]
            if alternative_prefix is None:
                tried.insert(0, "the micromamba executable: none was found or chosen")
            raise no_tool("install conda packages", tried) from None
        raise BuildError(
            f"could not install the conda packages of {lock_path} into {prefix}: {exc}"
        ) from None


def _install_pip(entries: List[dict], lock_path: Path, prefix: Path, reporter: Reporter) -> None:
    """Install lock_path's pip entries from their URLs: hashes checked, no resolution."""
    if not entries:
        return
    lines = [f"{p['name']} @ {p['url']} --hash=sha256:{p['hash']['sha256']}\n" for p in entries]
    reporter.status(f"installing {len(entries)} locked pip packages with uv")
    with tempfile.TemporaryDirectory(prefix="portal-env-pip-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text("".join(sorted(lines)))
        command = [uv_bin(), "pip", "install", "--quiet", "--no-deps", "--require-hashes"]
        command += ["--python", str(prefix / "bin" / "python"), "-r", str(requirements)]
        run(command, f"install the pip packages of {lock_path}")
