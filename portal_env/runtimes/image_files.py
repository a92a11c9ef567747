"""The forms an image takes on disk, told apart by their content: an image archive (OCI
or `docker save`), a directory tree, a SquashFS file, an Apptainer SIF file.

A damaged file is caught here, before any container runtime sees it, with an error
naming it: a SquashFS file whose superblock claims more bytes than the file holds (a
copy cut short), an archive that is not a tar of an image.
"""

from __future__ import annotations

import os
import shutil
import struct
import tarfile
from pathlib import Path

from ..errors import BuildError
from .commands import run
from .image_layout import APP, PREFIX

ARCHIVE = "archive"  # an OCI image archive or a `docker save` archive
DIRECTORY = "dir"  # an unpacked image (ch-run's directory image, Apptainer's sandbox)
SQUASH = "squash"  # a SquashFS file (ch-run mounts it with its built-in squashfuse)
SIF = "sif"  # Apptainer's Singularity Image Format
KINDS = {
    ARCHIVE: "an OCI image archive (`portal-env export`)",
    DIRECTORY: "an image directory",
    SQUASH: "a SquashFS file (.sqfs)",
    SIF: "an Apptainer SIF file (.sif)",
}
SQUASH_MAGIC = b"hsqs"  # little-endian "sqsh"
_SQUASH_SUPER = struct.Struct("<4sIIIIHHHHHHQQ")  # through bytes_used (offset 40)
_SIF_MAGIC = b"SIF_MAGIC"
# Compression every squashfuse reads (zstd needs a newer build); level 1: 10x faster to
# write than gzip's default, ~the same size. 64 KiB blocks as `ch-convert` writes.
MKSQUASHFS_OPTIONS = ("-noappend", "-all-root", "-b", "65536", "-comp", "gzip")
MKSQUASHFS_OPTIONS += ("-Xcompression-level", "1")


def kind_of(path: Path) -> str:
    """Which of KINDS the image at path is; a BuildError naming it if none, or if damaged."""
    path = Path(path)
    if path.is_dir():
        return _checked_directory(path)
    try:
        with open(path, "rb") as file:
            head = file.read(128)
            size = file.seek(0, 2)
    except FileNotFoundError:
        raise BuildError(f"the image {path} does not exist") from None
    except OSError as exc:
        raise BuildError(f"cannot read the image {path}: {exc}") from None
    if head.startswith(SQUASH_MAGIC):
        _check_squash(path, head, size)
        return SQUASH
    if _SIF_MAGIC in head:
        return SIF
    if _is_tar(path):
        return ARCHIVE
    raise BuildError(
        f"the image {path} is none of the image kinds portal-env runs "
        f"({', '.join(KINDS.values())}); is it damaged?"
    )


def _checked_directory(path: Path) -> str:
    missing = [p for p in (f"{PREFIX}/bin/python", f"{APP}/env_main.py") if not _in(path, p)]
    if missing:
        raise BuildError(
            f"the image directory {path} is not an image of `portal-env export` (no "
            f"{' or '.join(missing)} in it)"
        )
    return DIRECTORY


def _in(root: Path, image_path: str) -> bool:
    """Whether image_path exists in the image at root (a symlink may point into it)."""
    return os.path.lexists(root / image_path.lstrip("/"))


def _check_squash(path: Path, head: bytes, size: int) -> None:
    if len(head) < _SQUASH_SUPER.size:
        raise BuildError(f"the SquashFS image {path} is damaged: shorter than its superblock")
    fields = _SQUASH_SUPER.unpack_from(head)
    major, used = fields[9], fields[12]
    if major != 4:
        raise BuildError(
            f"the SquashFS image {path} has format version {major}, not 4: not readable here"
        )
    if used > size:
        raise BuildError(
            f"the SquashFS image {path} is damaged: it should hold {used} bytes but has "
            f"{size} (cut short while copying?); copy or build it again"
        )


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def mksquashfs() -> str:
    """The mksquashfs executable, or a BuildError saying how to get it."""
    found = shutil.which("mksquashfs")
    if found is None:
        raise BuildError(
            "making a SquashFS image needs mksquashfs (Debian/Ubuntu: apt install "
            "squashfs-tools); or ask for a directory image instead"
        )
    return found


def make_squash(directory: Path, out: Path) -> None:
    """Pack the image directory into the SquashFS file out (replaced if it exists)."""
    command = [mksquashfs(), str(directory), str(out), *MKSQUASHFS_OPTIONS]
    run(command, f"pack {directory} into the SquashFS image {out}")
