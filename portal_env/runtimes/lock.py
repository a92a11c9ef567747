"""Spec -> lockfile, and the hashes that tie a lockfile to its spec.

A spec is a conda environment file (`channels`, `dependencies`, a `pip:`
list). The venv backend locks its Python version and pip section with
`uv pip compile --generate-hashes` into a requirements file whose header
records the spec's content hash, so a changed spec is noticed rather than
silently served from an old lock.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..errors import LockError, SpecError
from .catalog import EnvSource
from .commands import tool_environment
from .legacy_shim import needs_shim

logger = logging.getLogger(__name__)

VENV_LOCK_SUFFIX = ".venv.lock.txt"
SERVING_DEPS = ("numpy", "gymnasium", "msgpack")  # what portal_env itself needs to serve
_SPEC_HASH = "# portal-env-spec-sha256: "
_PYTHON = "# portal-env-python: "
_CONDA_ONLY = {"pip", "python"}
_PYTHON_DEP = re.compile(r"^python\s*(?:==?|\s)?\s*(\d+\.\d+)(?:\.[\d*]+)*\s*$")
# conda names may start with "_" (e.g. _libgcc_mutex); pip names never do, so one pattern serves
_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9_][A-Za-z0-9._-]*)")


@dataclass(frozen=True)
class VenvSpec:
    """What the venv backend takes from a spec.

    Attributes:
        python: Major.minor Python version, e.g. "3.11".
        pip: The pip requirements, in spec order.
        ignored: Conda dependencies a venv cannot install (reported, not used).
    """

    python: str
    pip: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)


def file_hash(path: Path) -> str:
    """sha256 hex digest of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_spec(path: Path) -> VenvSpec:
    """Parse a spec.yml into what a venv needs; errors name the file and the bad entry."""
    data = load_spec(path)
    deps = data.get("dependencies") or []
    if not isinstance(deps, list):
        raise SpecError(f"{path}: 'dependencies' must be a list, got {deps!r:.80}")
    python, pip, ignored = None, [], []
    for dep in deps:
        if isinstance(dep, dict) and set(dep) == {"pip"} and isinstance(dep["pip"], list):
            pip.extend(str(item) for item in dep["pip"])
        elif isinstance(dep, str) and dep.strip().startswith("python"):
            python = _python_version(path, dep)
        elif isinstance(dep, str):
            name = requirement_name(dep)
            if name and name not in _CONDA_ONLY:
                ignored.append(dep)
        else:
            raise SpecError(f"{path}: cannot read dependency {dep!r:.80} (a string or pip: list)")
    version = python or f"{sys.version_info[0]}.{sys.version_info[1]}"
    return VenvSpec(python=version, pip=pip, ignored=ignored)


