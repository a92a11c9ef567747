"""Shared memory for large observations between an agent and a server on one host.

Through a socket a 100 KB Atari frame costs ~50 us (kernel buffers, two
copies and their bookkeeping); through a shared mapping it costs two memcpys.
The server creates the file, in a private (0700) directory it made itself, and
maps it; the agent checks the file it is told about (a private regular file of
its own user in such a directory, on the shared-memory file system) and maps
it; then the server removes file and directory: the mappings stay valid and
nothing is left behind (a server killed in between leaves one file). The
server never maps a file a peer names. An agent that cannot map it (another
host, a container without the host's /dev/shm) declines, and observations go
through the socket.

The file's memory is reserved when it is made: /dev/shm is a size-limited tmpfs (64 MB
in a Docker container by default), and a mapping of a sparse file that outgrows it
kills whoever touches the missing page (SIGBUS). When it does not fit, no mapping is
offered and the socket carries observations.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import stat
import tempfile
import threading
from typing import Optional, Tuple

# Below this, a socket is as fast and needs no setup.
MIN_BYTES = 1 << 16
_PREFIX = "portal-env-"

# One reservation at a time in a process: two that interleave on a nearly full tmpfs can
# each take part of the room and then both fail, where one after the other, one fits.
_RESERVING = threading.Lock()


def _directory() -> Optional[str]:
    return "/dev/shm" if os.path.isdir("/dev/shm") else None


def create(size: int) -> Tuple[str, mmap.mmap]:
    """A new mapping of size bytes in a new private directory: (path, mmap).

    The caller removes both with `remove(path)` once the peer has mapped it (or not).
    """
    directory = tempfile.mkdtemp(prefix=_PREFIX + "srv-", dir=_directory())  # 0700
    try:
        fd, path = tempfile.mkstemp(prefix=_PREFIX, dir=directory)  # 0600
        try:
            reserve(fd, size)
            return path, mmap.mmap(fd, size)
        finally:
            os.close(fd)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def reserve(fd: int, size: int) -> None:
    """Size the file fd to size bytes, all of them allocated now: an OSError (ENOSPC) if its
    file system cannot hold them, rather than SIGBUS at a later write into the mapping."""
    os.ftruncate(fd, size)
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is not None:  # not on macOS, whose /dev/shm is no tmpfs anyway
        try:
            with _RESERVING:
                allocate(fd, 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise


def remove(path: str) -> None:
    """Remove a file made by create() and its directory (mappings stay valid)."""
    os.unlink(path)
    os.rmdir(os.path.dirname(path))


def _private_dir_of_mine(path: str) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    mine = info.st_uid == os.getuid() and not stat.S_IMODE(info.st_mode) & 0o077
    return stat.S_ISDIR(info.st_mode) and mine


def attach(path: str, size: int) -> Optional[mmap.mmap]:
    """Map a server's file if it is where and what a server makes; else None.

    A server (a compromised env runtime) could name any file: only a private
    regular file of this user, with one link, of exactly size bytes, in a private
    portal-env directory directly under the shared-memory directory is mapped.
    """
    root = _directory()
    if root is None or not isinstance(path, str) or not isinstance(size, int):
        return None
    parent = os.path.dirname(path)
    if os.path.dirname(parent) != root or not os.path.basename(parent).startswith(_PREFIX):
        return None
    if not os.path.basename(path).startswith(_PREFIX) or not _private_dir_of_mine(parent):
        return None
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_size != size:
            return None
        if stat.S_IMODE(info.st_mode) & 0o077 or info.st_nlink != 1:
            return None
        if info.st_dev != os.stat(root).st_dev:
            return None
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)
