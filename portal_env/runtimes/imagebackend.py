"""Backends that serve an image with a daemonless container runtime (Charliecloud's
ch-run, Apptainer): one code path, one small interface per runtime.

The image is the one `portal-env export` writes (the env's locked conda prefix, a copy
of portal_env and the env's files over a base), built once per lock and base into the
cache and kept in the form the runtime runs best (a SquashFS file or a directory for
ch-run, a SIF file for Apptainer); or an image the user gives with --image, in a form
the runtime takes (an OCI archive is converted once into the cache).

A server runs as `<runtime> IMAGE -- /opt/portal-env/env/bin/python env_main.py`. Both
runtimes share the host's network and /tmp, so it listens on a Unix socket in this
user's private directory in /tmp, at the same path inside and out. Its settings and
token reach it through the environment, never the command line (`ps` shows that to
every user). This host's portal_env is bound over the image's copy, as the docker
backend does, so both sides speak the same protocol.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Dict, List, Mapping, Optional, Protocol, Tuple

from .. import config
from ..errors import BuildError
from . import export, image_files, oci
from .base import Reporter, ServerHandle
from .cache import build_once, package_dir
from .catalog import EnvSource
from .image_layout import APP, LIB, PREFIX
from .micromamba import MicromambaBackend

logger = logging.getLogger(__name__)

_FORMAT = "portal-env-hpc-image-1"  # bump when a cached image's form changes meaning


@dataclass(frozen=True)
class Launch:
    """What a container runtime is asked to run; the same for every runtime.

    Attributes:
        image: The image (a directory, a SquashFS or SIF file).
        kind: Its form, one of image_files.KINDS.
        workdir: The server's working directory in the container.
        argv: The command in the container.
        binds: (host path, container path) pairs to bind.
        env: The server's own variables (its token included): passed through the
            runtime's environment, never on its command line.
    """

    image: Path
    kind: str
    workdir: str
    argv: Tuple[str, ...]
    binds: Tuple[Tuple[str, str], ...] = ()
    env: Mapping[str, str] = field(default_factory=dict, repr=False)


class ContainerTool(Protocol):
    """One daemonless container runtime: how it converts, names and runs images."""

    name: str  # the backend's name: "charliecloud"
    flag: str  # how `-b` names it in commands we suggest: "ch"
    runs: Tuple[str, ...]  # image kinds it runs as they are

    def check(self) -> None:
        """A BackendUnavailableError saying how to get the runtime, if it is not here."""

    def built_kind(self) -> str:
        """The form of the images built into the cache (one of `runs`)."""

    def convert(self, archive: Path, out_dir: Path, kind: str) -> str:
        """Turn the image archive into an image of kind inside out_dir; its file name."""

    def start(self, launch: Launch, log: IO[bytes]) -> ServerHandle:
        """Run launch's command in its image, with output to log."""


