"""Spec -> conda-lock unified lockfile, without any conda executable.

The conda part of a spec (channels and match specs) is solved per platform
with py-rattler; the pip part is resolved by uv for the Python version that
solve locked (`uv pip compile --format pylock.toml`, which gives each wheel's
URL and sha256). Both are written through conda-lock's own models and writer,
so `conda-lock install` and `micromamba create -f` read the result. Python
packages the conda solve already provides are pinned for uv and left out of
the pip list, so a prefix never holds two copies of one package.

The lockfile records the spec's sha256 (`custom_metadata`) and a per-platform
`content_hash` of the lock input, and holds nothing time- or user-dependent:
locking an unchanged spec again writes the same bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import ChannelError, LockError, SpecError
from . import condatools, lock, mirrors
from .catalog import EnvSource
from .mirrors import Router

logger = logging.getLogger(__name__)

SUFFIX = ".conda-lock.yml"  # micromamba reads a conda-lock file only if it ends in -lock.yml
SPEC_HASH_KEY = "portal_env_spec_sha256"
LOCK_FORMAT = "portal-env-conda-lock-1"  # bump when the lock input changes meaning
# Virtual packages assumed per platform (as conda-lock assumes defaults), so a
# lock does not depend on the machine that made it.
_VIRTUAL = {
    "linux": (("__unix", "0"), ("__linux", "5.10"), ("__glibc", "2.17")),
    "osx-64": (("__unix", "0"), ("__osx", "10.15")),
    "osx-arm64": (("__unix", "0"), ("__osx", "11.0")),
    "win": (("__win", "0"),),
}
_UV_PLATFORM = {
    "linux-64": "x86_64-unknown-linux-gnu",
    "linux-aarch64": "aarch64-unknown-linux-gnu",
    "osx-64": "x86_64-apple-darwin",
    "osx-arm64": "aarch64-apple-darwin",
    "win-64": "x86_64-pc-windows-msvc",
}
# pip requirements the lock cannot pin to a package-index file with a sha256
_UNLOCKABLE = re.compile(r"(?i)(^|[\s@])(git|hg|svn|bzr)\+|@\s*file:|^\s*[-./~]")
_PEP440ISH = re.compile(r"^\d+(\.\d+)*$")


@dataclass(frozen=True)
class CondaSpec:
    """What the micromamba backend takes from a spec.

    Attributes:
        channels: Channel names or URLs, in priority order.
        conda: Conda match specs, in spec order (plus `python` if absent).
        pip: pip requirements (plus portal-env's serving deps if absent).
        platforms: The spec's own `platforms:` list, if it has one.
    """

    channels: List[str]
    conda: List[str]
    pip: List[str] = field(default_factory=list)
    platforms: List[str] = field(default_factory=list)


def read_spec(path: Path) -> CondaSpec:
    """Parse spec.yml into the lock input; errors name the file (and line, for YAML)."""
    data = lock.load_spec(path)
    channels = data.get("channels") or []
    deps = data.get("dependencies") or []
    if not isinstance(channels, list) or not isinstance(deps, list):
        raise SpecError(f"{path}: 'channels' and 'dependencies' must be lists")
    if not channels:
        raise SpecError(f"{path}: the micromamba backend needs a 'channels:' list")
    conda, pip = [], []
    for dep in deps:
        if isinstance(dep, dict) and set(dep) == {"pip"} and isinstance(dep["pip"], list):
            pip.extend(str(item) for item in dep["pip"])
        elif isinstance(dep, str) and dep.strip():
            conda.append(dep.strip())
        else:
            raise SpecError(f"{path}: cannot read dependency {dep!r:.80} (a string or pip: list)")
    return _with_serving_deps(
        CondaSpec([str(c) for c in channels], conda, pip, list(data.get("platforms") or []))
    )


def _with_serving_deps(spec: CondaSpec) -> CondaSpec:
    """Add Python and pip (conda) and portal-env's serving deps (pip) where the spec lacks
    them.

    The serving deps go to pip, not conda: PyPI has wheels of them for every
    platform, while a local or mirrored channel may not carry them. pip is in
    the prefix because `micromamba create -f LOCK` installs a lock's pip entries
    with it (portal-env itself installs them with uv).
    """
    conda_names = {lock.normalize_name(n) for n in lock.requirement_names(spec.conda)}
    pip_names = {lock.normalize_name(n) for n in lock.requirement_names(spec.pip)}
    conda = list(spec.conda) + [n for n in ("python", "pip") if n not in conda_names]
    extra = [d for d in lock.SERVING_DEPS if d not in conda_names | pip_names]
    return CondaSpec(spec.channels, conda, list(spec.pip) + extra, spec.platforms)


def unlockable(pip: Sequence[str]) -> List[str]:
    """The pip requirements a conda lock cannot pin (VCS URLs, local paths, options):
    a lockfile entry needs a package-index file with a sha256."""
    return [req for req in pip if _UNLOCKABLE.search(req)]


def require_lockable(spec_path: Path, spec: CondaSpec) -> None:
    """A LockError naming the requirements the conda lock refuses, if any."""
    refused = unlockable(spec.pip)
    if refused:
        raise LockError(
            f"{spec_path}: the conda lock cannot pin {', '.join(map(repr, refused))} (a VCS "
            "URL, local path or pip option has no package-index file with a sha256). Use a "
            "release on a package index, or an env dir with a Dockerfile.env (-b docker)."
        )


# -- where lockfiles are and whether they are current ---------------------------


def lock_name(source: EnvSource) -> str:
    """The file name of source's conda lockfile."""
    return f"{source.lock_stem}{SUFFIX}"


def lock_path(source: EnvSource) -> Path:
    """The conda lockfile source's builds use (see EnvSource.lock_in_use)."""
    return source.lock_in_use(lock_name(source))


def read_lockfile(path: Path) -> dict:
    """A conda-lock file's content (the one reader of lockfiles; errors name the file)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise LockError(
            f"cannot read the lockfile {path}: {exc}. Re-lock: portal-env lock NAME -b mm"
        ) from exc
    if not isinstance(data, dict):
        raise LockError(f"{path} is not a conda-lock file. Re-lock: portal-env lock NAME -b mm")
    return data


def recorded_spec_hash(path: Path) -> Optional[str]:
    """The spec sha256 a lockfile records (None if it records none)."""
    data = read_lockfile(path)
    custom = (data.get("metadata") or {}).get("custom_metadata") or {}
    return custom.get(SPEC_HASH_KEY)


def check(source: EnvSource, spec_path: Path) -> Path:
    """The conda lockfile, if it matches the spec; a clear error if the spec changed since."""
    relock = lock.lock_command(source, "mm")
    return lock.require_current(lock_path(source), spec_path, recorded_spec_hash, relock)


# -- locking ---------------------------------------------------------------------


def target_platforms(spec: CondaSpec, requested: Sequence[str]) -> List[str]:
    """--platform values, else the spec's `platforms:`, else this machine's; validated."""
    import rattler

    chosen = list(requested) or list(spec.platforms) or [condatools.current_platform()]
    known = {str(p) for p in rattler.Subdir.all()}
    for name in chosen:
        if name not in known or name == "noarch":
            raise LockError(
                f"unknown platform {name!r}; use conda platform names such as "
                "linux-64, linux-aarch64, osx-64, osx-arm64, win-64"
            )
    return sorted(set(chosen))


def write(source: EnvSource, platforms: Sequence[str], uv_bin: str) -> Path:
    """Lock source's spec for platforms and write the lockfile (atomically)."""
    spec_path = source.require_spec("micromamba")
    spec = read_spec(spec_path)
    require_lockable(spec_path, spec)
    chosen = target_platforms(spec, platforms)
    spec_hash = lock.file_hash(spec_path)
    router = mirrors.Router.from_environment()
    packages, content_hash = [], {}
    for platform in chosen:
        conda = _solve(spec_path, spec, platform, router)
        packages += [_conda_entry(record, platform) for record in conda]
        packages += _pip_entries(source, spec_path, spec, conda, platform, uv_bin)
        content_hash[platform] = _content_hash(spec_hash, platform)
    path = source.lock_for_writing(lock_name(source))
    _write_lockfile(path, packages, spec, chosen, content_hash, spec_hash, spec_path)
    return path


def _content_hash(spec_hash: str, platform: str) -> str:
    return hashlib.sha256(f"{LOCK_FORMAT}\0{spec_hash}\0{platform}".encode()).hexdigest()


def _virtual_packages(platform: str) -> List[Tuple[str, str, str]]:
    table = _VIRTUAL.get(platform) or _VIRTUAL.get(platform.split("-")[0], ())
    return [(name, version, "0") for name, version in table]


def _solve(spec_path: Path, spec: CondaSpec, platform: str, router: Router) -> List[dict]:
    """The conda records solving spec for platform (py-rattler, no conda executable),
    fetched through this machine's mirrors, each with its canonical URL."""
    from .rattler_calls import RattlerCallError, solve

    routes = [router.route(channel) for channel in spec.channels]
    logger.debug("solving %s for %s from %s", spec.conda, platform, [str(r) for r in routes])
    try:
        records = solve([r.url for r in routes], spec.conda, platform, _virtual_packages(platform))
    except RattlerCallError as exc:
        if exc.kind == "SolverError":
            raise LockError(
                f"cannot lock {spec_path} for {platform}: the conda dependencies cannot be "
                f"satisfied from {', '.join(spec.channels)}:\n{exc}\n"
                f"Fix the dependencies of {spec_path} and try again."
            ) from None
        if exc.kind == "GatewayError":
            raise ChannelError(
                f"cannot lock {spec_path} for {platform}: "
                f"{mirrors.unreachable(routes, str(exc), router)}"
            ) from None
        raise LockError(f"cannot lock {spec_path} for {platform}: {exc}") from None
    for record in records:
        record["url"] = router.canonical_url(record["url"], routes)
    return sorted(records, key=lambda r: r["name"])


def _conda_entry(record: dict, platform: str):
    from conda_lock.lockfile.v2prelim.models import HashModel, LockedDependency

    return LockedDependency(
        name=record["name"],
        version=record["version"],
        manager="conda",
        platform=platform,
        dependencies=dict(_split_dep(d) for d in record["depends"]),
        url=record["url"],
        hash=HashModel(md5=record["md5"], sha256=record["sha256"]),
        categories={"main"},
        build=record["build"],
    )


def _split_dep(dep: str) -> Tuple[str, str]:
    name, _, rest = dep.strip().partition(" ")
    return name, rest.strip() or "*"


def _python_version(conda: list, spec_path: Path, platform: str) -> str:
    for record in conda:
        if record["name"] == "python":
            return record["version"]
    raise LockError(f"{spec_path}: the {platform} solve has no python package")


def _pip_entries(
    source: EnvSource, spec_path: Path, spec: CondaSpec, conda: list, platform: str, uv_bin: str
) -> list:
    """The pip packages of spec for platform's locked Python, each with URL and sha256."""
    if not spec.pip:
        return []
    python = _python_version(conda, spec_path, platform)
    provided = _conda_python_packages(conda)
    with tempfile.TemporaryDirectory(prefix="portal-env-lock-") as tmp:
        constraints = Path(tmp) / "conda-provided.txt"
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(provided.items())))
        options = ["--format", "pylock.toml", "--python-version", python]
        options += ["--python-platform", _uv_platform(platform), "-c", str(constraints)]
        for name in sorted(provided):
            options += ["--no-emit-package", name]
        done = lock.uv_compile(uv_bin, options, list(spec.pip), source)
    if done.returncode != 0:
        raise LockError(
            f"cannot lock the pip: section of {spec_path} for {platform} (Python {python}; "
            f"uv pip compile failed):\n{done.stderr.strip()}\nFix it and try again."
        )
    return [_pip_entry(p, platform, spec_path) for p in _load_toml(done.stdout)["packages"]]