def load_spec(path: Path) -> Dict:
    """A spec's mapping; errors name the file (and line and column, for bad YAML)."""
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read the spec {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(
            f"{path}{where}: not valid YAML ({exc.problem or exc.context}). Fix the spec and retry."
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path} is not a conda environment file (expected a mapping)")
    return data


def requirement_name(requirement: str) -> Optional[str]:
    """The package name a conda match spec or pip requirement starts with, if any."""
    match = _REQ_NAME.match(requirement)
    return match.group(1) if match else None


def requirement_names(requirements: Sequence[str]) -> List[str]:
    """The package names of requirements (those that start with one)."""
    return [name for name in map(requirement_name, requirements) if name]


def require_modern_python(path: Path, deps: Sequence[str], flag: str) -> None:
    """Refuse a spec that pins a Python older than portal-env's (3.8) for a backend that runs
    portal-env's own server in the runtime, naming the pin and the docker route."""
    for dep in deps:
        match = _PYTHON_DEP.match(dep.strip()) if isinstance(dep, str) else None
        if match is None:
            continue
        major, minor = (int(part) for part in match.group(1).split("."))
        if not needs_shim((major, minor)):
            continue
        raise SpecError(
            f"{path} asks for Python {major}.{minor} ({dep.strip()!r}), but the -b {flag} "
            "backend runs portal-env's own server inside the runtime, and that needs Python "
            "3.8 or newer: a runtime with Python 3.8+ is what is missing. For an env that "
            "needs an old Python (2.7, 3.5-3.7), use the docker backend: `-b docker` with a "
            "Dockerfile.env FROM an old base image (--base-image), where the small server of "
            "old runtimes serves it; see examples/ancient_cartpole."
        )


def _python_version(path: Path, dep: str) -> str:
    if dep.strip() == "python":
        return f"{sys.version_info[0]}.{sys.version_info[1]}"
    match = _PYTHON_DEP.match(dep.strip())
    if not match:
        raise SpecError(
            f"{path}: the venv backend needs an exact Python version like 'python=3.11', "
            f"got {dep!r}"
        )
    return match.group(1)


def lock_input(spec: VenvSpec) -> List[str]:
    """The requirements to lock: the spec's pip list plus portal-env's serving deps."""
    listed = {normalize_name(name) for name in requirement_names(spec.pip)}
    extra = [dep for dep in SERVING_DEPS if dep not in listed]
    return list(spec.pip) + extra


def normalize_name(name: str) -> str:
    """A package name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def venv_lock_name(source: EnvSource) -> str:
    """The file name of source's venv lockfile."""
    return f"{source.lock_stem}{VENV_LOCK_SUFFIX}"


def venv_lock_path(source: EnvSource) -> Path:
    """The venv lockfile source's builds use (see EnvSource.lock_in_use)."""
    return source.lock_in_use(venv_lock_name(source))


def lock_command(source: EnvSource, backend: str = "venv") -> str:
    """The CLI command that (re)locks source for backend."""
    parts = ["portal-env", "lock", source.name]
    if not source.builtin:
        parts += ["-p", str(source.env_dir)]
    return shlex.join(parts + ["-b", backend])


def read_header(lock_path: Path) -> Dict[str, str]:
    """The spec hash and Python version a venv lockfile records ({} if none)."""
    header = {}
    with open(lock_path) as f:
        for line in f:
            if not line.startswith("#"):
                break
            if line.startswith(_SPEC_HASH):
                header["spec_sha256"] = line[len(_SPEC_HASH) :].strip()
            elif line.startswith(_PYTHON):
                header["python"] = line[len(_PYTHON) :].strip()
    return header


def freshness(lock_path: Path, spec_path: Path, recorded: Callable[[Path], Optional[str]]) -> str:
    """'missing', 'current', or 'stale' (the spec changed since lock_path was made).

    recorded reads the spec hash a lockfile of that format records.
    """
    if not lock_path.is_file():
        return "missing"
    return "current" if recorded(lock_path) == file_hash(spec_path) else "stale"


def require_current(
    lock_path: Path, spec_path: Path, recorded: Callable[[Path], Optional[str]], relock: str
) -> Path:
    """lock_path, if it matches the spec; a clear error naming the relock command if not."""
    if freshness(lock_path, spec_path, recorded) == "stale":
        raise LockError(
            f"{lock_path} was made from an older version of {spec_path} (the spec's hash "
            f"changed). Re-lock it: {relock}"
        )
    return lock_path


def recorded_venv_hash(lock_path: Path) -> Optional[str]:
    return read_header(lock_path).get("spec_sha256")


def venv_lock_status(source: EnvSource, spec_path: Path) -> str:
    """'missing', 'current', or 'stale' for source's venv lockfile."""
    return freshness(venv_lock_path(source), spec_path, recorded_venv_hash)


def check_venv_lock(source: EnvSource, spec_path: Path) -> Path:
    """The venv lockfile, if it matches the spec; a clear error if the spec changed since."""
    return require_current(
        venv_lock_path(source), spec_path, recorded_venv_hash, lock_command(source)
    )


def write_venv_lock(source: EnvSource, uv_bin: str) -> Path:
    """Lock source's spec with uv (hashes included) and write the lockfile atomically."""
    spec_path = source.require_spec("venv")
    spec = read_spec(spec_path)
    for dep in spec.ignored:
        logger.warning(
            "%s: the venv backend installs only pip packages; ignoring %r", spec_path, dep
        )
    recipe = lock_command(source) if source.builtin else "portal-env lock NAME -p ENV_DIR -b venv"
    options = ["--generate-hashes", "--python-version", spec.python]
    options += ["--custom-compile-command", recipe]
    done = uv_compile(uv_bin, options, lock_input(spec), source)
    if done.returncode != 0:
        raise LockError(
            f"cannot lock {spec_path} for the venv backend (uv pip compile failed):\n"
            f"{done.stderr.strip()}\nFix the pip: section of {spec_path} and try again."
        )
    header = f"{_SPEC_HASH}{file_hash(spec_path)}\n{_PYTHON}{spec.python}\n"
    return _write_atomic(source.lock_for_writing(venv_lock_name(source)), header + done.stdout)


def uv_compile(
    uv_bin: str, options: List[str], requirements: List[str], source: EnvSource
) -> subprocess.CompletedProcess:
    """`uv pip compile` of requirements (given on stdin), run in source's env dir (where
    relative paths in requirements point)."""
    command = [uv_bin, "pip", "compile", "-", "--quiet"] + options
    logger.debug("running %s (cwd %s)", shlex.join(command), source.env_dir)
    return subprocess.run(
        command,
        input="\n".join(requirements) + "\n",
        capture_output=True,
        text=True,
        cwd=source.env_dir,
        env=tool_environment(),
    )


def _write_atomic(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise LockError(f"cannot write the lockfile {path}: {exc}") from exc
    return path


def locked_python(lock_path: Path) -> Optional[str]:
    """The Python version a venv lockfile was made for, if it records one."""
    return read_header(lock_path).get("python")
