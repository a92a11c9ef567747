"""OCI image archives written in pure Python: no Docker daemon, no registry.

Why by hand: `portal-env export` must work where no daemon runs (CI, HPC
login nodes with Apptainer only), and the format is small: a layer is a tar
blob, an image config lists the layers' uncompressed digests (diff_ids), a
manifest lists the blobs. One archive written here is at the same time an
OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`; read by
Podman, skopeo, containerd, Apptainer's `oci-archive://`) and a docker-archive
(`manifest.json` pointing at the same blobs; read by `docker load`, including
dockerd 20.10, which does not read OCI layouts). Layers are gzip-compressed:
dockerd 20.10 decompresses docker-archive layers it loads (checked against it).

Layers are reproducible: entries sorted by path, owned by root (numeric ids,
no names), one fixed mtime, gzip header mtime 0, so the same files give the
same digests and the same archive bytes.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import json
import logging
import os
import platform as _platform
import secrets
import shutil
import stat
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import (
    IO,
    Any,
    Callable,
    Collection,
    Dict,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from ..errors import BuildError

logger = logging.getLogger(__name__)

MTIME = 946_684_800  # 2000-01-01T00:00:00Z: every file's mtime, so layers are reproducible
CREATED = "2000-01-01T00:00:00Z"
GZIP_LEVEL = 1  # measured on a Debian rootfs: 2.7x faster than 6, archive 9% larger
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
BASE_KINDS = (
    "a root filesystem directory, a root filesystem tarball (.tar or .tar.gz, e.g. from "
    "debootstrap + tar or `docker export`), a `docker save` archive, or an OCI image archive"
)
IMAGE_KINDS = "an OCI image archive (e.g. from `portal-env export`) or a `docker save` archive"
_CHUNK = 1 << 20
_DOCKER_INDEX = "application/vnd.docker.distribution.manifest.list.v2+json"
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}

Source = Tuple[Path, str]  # a file or directory on this host, and its absolute path in the image


@dataclass(frozen=True)
class Layer:
    """One layer blob in blobs_dir.

    Attributes:
        path: The blob file (named by its digest's hex).
        digest: "sha256:..." of the blob as stored (compressed, if media_type says so).
        diff_id: "sha256:..." of the uncompressed tar (what image configs list).
        size: The blob's size in bytes.
        media_type: The OCI layer media type.
        created_by: What made the layer (the image history shows it).
    """

    path: Path
    digest: str
    diff_id: str
    size: int
    media_type: str = LAYER_GZIP
    created_by: str = ""


@dataclass(frozen=True)
class Base:
    """A base image: its layers (in order) and its config.

    Attributes:
        source: Where it was read from.
        layers: Its layers, re-encoded into blobs_dir.
        config: The image config's `config` object (Env, Cmd, ...); empty for a rootfs.
        history: The image config's history entries (empty for a rootfs).
    """

    source: Path
    layers: List[Layer]
    config: Dict[str, Any] = field(default_factory=dict)
    history: List[Dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Role:
    """What an archive being read is for, as errors name it."""

    noun: str  # "the base", "the image"
    kinds: str  # what to give instead


BASE = Role("the base", BASE_KINDS)
IMAGE = Role("the image", IMAGE_KINDS)


# -- layers ------------------------------------------------------------------------


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to target."""

    def __init__(self, target: Optional[IO[bytes]]) -> None:
        self.target = target
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sha.update(data)
        self.size += len(data)
        if self.target is not None:
            self.target.write(data)
        return len(data)

    def digest(self) -> str:
        return f"sha256:{self.sha.hexdigest()}"


class _LayerWriter:
    """Writes one layer blob into blobs_dir, computing digest and diff_id in one pass."""

    def __init__(self, blobs_dir: Path) -> None:
        blobs_dir.mkdir(parents=True, exist_ok=True)
        self.blobs_dir = blobs_dir
        fd, name = tempfile.mkstemp(prefix=".layer-", dir=blobs_dir)
        self.tmp = Path(name)
        self.file = os.fdopen(fd, "wb")
        self.blob = _Hashing(self.file)
        self.gzip = gzip.GzipFile(
            filename="", mode="wb", fileobj=self.blob, mtime=0, compresslevel=GZIP_LEVEL
        )
        self.tar_stream = _Hashing(self.gzip)

    def finish(self, created_by: str) -> Layer:
        self.gzip.close()
        self.file.close()
        hex_digest = self.blob.sha.hexdigest()
        path = self.blobs_dir / hex_digest
        self.tmp.replace(path)
        digest = f"sha256:{hex_digest}"
        return Layer(path, digest, self.tar_stream.digest(), self.blob.size, LAYER_GZIP, created_by)

    def abandon(self) -> None:
        """Close and delete the unfinished blob."""
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _write_layer(blobs_dir: Path, created_by: str, fill: Callable[[IO[bytes]], None]) -> Layer:
    """A gzip layer blob whose uncompressed tar fill writes; nothing is left if it fails."""
    writer = _LayerWriter(blobs_dir)
    try:
        fill(writer.tar_stream)
        return writer.finish(created_by)
    except BaseException:
        writer.abandon()
        raise


def layer_from_dir(src: Path, dest: str, blobs_dir: Path, *, skip: Collection[str] = ()) -> Layer:
    """A layer holding src's files under the absolute path dest (with dest's parents)."""
    return layer_from_sources([(src, dest)], blobs_dir, skip=skip)


def layer_from_sources(
    sources: Sequence[Source],
    blobs_dir: Path,
    *,
    skip: Collection[str] = (),
    keep_owners: bool = False,
    created_by: str = "",
) -> Layer:
    """One layer from several (file or directory, absolute image path) pairs.

    skip: file or directory names left out at any depth (e.g. __pycache__).
    keep_owners: keep numeric uid/gid (for a base rootfs) instead of root.
    """
    entries = _entries(sources, set(skip))
    what = created_by or "portal-env: " + " ".join(dest for _, dest in sources)
    return _write_layer(blobs_dir, what, lambda out: _fill(out, entries, keep_owners))


def sources_diff_id(
    sources: Sequence[Source], *, skip: Collection[str] = (), keep_owners: bool = False
) -> str:
    """The diff_id layer_from_sources would give these sources, computed without a blob."""
    sink = _Hashing(None)
    _fill(sink, _entries(sources, set(skip)), keep_owners)
    return sink.digest()


def _fill(out: IO[bytes], entries: List[Tuple[str, Optional[Path]]], keep_owners: bool) -> None:
    """Write the tar of entries to out (the same bytes for the same entries)."""
    links: Dict[Tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, path in entries:
            _add_entry(tar, name, path, keep_owners, links)


def _entries(sources: Sequence[Source], skip: set) -> List[Tuple[str, Optional[Path]]]:
    """(name in the layer, host path or None for a made-up parent dir), sorted by name."""
    found: Dict[str, Optional[Path]] = {}
    for src, dest in sources:
        image_path = PurePosixPath(dest)
        if not image_path.is_absolute():
            raise ValueError(f"image path {dest!r} must be absolute")
        rel = image_path.relative_to("/")
        for parent in list(rel.parents)[:-1]:
            found.setdefault(str(parent), None)
        try:
            info = src.lstat()
        except OSError as exc:
            raise BuildError(
                f"cannot read {src} (to put it at {dest} in the image): {exc}"
            ) from None
        if str(rel) != ".":
            found[str(rel)] = src
        if stat.S_ISDIR(info.st_mode):
            for path in _walk(src, skip):
                found[str(rel / path.relative_to(src).as_posix())] = path
    found.pop(".", None)
    return sorted(found.items())


def _walk(root: Path, skip: set) -> Iterator[Path]:
    try:
        children = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise BuildError(f"cannot list {root}: {exc}") from None
    for child in children:
        if child.name in skip:
            continue
        yield Path(child.path)
        if child.is_dir(follow_symlinks=False):
            yield from _walk(Path(child.path), skip)


def _add_entry(
    tar: tarfile.TarFile,
    name: str,
    path: Optional[Path],
    keep_owners: bool,
    links: Dict[Tuple[int, int], str],
) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = MTIME
    info.uname = info.gname = ""
    if path is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        return
    try:
        st = path.lstat()
    except OSError as exc:
        raise BuildError(f"cannot read {path}: {exc}") from None
    info.mode = stat.S_IMODE(st.st_mode)
    if keep_owners:
        info.uid, info.gid = st.st_uid, st.st_gid
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
    elif stat.S_ISREG(st.st_mode):
        if st.st_nlink > 1 and (st.st_dev, st.st_ino) in links:
            info.type, info.linkname = tarfile.LNKTYPE, links[(st.st_dev, st.st_ino)]
        else:
            links[(st.st_dev, st.st_ino)] = name
            info.size = st.st_size
            try:
                content = open(path, "rb")
            except OSError as exc:
                raise BuildError(f"cannot read {path}: {exc}") from None
            with content:
                tar.addfile(info, content)
            return
    else:  # devices, sockets, fifos: the container runtime provides /dev
        logger.debug("leaving special file %s out of the layer", path)
        return
    tar.addfile(info)


def layer_from_tar(stream: IO[bytes], blobs_dir: Path, *, created_by: str = "") -> Layer:
    """A gzip layer of an uncompressed tar stream: its bytes unchanged (so is its diff_id)."""
    copy = functools.partial(shutil.copyfileobj, stream, length=_CHUNK)
    return _write_layer(blobs_dir, created_by, copy)


# -- bases -------------------------------------------------------------------------


def read_base(path: Path, blobs_dir: Path) -> Base:
    """Read a base image of any accepted kind (see BASE_KINDS); layers go to blobs_dir."""
    with _damaged(Path(path)):
        return _read_base(Path(path), blobs_dir)


def _read_base(path: Path, blobs_dir: Path) -> Base:
    if path.is_dir():
        layer = layer_from_sources(
            [(path, "/")],
            blobs_dir,
            keep_owners=True,
            created_by=f"portal-env: base rootfs {path.name}",
        )
        return Base(path, [layer])
    if not path.is_file():
        raise BuildError(f"base {path} does not exist; give {BASE_KINDS}")
    with _open_tar(path, BASE) as tar:
        names = _names(tar)
        image = _image_archive(path, tar, names, BASE)
        if image is not None:
            layers = [_import_layer(path, tar, names, n, blobs_dir) for n in image[0]]
            return _checked_base(path, layers, image[1])
    with _open_stream(path) as stream:
        layer = layer_from_tar(stream, blobs_dir, created_by=f"portal-env: base {path.name}")
    return Base(path, [layer])


def base_diff_ids(path: Path) -> List[str]:
    """The diff_ids of a base's layers, as read_base would give them, without copying any.

    An image archive's come from its config; a rootfs's are hashed (one read of it).
    """
    with _damaged(Path(path)):
        return _base_diff_ids(Path(path))


@contextlib.contextmanager
def _damaged(path: Path, role: Role = BASE) -> Iterator[None]:
    """Errors of a truncated or malformed archive, as a BuildError naming it."""
    try:
        yield
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise BuildError(f"cannot read {role.noun} {path} ({exc}); give {role.kinds}") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise BuildError(
            f"{role.noun} {path} is a damaged or unknown kind of image archive (no {exc}); "
            f"give {role.kinds}"
        ) from None


def _base_diff_ids(path: Path) -> List[str]:
    if path.is_dir():
        return [sources_diff_id([(path, "/")], keep_owners=True)]
    if not path.is_file():
        raise BuildError(f"base {path} does not exist; give {BASE_KINDS}")
    with _open_tar(path, BASE) as tar:
        image = _image_archive(path, tar, _names(tar), BASE)
        if image is not None:
            return list((image[1].get("rootfs") or {}).get("diff_ids") or [])
    sink = _Hashing(None)
    with _open_stream(path) as stream:
        shutil.copyfileobj(stream, sink, _CHUNK)
    return [sink.digest()]


@contextlib.contextmanager
def image_layers(path: Path) -> Iterator[Tuple[Dict[str, Any], Iterator[IO[bytes]]]]:
    """An image archive's config and its layers as uncompressed tar streams, bottom first.

    For reading an image whole (e.g. to unpack it into a directory); errors name path.
    """
    path = Path(path)
    with _damaged(path, IMAGE):
        if not path.is_file():
            raise BuildError(f"the image {path} does not exist (or is not a file)")
        with _open_tar(path, IMAGE) as tar:
            names = _names(tar)
            image = _image_archive(path, tar, names, IMAGE)
            if image is None:
                raise BuildError(f"the image {path} is not an image archive; give {IMAGE_KINDS}")
            layer_names, config = image
            yield config, (_layer_stream(path, tar, names, name) for name in layer_names)


def _layer_stream(path: Path, tar: tarfile.TarFile, names: dict, name: str) -> IO[bytes]:
    member = _member_file(path, tar, names, name, IMAGE)
    head = member.read(4)
    member.seek(0)
    if head == b"\x28\xb5\x2f\xfd":
        raise BuildError(f"layer {name} of the image {path} is zstd-compressed: not readable here")
    return gzip.GzipFile(fileobj=member, mode="rb") if head[:2] == b"\x1f\x8b" else member


def _names(tar: tarfile.TarFile) -> Dict[str, tarfile.TarInfo]:
    """An archive's files (and symlinks, which newer `docker save` uses) by normalized name."""
    return {m.name.lstrip("./"): m for m in tar if m.isfile() or m.issym()}


def _open_tar(path: Path, role: Role) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise BuildError(f"cannot read {role.noun} {path} ({exc}); give {role.kinds}") from None


def _open_stream(path: Path) -> IO[bytes]:
    """path's bytes, gunzipped if it is gzip."""
    with open(path, "rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _member_file(
    path: Path, tar: tarfile.TarFile, names: dict, name: str, role: Role = BASE
) -> IO[bytes]:
    member = names.get(name.lstrip("./"))
    extracted = tar.extractfile(member) if member is not None else None
    if extracted is None:
        raise BuildError(f"{role.noun} {path} has no {name} (a damaged image archive?)")
    return extracted


def _member_json(
    path: Path, tar: tarfile.TarFile, names: dict, name: str, role: Role = BASE
) -> Any:
    try:
        return json.loads(_member_file(path, tar, names, name, role).read())
    except ValueError as exc:
        raise BuildError(f"{name} in {role.noun} {path} is not valid JSON: {exc}") from None


def _blob_name(digest: str) -> str:
    algorithm, _, hex_digest = digest.partition(":")
    return f"blobs/{algorithm}/{hex_digest}"


def _image_archive(
    path: Path, tar: tarfile.TarFile, names: dict, role: Role
) -> Optional[Tuple[List[str], dict]]:
    """An OCI or `docker save` archive's layer member names and config; None for a rootfs."""
    if "index.json" in names and "oci-layout" in names:
        return _oci_image(path, tar, names, role)
    if "manifest.json" in names:
        return _docker_image(path, tar, names, role)
    return None


def _oci_image(path: Path, tar: tarfile.TarFile, names: dict, role: Role) -> Tuple[List[str], dict]:
    """The layer member names and the image config of an OCI archive (this host's image)."""
    manifest = _member_json(path, tar, names, "index.json", role)
    while manifest.get("mediaType") in (INDEX, _DOCKER_INDEX) or "manifests" in manifest:
        choices = manifest.get("manifests") or []
        if not choices:
            raise BuildError(f"the OCI archive {path} lists no image")
        arch = host_arch()
        chosen = next(
            (m for m in choices if (m.get("platform") or {}).get("architecture") == arch),
            choices[0],
        )
        manifest = _member_json(path, tar, names, _blob_name(chosen["digest"]), role)
    config = _member_json(path, tar, names, _blob_name(manifest["config"]["digest"]), role)
    return [_blob_name(d["digest"]) for d in manifest.get("layers") or []], config


def _docker_image(
    path: Path, tar: tarfile.TarFile, names: dict, role: Role
) -> Tuple[List[str], dict]:
    """The layer member names and the image config of a `docker save` archive."""
    entries = _member_json(path, tar, names, "manifest.json", role)
    if not isinstance(entries, list) or not entries:
        raise BuildError(f"manifest.json in {role.noun} {path} lists no image")
    if len(entries) > 1:
        logger.warning("%s holds %d images; using the first", path, len(entries))
    config = _member_json(path, tar, names, entries[0]["Config"], role)
    return list(entries[0].get("Layers") or []), config


def _import_layer(path: Path, tar: tarfile.TarFile, names: dict, name: str, blobs: Path) -> Layer:
    extracted = _member_file(path, tar, names, name)
    head = extracted.read(4)
    extracted.seek(0)
    if head[:2] == b"\x1f\x8b":  # kept as it is: its digest stays the base's
        return _adopt_gzip(extracted, blobs, f"base {path.name}")
    if head == b"\x28\xb5\x2f\xfd":
        raise BuildError(
            f"layer {name} of the base {path} is zstd-compressed, which this version cannot "
            "read; save the base with gzip or uncompressed layers (e.g. `docker save`)"
        )
    return layer_from_tar(extracted, blobs, created_by=f"base {path.name}")


def _adopt_gzip(stream: IO[bytes], blobs_dir: Path, created_by: str) -> Layer:
    """A gzip layer blob kept byte for byte (its digest stays the base's); diff_id computed."""
    blobs_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".layer-", dir=blobs_dir)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as file:
            blob = _Hashing(file)
            shutil.copyfileobj(stream, blob, _CHUNK)
        diff = _Hashing(None)
        with gzip.open(tmp, "rb") as tar:
            shutil.copyfileobj(tar, diff, _CHUNK)
        path = blobs_dir / blob.sha.hexdigest()
        tmp.replace(path)
    except BaseException:  # also Ctrl-C: no partial file stays behind
        tmp.unlink(missing_ok=True)
        raise
    return Layer(path, blob.digest(), diff.digest(), blob.size, LAYER_GZIP, created_by)


def _checked_base(path: Path, layers: List[Layer], config: dict) -> Base:
    expected = list((config.get("rootfs") or {}).get("diff_ids") or [])
    actual = [layer.diff_id for layer in layers]
    if expected and expected != actual:
        raise BuildError(
            f"the layers of the base {path} do not match its image config (diff_ids "
            f"{actual} vs {expected}): the archive is damaged; save it again"
        )
    history = list(config.get("history") or [])
    if sum(1 for h in history if not h.get("empty_layer")) != len(layers):
        history = []
    return Base(path, layers, dict(config.get("config") or {}), history)


# -- archives ----------------------------------------------------------------------


def host_arch() -> str:
    """This machine's architecture in OCI terms (amd64, arm64, ...)."""
    machine = _platform.machine().lower()
    return _ARCH.get(machine, machine)


def image_config(base: Base, layers: Sequence[Layer], overrides: Dict[str, Any]) -> dict:
    """The image config: the base's config with overrides (a None value removes a key;
    Labels are merged), every layer's diff_id in order, and history to match."""
    settings = dict(base.config)
    for key, value in overrides.items():
        if value is None:
            settings.pop(key, None)
        elif key == "Labels":
            settings["Labels"] = {**(settings.get("Labels") or {}), **value}
        else:
            settings[key] = value
    history = list(base.history) or [
        {"created": CREATED, "created_by": layer.created_by or f"base {base.source.name}"}
        for layer in base.layers
    ]
    history += [{"created": CREATED, "created_by": layer.created_by} for layer in layers]
    all_layers = list(base.layers) + list(layers)
    return {
        "architecture": host_arch(),
        "os": "linux",
        "created": CREATED,
        "config": settings,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in all_layers]},
        "history": history,
    }


