"""An image archive unpacked into a directory: the image form ch-run runs (and mksquashfs
packs into one file).

Layers are applied bottom first with the OCI whiteouts: `.wh.NAME` removes NAME of the
layers below, `.wh..wh..opq` empties its directory of them. Nothing is written outside
the directory: a member whose path leads out of it (`..`, or through a symlink a layer
made) is refused. Device nodes are left out (ch-run binds the host's /dev); without root,
files get this user as owner and directories stay writable by the owner, so a later layer
can still write into them. Charliecloud's conventions are added: `/ch/environment` holds
the image's Env (what `ch-run --set-env` reads), and the mount points ch-run needs exist.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Set

from ..errors import BuildError
from . import oci

logger = logging.getLogger(__name__)

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
ENVIRONMENT = "ch/environment"  # the image's Env, one VAR=VALUE a line
# What ch-run binds over or into (ch-convert makes the same ones).
MOUNT_DIRS = ("bin", "dev", "etc", "mnt", "proc", "sys", "tmp", "usr") + tuple(
    f"mnt/{i}" for i in range(10)
)
MOUNT_FILES = ("etc/hosts", "etc/resolv.conf")
_AS_ROOT = os.geteuid() == 0


def unpack(archive: Path, target: Path) -> Dict[str, Any]:
    """Unpack the image archive into target (created; must not exist); the image config.

    A damaged archive or a member that would land outside target is a BuildError
    naming the archive; target is then left for the caller to remove.
    """
    root = Path(target)
    root.mkdir(mode=0o755)
    with oci.image_layers(Path(archive)) as (config, layers):
        for number, stream in enumerate(layers, 1):
            logger.debug("unpacking layer %d of %s", number, archive)
            try:
                with tarfile.open(fileobj=stream, mode="r|*", bufsize=_BUFSIZE) as tar:
                    tar.copybufsize = _BUFSIZE
                    _Layer(root, archive).apply(tar)
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise BuildError(
                    f"cannot unpack layer {number} of the image {archive} into {root}: {exc}"
                ) from None
    add_charliecloud_files(root, (config.get("config") or {}).get("Env") or [])
    return config


def add_charliecloud_files(root: Path, env: Any) -> None:
    """The mount points ch-run needs, and /ch/environment from the image's Env list."""
    for name in MOUNT_DIRS:
        path = root / name
        if not os.path.lexists(path):
            path.mkdir(mode=0o755, parents=True)
    for name in MOUNT_FILES:
        path = root / name
        if not os.path.lexists(path):
            path.touch(mode=0o644)
    lines = [str(item) for item in env if "=" in str(item) and "\n" not in str(item)]
    (root / "ch").mkdir(mode=0o755, exist_ok=True)
    (root / ENVIRONMENT).write_text("".join(f"{line}\n" for line in lines))


class _Layer:
    """One layer applied onto root."""

    def __init__(self, root: Path, archive: Path) -> None:
        self.root = root
        self.real_root = os.path.realpath(root)
        self.archive = archive
        self.fresh: Set[str] = set()  # paths this layer made (an opaque dir keeps them)
        self.inside: Set[str] = set()  # parents known to resolve inside root (no new symlink)

    def apply(self, tar: tarfile.TarFile) -> None:
        for member in tar:
            name = self._checked(member.name)
            if name is None:
                continue
            base = PurePosixPath(name).name
            parent = str(PurePosixPath(name).parent)
            if base == OPAQUE:
                self._empty(parent)
            elif base.startswith(WHITEOUT):
                self._remove(str(PurePosixPath(parent) / base[len(WHITEOUT) :]))
            elif member.isdev():
                logger.debug("leaving device %s out of the image", name)
            else:
                self._extract(tar, member, name)

    def _checked(self, raw: str) -> Any:
        """The member's path relative to root, or None for the root itself; refuses escapes."""
        path = PurePosixPath(raw.lstrip("/"))
        if ".." in path.parts:
            raise BuildError(f"the image {self.archive} has a member {raw!r} outside its root")
        name = str(path)
        if name in (".", ""):
            return None
        parent = str(path.parent)
        if parent not in self.inside:
            real = os.path.realpath(self.root / parent)
            if real != self.real_root and not real.startswith(self.real_root + os.sep):
                raise BuildError(
                    f"the image {self.archive} has a member {raw!r} that a symlink of its "
                    "layers points outside the image: refusing to unpack it"
                )
            self.inside.add(parent)
        return name

    def _empty(self, directory: str) -> None:
        path = self.root / directory
        if not path.is_dir() or path.is_symlink():
            return
        for child in path.iterdir():
            if str(child.relative_to(self.root)) not in self.fresh:
                _delete(child)

    def _remove(self, name: str) -> None:
        if name not in self.fresh:
            _delete(self.root / name)

    def _extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> None:
        path = self.root / name
        if os.path.lexists(path) and not (member.isdir() and path.is_dir()):
            _delete(path)  # a lower layer's file: replaced, never written through
        if member.issym() or (os.path.lexists(path) and not member.isdir()):
            self.inside.clear()  # a symlink may now stand where a directory was
        if not _AS_ROOT and member.isdir():
            member.mode |= 0o700  # so that later members and layers can write into it
        member.mode &= 0o1777  # no setuid or setgid bits (ch-run forbids them anyway)
        member.name = name
        if member.islnk():
            member.linkname = member.linkname.lstrip("/")
        tar.extract(member, str(self.root), numeric_owner=True, **_TRUSTED)
        self.fresh.add(name)


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


# _checked and _extract do what the stdlib's "tar" filter would, with one realpath per
# directory instead of two per member; its "data" filter, the default from Python 3.14,
# would refuse the absolute symlinks every rootfs has.
_TRUSTED: Dict[str, Any] = {"filter": "fully_trusted"} if hasattr(tarfile, "tar_filter") else {}
_BUFSIZE = 1 << 20
