"""`portal-env export`: an env's locked conda prefix as an OCI image archive, no daemon.

The prefix is installed on this host into a staging directory, but made for
the path it has in the image (py-rattler's alternative target prefix writes
PREFIX into the packages' files), so no conda, Docker or root is needed. Three
layers go on top of the base: the prefix, a copy of portal_env (both sides
then speak the same protocol) and the env's own files; each changes at its
own pace, so a rebuilt image shares the unchanged ones.

The image's tag hashes everything that goes into it (this platform's locked
packages, env_setup.py, the env's files, the portal_env copy, the base's
layers), so the Docker backend can tell from the tag alone whether an image
is current, without building one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

from .. import config
from ..errors import BuildError
from . import condalock, oci, prefix
from .base import Reporter
from .cache import package_dir
from .catalog import SPEC, EnvSource
from .image_layout import APP, LIB, PREFIX

logger = logging.getLogger(__name__)

SKIP = ("__pycache__", ".git")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENV_LABEL = "org.portal-env.env"
INPUTS_LABEL = "org.portal-env.inputs"
_FORMAT = "portal-env-image-1"  # bump when the image layout changes meaning


@dataclass(frozen=True)
class ExportResult:
    """A written image archive.

    Attributes:
        path: The archive.
        tag: The image's name:tag (what `docker load` tags it as).
        digest: The OCI manifest digest.
        size: The archive's size in bytes.
    """

    path: Path
    tag: str
    digest: str
    size: int


def lockfile(source: EnvSource, reporter: Reporter) -> Path:
    """source's current conda lockfile: locked first if missing, refused if stale."""
    from .micromamba import MicromambaBackend

    source.require_spec("export")
    return MicromambaBackend().lockfile(source, reporter)


def app_sources(source: EnvSource, lock_path: Path) -> List[oci.Source]:
    """The env's files and where they go in the image: env_dir at APP, and the spec and
    lockfile as APP/spec.yml and APP/spec.conda-lock.yml (so APP is a custom env dir)."""
    sources: List[oci.Source] = [(source.env_dir, APP)]
    for path, name in ((source.spec, SPEC), (lock_path, f"spec{condalock.SUFFIX}")):
        if path is not None and path.parent.resolve() != source.env_dir.resolve():
            sources.append((path, f"{APP}/{name}"))
    return sources


def lib_sources() -> List[oci.Source]:
    """The portal_env copy (protocol code, no builtin/ data) and where it goes."""
    return [(package_dir() / "portal_env", f"{LIB}/portal_env")]


def inputs_hash(source: EnvSource, lock_path: Path, base_diff_ids: Sequence[str]) -> str:
    """sha256 hex of everything an exported image is made from."""
    platform = prefix.current_platform()
    digest = hashlib.sha256(f"{_FORMAT}\0{PREFIX}\0{oci.host_arch()}\0".encode())
    digest.update(prefix.prefix_key(lock_path, platform, source.setup_script).encode() + b"\0")
    digest.update(oci.sources_diff_id(app_sources(source, lock_path), skip=SKIP).encode())
    digest.update(oci.sources_diff_id(lib_sources(), skip=SKIP).encode())
    for diff_id in base_diff_ids:
        digest.update(b"\0" + diff_id.encode())
    return digest.hexdigest()


def tag_for(name: str, inputs: str) -> str:
    """`portal-env/<name>:<12 hex>`, the name made a valid image repository name."""
    repo = re.sub(r"[._-]{2,}", "-", name.lower()).strip("._-") or "env"
    return f"portal-env/{repo}:{inputs[:12]}"


def image_tag(source: EnvSource, base: Path, *, reporter: Reporter) -> str:
    """The tag export_image would give source on base, without building anything
    (locks a spec that has no lockfile yet, like the backends)."""
    return tag_for(source.name, inputs_hash(source, lockfile(source, reporter), diff_ids(base)))


def diff_ids(base: Path) -> List[str]:
    """The base's layer ids (oci.base_diff_ids); an unreadable base is a BuildError."""
    with _reading(base):
        return oci.base_diff_ids(base)


@contextlib.contextmanager
def _reading(base: Path) -> Iterator[None]:
    """An OSError while reading the base, as a BuildError naming it."""
    try:
        yield
    except OSError as exc:
        raise BuildError(f"cannot read the base {base}: {exc}; give {oci.BASE_KINDS}") from None