def write_archive(
    out: Path, base: Base, layers: Sequence[Layer], config: Dict[str, Any], tag: str
) -> str:
    """Write the image (base's layers, then layers) as one OCI + docker archive at out.

    config holds overrides of the image's `config` object (see image_config).
    Returns the manifest digest. Written to a temporary file beside out and
    renamed at the end: a failure or Ctrl-C leaves neither out nor the temporary.
    """
    out = Path(out)
    all_layers = list(base.layers) + list(layers)
    config_bytes = _json_bytes(image_config(base, layers, config))
    config_digest = _sha(config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [
            {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
            for layer in all_layers
        ],
        "annotations": {REF_NAME: tag},
    }
    manifest_bytes = _json_bytes(manifest)
    manifest_digest = _sha(manifest_bytes)
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [
            {
                "mediaType": MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "annotations": {REF_NAME: tag, "io.containerd.image.name": _full_name(tag)},
                "platform": {"architecture": host_arch(), "os": "linux"},
            }
        ],
    }
    docker_manifest = [
        {
            "Config": _blob_name(config_digest),
            "RepoTags": [tag],
            "Layers": [_blob_name(layer.digest) for layer in all_layers],
        }
    ]
    small = [
        ("oci-layout", _json_bytes({"imageLayoutVersion": "1.0.0"})),
        ("index.json", _json_bytes(index)),
        ("manifest.json", _json_bytes(docker_manifest)),
        (_blob_name(config_digest), config_bytes),
        (_blob_name(manifest_digest), manifest_bytes),
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, as for out
    try:
        with os.fdopen(fd, "wb") as file, tarfile.open(
            fileobj=file, mode="w|", format=tarfile.PAX_FORMAT
        ) as tar:
            for name in ("blobs", "blobs/sha256"):
                tar.addfile(_tar_info(name, tarfile.DIRTYPE, 0o755))
            for name, data in small:
                tar.addfile(_tar_info(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
            written = set()
            for layer in all_layers:
                if layer.digest in written:  # the same layer twice: one blob
                    continue
                written.add(layer.digest)
                info = _tar_info(_blob_name(layer.digest), tarfile.REGTYPE, 0o644, layer.size)
                with open(layer.path, "rb") as blob:
                    tar.addfile(info, blob)
        os.replace(tmp, out)
    except BaseException:  # also Ctrl-C: no partial file stays behind
        tmp.unlink(missing_ok=True)
        raise
    return manifest_digest


def _tar_info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, MTIME
    info.uname = info.gname = ""
    return info


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _full_name(tag: str) -> str:
    """tag as containerd names images (docker.io/ added when there is no registry)."""
    first = tag.split("/", 1)[0]
    has_registry = "/" in tag and ("." in first or ":" in first or first == "localhost")
    return tag if has_registry else f"docker.io/{tag}"


def read_archive(path: Path) -> Dict[str, Union[dict, list]]:
    """index.json, manifest.json, the OCI manifest and the config of an archive written here
    (for checks and tests): keys index, docker_manifest, manifest, config."""
    with _open_tar(Path(path), IMAGE) as tar:
        names = _names(tar)
        index = _member_json(path, tar, names, "index.json")
        manifest = _member_json(path, tar, names, _blob_name(index["manifests"][0]["digest"]))
        return {
            "index": index,
            "docker_manifest": _member_json(path, tar, names, "manifest.json"),
            "manifest": manifest,
            "config": _member_json(path, tar, names, _blob_name(manifest["config"]["digest"])),
        }