class ImageBackend(MicromambaBackend):
    """Images of the env's conda lockfile, or given ones, served by a container tool.

    Args:
        tool: The container runtime.
        base_image: The base to build the image on (a rootfs directory or tarball, a
            `docker save` or OCI archive), as for `portal-env export --base`.
        image: An image to serve as it is, instead of building one.
    """

    lock_kind = "conda"

    def __init__(
        self, tool: ContainerTool, base_image: Optional[str] = None, image: Optional[str] = None
    ) -> None:
        super().__init__()
        self.tool = tool
        self.name = tool.name
        self.flag = tool.flag
        self.what = f"the {tool.name} image"
        self.base = Path(base_image).expanduser().resolve() if base_image else None
        self.image = Path(image).expanduser().resolve() if image else None

    def ensure(self, source: EnvSource, *, force: bool, reporter: Reporter) -> ImageRuntime:
        """The image of source (built only if needed), or the given one (converted once)."""
        self.tool.check()
        if self.image is not None:
            return self._given(source, force, reporter)
        if self.base is None:
            raise BuildError(
                f"-b {self.flag} builds the image of {source.name!r} from its conda lockfile "
                "over a base: give --base-image BASE (a rootfs directory or tarball, e.g. "
                "debootstrap output, or a `docker save`/OCI archive), or serve an image you "
                "have with --image PATH"
            )
        return super().ensure(source, force=force, reporter=reporter)

    def flags(self) -> List[str]:
        return ["--base-image", str(self.base)] if self.base is not None else []

    def runtime_dir(self, source: EnvSource, lock_path: Path) -> Path:
        return self._cache_path(export.inputs_hash(source, lock_path, base_diff_ids(self.base)))

    def _cache_path(self, content: str, prefix: str = "") -> Path:
        """The cache directory of an image of content, in the form this tool runs."""
        key = hashlib.sha256(f"{_FORMAT}\0{content}\0{self.tool.built_kind()}".encode())
        return config.cache_dir() / self.name / f"{prefix}{key.hexdigest()[:20]}"

    def build(
        self, source: EnvSource, lock_path: Path, runtime_dir: Path, reporter: Reporter
    ) -> Dict[str, Any]:
        runtime_dir.mkdir(parents=True)
        archive = runtime_dir / "image.oci.tar"
        export.export_image(source, archive, self.base, lock_path=lock_path, reporter=reporter)
        return self._convert(archive, runtime_dir, reporter)

    def _convert(self, archive: Path, runtime_dir: Path, reporter: Reporter) -> Dict[str, Any]:
        kind = self.tool.built_kind()
        reporter.status(f"converting {archive} into {image_files.KINDS[kind]} for {self.name}")
        try:
            name = self.tool.convert(archive, runtime_dir, kind)
        finally:
            if archive.parent == runtime_dir:
                archive.unlink(missing_ok=True)
        return {"image": name, "kind": kind}

    def open(self, source: EnvSource, runtime_dir: Path, info: Dict[str, Any]) -> ImageRuntime:
        return ImageRuntime(self.tool, source, runtime_dir / info["image"], info["kind"])

    def _given(self, source: EnvSource, force: bool, reporter: Reporter) -> ImageRuntime:
        """The image the user named: run as it is, or (an archive) converted once."""
        kind = image_files.kind_of(self.image)
        if kind in self.tool.runs:
            return ImageRuntime(self.tool, source, self.image, kind)
        if kind != image_files.ARCHIVE:
            runs = " or ".join(image_files.KINDS[k] for k in self.tool.runs)
            raise BuildError(
                f"{self.tool.name} cannot run the image {self.image} "
                f"({image_files.KINDS[kind]}); give {runs}, or an OCI image archive"
            )
        with oci.image_layers(self.image) as (image_config, _):
            content = json.dumps(image_config, sort_keys=True)  # names every layer's content
        runtime_dir = self._cache_path(content, prefix="given-")

        def convert() -> Dict[str, Any]:
            runtime_dir.mkdir(parents=True)
            return dict(self._convert(self.image, runtime_dir, reporter), archive=str(self.image))

        info = build_once(runtime_dir, convert, force=force, reporter=reporter)
        return ImageRuntime(self.tool, source, runtime_dir / info["image"], info["kind"])


def base_diff_ids(base: Path) -> List[str]:
    """export's base layer ids, remembered for a base file that has not changed since (size,
    mtime, inode), so a warm start does not hash a rootfs tarball again."""
    if not base.is_file():
        return export.diff_ids(base)
    info = base.stat()
    identity = f"{base}\0{info.st_size}\0{info.st_mtime_ns}\0{info.st_ino}"
    memo = config.cache_dir() / "base-ids" / hashlib.sha256(identity.encode()).hexdigest()[:24]
    try:
        return json.loads(memo.read_text())
    except (OSError, ValueError):
        pass
    ids = export.diff_ids(base)
    memo.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
    tmp.write_text(json.dumps(ids))
    tmp.replace(memo)
    return ids


class ImageRuntime:
    """An image that launches each server with its container tool."""

    def __init__(self, tool: ContainerTool, source: EnvSource, image: Path, kind: str) -> None:
        self.tool = tool
        self.source = source
        self.image = image
        self.kind = kind
        self.backend = tool.name
        self.location = str(image)
        self.lib = package_dir()

    def socket_dir(self) -> Optional[Path]:
        """This user's private directory in /tmp, which the container sees at the same path."""
        return config.shared_tmp_socket_dir()

    def launch(self, env: Mapping[str, str], log: IO[bytes]) -> ServerHandle:
        """Start env_main.py in the image, with the supervisor's variables env."""
        return self.tool.start(self.plan(env), log)

    def plan(self, env: Mapping[str, str]) -> Launch:
        """What launch() asks the tool to run: the image's env_main.py with its own Python,
        this host's portal_env bound over the image's, and the server's variables env."""
        return Launch(
            image=self.image,
            kind=self.kind,
            workdir=self._workdir(),
            argv=(f"{PREFIX}/bin/python", f"{APP}/env_main.py"),
            binds=((str(self.lib), LIB),),
            env=dict(env),
        )

    def _workdir(self) -> str:
        """The env's directory in the image; for a built-in env, whose libraries write
        files into their working directory, a private directory in /tmp (the image is
        read-only)."""
        if not self.source.builtin:
            return APP
        root = self.socket_dir()
        if root is None:
            return APP
        work = root / f"work-{self.source.name}"
        work.mkdir(mode=0o700, exist_ok=True)
        return str(work)