def export_image(
    source: EnvSource,
    out: Path,
    base: Path,
    *,
    tag: Optional[str] = None,
    lock_path: Optional[Path] = None,
    reporter: Reporter,
) -> ExportResult:
    """Write source's locked conda prefix on base as an OCI image archive at out; lock_path
    is its lockfile when the caller has already found it (else found here)."""
    started = time.monotonic()
    lock_path = lock_path or lockfile(source, reporter)
    out = Path(out).expanduser().resolve()
    work = Path(tempfile.mkdtemp(prefix="export-", dir=_work_root()))
    try:
        reporter.status(f"reading the base {base}")
        with _reading(base):
            base_image = oci.read_base(Path(base), work / "blobs")
        inputs = inputs_hash(source, lock_path, [layer.diff_id for layer in base_image.layers])
        tag = tag or tag_for(source.name, inputs)
        activation = stage_prefix(source, lock_path, work / "env", reporter)
        reporter.status("writing the image layers")
        layers = [
            oci.layer_from_dir(work / "env", PREFIX, work / "blobs"),
            oci.layer_from_sources(lib_sources(), work / "blobs", skip=SKIP),
            oci.layer_from_sources(app_sources(source, lock_path), work / "blobs", skip=SKIP),
        ]
        settings = image_settings(source.name, inputs, base_image.config, activation)
        reporter.status(f"writing {out}")
        try:
            digest = oci.write_archive(out, base_image, layers, settings, tag)
        except OSError as exc:
            raise BuildError(f"cannot write the image archive {out}: {exc}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = out.stat().st_size
    seconds = time.monotonic() - started
    reporter.note(f"wrote {out} ({size / 2**20:.0f} MiB, {tag}) in {seconds:.1f}s")
    return ExportResult(out, tag, digest, size)


def _work_root() -> Path:
    """Staging in the cache, beside the package cache: py-rattler hardlinks, not copies."""
    root = config.cache_dir() / "export-tmp"
    root.mkdir(parents=True, exist_ok=True)
    return root


def image_settings(
    name: str, inputs: str, base_config: Dict, activation: prefix.Activation
) -> Dict[str, object]:
    """The image config overrides: run env_main.py with the prefix's Python, activated."""
    env: Dict[str, str] = {}
    for item in base_config.get("Env") or []:
        key, _, value = item.partition("=")
        env[key] = value
    env["PATH"] = env.get("PATH") or DEFAULT_PATH
    env = activation.environment(PREFIX, env)
    env.update(PYTHONPATH=LIB, PYTHONUNBUFFERED="1", PYTHONNOUSERSITE="1")
    return {
        "Cmd": [f"{PREFIX}/bin/python", f"{APP}/env_main.py"],
        "Entrypoint": None,  # a base's entrypoint would swallow Cmd
        "WorkingDir": APP,
        "Env": [f"{key}={value}" for key, value in env.items()],
        "Labels": {ENV_LABEL: name, INPUTS_LABEL: inputs},
    }


# -- the prefix ----------------------------------------------------------------------


def stage_prefix(
    source: EnvSource, lock_path: Path, staging: Path, reporter: Reporter
) -> prefix.Activation:
    """Install this platform's locked packages into staging, made for PREFIX.

    Conda packages via py-rattler (hashes checked, file:// ones too), then the
    locked pip packages via uv; env_setup.py runs with the staged prefix; then
    scripts' `#!staging/...` lines are pointed at PREFIX. Returns the prefix's
    activation, with staging paths written as PREFIX.
    """
    staging.parent.mkdir(parents=True, exist_ok=True)
    activation, _ = prefix.build(source, lock_path, staging, reporter, alternative_prefix=PREFIX)
    rewrite_shebangs(staging / "bin", str(staging), PREFIX)
    align_bytecode(staging, oci.MTIME)
    return activation.moved(str(staging), PREFIX)


_PYC_HEADER = struct.Struct("<4sIII")  # magic, flags (0: checked by timestamp), mtime, size


def align_bytecode(root: Path, mtime: int) -> int:
    """Keep root's timestamp-checked .pyc files valid once every source's mtime is mtime
    (as in the image's layers): otherwise Python would recompile them, e.g. the
    stdlib's, in every new container. Only a .pyc that matches its source now is
    changed, and it is replaced, not edited (it may be a hardlink into the package
    cache). Returns how many were changed."""
    changed = 0
    for pyc in root.rglob("__pycache__/*.pyc"):
        source = pyc.parent.parent / (pyc.name.split(".", 1)[0] + ".py")
        try:
            stat = source.stat()
            data = pyc.read_bytes()
        except OSError:
            continue
        if len(data) < _PYC_HEADER.size:
            continue
        magic, flags, stamp, size = _PYC_HEADER.unpack_from(data)
        if flags or stamp != int(stat.st_mtime) & 0xFFFFFFFF or size != stat.st_size & 0xFFFFFFFF:
            continue
        tmp = pyc.with_name(f".{pyc.name}.portal-env-tmp")
        tmp.write_bytes(_PYC_HEADER.pack(magic, 0, mtime, size) + data[_PYC_HEADER.size :])
        tmp.replace(pyc)
        changed += 1
    return changed


def rewrite_shebangs(bin_dir: Path, old: str, new: str) -> List[Path]:
    """Point scripts whose first lines name old (e.g. `#!old/bin/python`) at new instead.

    Only the first lines change (a `#!` line, or uv's `exec` trampoline for long
    paths). A file is replaced, never edited in place: it may be a hardlink into
    the package cache. Returns the scripts changed.
    """
    changed = []
    old_bytes, new_bytes = old.encode() + b"/", new.encode() + b"/"
    for path in sorted(bin_dir.iterdir()) if bin_dir.is_dir() else []:
        if path.is_symlink() or not path.is_file():
            continue
        with open(path, "rb") as file:
            head = file.read(2)
            if head != b"#!":
                continue
            data = head + file.read()
        lines = data.split(b"\n", 2)
        header = 2 if len(lines) > 1 and lines[1].startswith(b"'''exec'") else 1
        top = b"\n".join(lines[:header])
        if old_bytes not in top:
            continue
        data = b"\n".join([top.replace(old_bytes, new_bytes)] + lines[header:])
        tmp = path.with_name(f".{path.name}.portal-env-tmp")
        tmp.write_bytes(data)
        shutil.copymode(path, tmp)
        tmp.replace(path)
        changed.append(path)
    return changed
