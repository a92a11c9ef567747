"""A batch of observations in memory that a server and its worker processes share.

Workers write each instance's observation straight into its row, so a step's
batch is assembled once, in place, with no copy through a pipe. The memory is
an anonymous file (memfd) or, where there is none, a temporary file unlinked
as soon as it is made: nothing is left in /dev/shm whoever dies first. It is
allocated when it is sized (see sharedmem.reserve): where it does not fit, the
workers send observations through their pipes instead.
"""

from __future__ import annotations

import logging
import mmap
import os
import tempfile
from typing import Any, Dict, Optional, Tuple

import numpy as np
from gymnasium import spaces as gs

logger = logging.getLogger(__name__)

# Spaces whose values are one fixed-size array each, a batch of them one array.
FIXED_SPACES = (gs.Box, gs.Discrete, gs.MultiBinary, gs.MultiDiscrete)
_ALIGN = 64  # a cache line: rows of two leaves never share one


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def batch_bytes(space: Any, n: int) -> Optional[int]:
    """Bytes a batch of n values of space takes, or None if its values vary in size."""
    if isinstance(space, FIXED_SPACES):
        if space.dtype is None or space.dtype.hasobject:
            return None
        return _aligned(n * int(np.prod(space.shape, dtype=np.int64)) * space.dtype.itemsize)
    if isinstance(space, (gs.Dict, gs.Tuple)):
        parts = space.spaces.values() if isinstance(space, gs.Dict) else space.spaces
        sizes = [batch_bytes(part, n) for part in parts]
        return None if None in sizes else sum(sizes)  # type: ignore[arg-type]
    return None  # Text, Sequence, Graph, OneOf, custom spaces


def anonymous_file(size: int) -> int:
    """A file descriptor of size bytes that has no name anyone could leave behind."""
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        fd = memfd("portal-env-batch", os.MFD_CLOEXEC)
    else:  # macOS and old kernels: a named file, unlinked at once
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix="portal-env-batch-", dir=directory)
        os.unlink(path)
    os.ftruncate(fd, max(size, 1))
    return fd


def reserve(fd: int, size: int) -> bool:
    """Size anonymous_file fd to size bytes, allocated now; False (logged) if the memory is
    not there, and then no batch is shared."""
    from ..sharedmem import reserve as allocate

    try:
        allocate(fd, size)
    except OSError as exc:
        logger.warning("no shared batch of %d bytes (%s); workers send observations", size, exc)
        return False
    return True


class SharedBatch:
    """Batched arrays of a fixed-size space, laid over one shared mapping.

    Attributes:
        arrays: The batch, shaped like gymnasium's create_empty_array(space, n).
        size: Bytes of the mapping.
    """

    def __init__(self, space: Any, n: int, fd: int) -> None:
        size = batch_bytes(space, n)
        if size is None:
            raise ValueError(f"{space} has values of varying size: no fixed batch layout")
        self.space, self.n, self.size = space, n, size
        self._map = mmap.mmap(fd, max(size, 1))
        self.arrays, end = self._build(space, 0)

    def _build(self, space: Any, offset: int) -> Tuple[Any, int]:
        if isinstance(space, gs.Dict):
            out: Dict[str, Any] = {}
            for key, part in space.spaces.items():
                out[key], offset = self._build(part, offset)
            return out, offset
        if isinstance(space, gs.Tuple):
            items = []
            for part in space.spaces:
                item, offset = self._build(part, offset)
                items.append(item)
            return tuple(items), offset
        shape = (self.n,) + tuple(space.shape)
        count = int(np.prod(shape, dtype=np.int64))
        array = np.frombuffer(self._map, space.dtype, count, offset).reshape(shape)
        return array, offset + _aligned(count * space.dtype.itemsize)

    def rows(self, lo: int, hi: int) -> Any:
        """Views of rows lo..hi of every leaf array, in the batch's structure."""
        return slice_tree(self.arrays, lo, hi)

    def close(self) -> None:
        self.arrays = None
        try:
            self._map.close()
        except BufferError:  # a reply still holds a view: the mapping goes with it
            pass


def slice_tree(tree: Any, lo: int, hi: int) -> Any:
    """Rows lo:hi of every array in a tree of dicts and tuples (views, not copies)."""
    if isinstance(tree, dict):
        return {key: slice_tree(value, lo, hi) for key, value in tree.items()}
    if isinstance(tree, tuple):
        return tuple(slice_tree(value, lo, hi) for value in tree)
    return tree[lo:hi]