def _conda_python_packages(conda: list) -> Dict[str, str]:
    """Conda packages that are Python packages (they depend on python): name -> version."""
    return {
        lock.normalize_name(r["name"]): r["version"]
        for r in conda
        if r["name"] != "python"
        and "python" in {_split_dep(d)[0] for d in r["depends"]}
        and _PEP440ISH.match(r["version"])
    }


def _uv_platform(platform: str) -> str:
    try:
        return _UV_PLATFORM[platform]
    except KeyError:
        raise LockError(
            f"pip packages cannot be locked for {platform}; pip: sections are supported for "
            f"{', '.join(sorted(_UV_PLATFORM))}"
        ) from None


def _load_toml(text: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    return tomllib.loads(text)


def _pip_entry(package: dict, platform: str, spec_path: Path):
    from conda_lock.lockfile.v2prelim.models import HashModel, LockedDependency

    artifacts = list(package.get("wheels") or []) or [package.get("sdist") or {}]
    artifact = artifacts[0]
    sha256 = (artifact.get("hashes") or {}).get("sha256")
    if not artifact.get("url") or not sha256:
        raise LockError(
            f"{spec_path}: uv gave no downloadable file with a sha256 for pip package "
            f"{package.get('name')!r} on {platform} (a local path or VCS requirement?). "
            "Use a requirement that resolves to a package index."
        )
    return LockedDependency(
        name=package["name"],
        version=str(package["version"]),
        manager="pip",
        platform=platform,
        dependencies={},
        url=artifact["url"],
        hash=HashModel(sha256=sha256),
        categories={"main"},
    )


def _write_lockfile(
    path: Path,
    packages: list,
    spec: CondaSpec,
    platforms: List[str],
    content_hash: Dict[str, str],
    spec_hash: str,
    spec_path: Path,
) -> None:
    """Write through conda-lock's writer into a temporary dir, then rename into place."""
    from conda_lock.lockfile import write_conda_lock_file
    from conda_lock.lockfile.v2prelim.models import Lockfile, LockMeta

    metadata = LockMeta(
        content_hash=content_hash,
        channels=spec.channels,
        platforms=platforms,
        sources=[os.path.relpath(spec_path, path.parent)],
        custom_metadata={SPEC_HASH_KEY: spec_hash},
    )
    content = Lockfile(package=packages, metadata=metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        # the same file name: conda-lock writes it into the file's help text
        write_conda_lock_file(content, staging / path.name, metadata_choices=None)
        (staging / path.name).replace(path)
    except OSError as exc:
        raise LockError(f"cannot write the lockfile {path}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
