"""Encoding of nested Python/numpy values into frames, keeping exact types.

msgpack carries the structure; numpy array data travels out of band, appended
raw after the structure (like pickle protocol 5 buffers), so a large
observation is never copied in user space and decodes as a writable view of
the received frame. Tuples, numpy scalars and arrays, and gymnasium's
GraphInstance values are msgpack extension types (codes in `protocol`);
arrays and scalars are described by dtype string and shape, which every
numpy version reads, so an agent on numpy 2 talks to an env on numpy 1.
Anything else (rare objects in `info` dicts) is refused with an error naming
where it sits and its type: unpickling runs code the sender chooses, so a
token holder (or a compromised env runtime) could run code in its peer. Peers
that trust each other can opt in to pickle on both sides (`allow_pickle`).

This sits on the step path of every env, so the common types are encoded with
`struct` and a table keyed by exact type rather than nested msgpack calls.
"""

from __future__ import annotations

import math
import pickle
import struct
from functools import lru_cache
from typing import Any, Callable, Dict, List, Tuple

import msgpack
import numpy as np
from gymnasium.spaces import GraphInstance

from ..errors import EncodeError, ProtocolError
from . import protocol, sharedmem

_ARRAY, _SCALAR, _TUPLE, _PICKLE, _GRAPH = (
    protocol.EXT_ARRAY,
    protocol.EXT_SCALAR,
    protocol.EXT_TUPLE,
    protocol.EXT_PICKLE,
    protocol.EXT_GRAPH,
)
ALIGN = protocol.ALIGN  # keeps array views aligned for any dtype
_U32 = struct.Struct("<I")
_SHARED = protocol.SHARED_FLAG  # in the structure length: array data is in shared memory
_ARRAY_TAIL = struct.Struct(protocol.ARRAY_TAIL_FORMAT)  # data offset, number of dimensions
# msgpack preallocates 256 KiB per Packer; nested packing then costs ~20 us a
# message in page faults. A small start size grows on demand.
_BUF_SIZE = 1024


def padded(n: int) -> int:
    """n rounded up to a multiple of ALIGN."""
    return -(-n // ALIGN) * ALIGN


def array_bytes(array: np.ndarray) -> memoryview:
    """The bytes of array in C order, without a copy when it is contiguous."""
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


@lru_cache(maxsize=256)
def _dtype(text: bytes) -> np.dtype:
    dtype = np.dtype(text.decode())
    if dtype.hasobject:  # object arrays only ever travel pickled
        raise ProtocolError(f"array of dtype {dtype} in a frame")
    return dtype


PICKLE_HINT = (
    "Convert it to a plain value (None, bool, int, float, str, bytes, list, tuple, dict, "
    "numpy array or scalar), or, between peers that trust each other only, allow pickle on "
    "both sides (allow_pickle=True or PORTAL_ENV_ALLOW_PICKLE=1): unpickling runs code the "
    "sender chooses."
)


@lru_cache(maxsize=256)
def _dtype_tag(dtype: np.dtype) -> bytes:
    text = dtype.str.encode()
    return bytes([len(text)]) + text


@lru_cache(maxsize=64)
def _shape_format(ndim: int) -> struct.Struct:
    return struct.Struct(f"<{ndim}Q")


class _Unencodable(EncodeError):
    """A value of a type the structured codec does not carry (pickle not allowed)."""

    def __init__(self, value: Any) -> None:
        super().__init__(type(value).__qualname__)
        self.value = value


class Encoder:
    """Encodes values into frames; one per connection (not thread-safe).

    Args:
        allow_pickle: Pickle values the structured codec cannot carry (trusted peers only);
            else such a value raises EncodeError naming where it is and its type.
    """

    def __init__(self, allow_pickle: bool = False) -> None:
        self.allow_pickle = allow_pickle
        self.buffers: List[memoryview] = []
        self.size = 0
        self._packer = msgpack.Packer(default=self._default, strict_types=True, buf_size=_BUF_SIZE)

    def encode(self, obj: Any, shm: Any = None) -> Tuple[List[Any], int]:
        """Encode obj as a list of buffers to send back to back, and their total size.

        Layout: u32 structure length, msgpack structure, padding to 16, then each
        array's bytes padded to 16 (array offsets count from the data start).
        With shm (a writable buffer the peer shares), large array data is
        written there instead, and the frame carries the structure only.
        """
        self.buffers, self.size = [], 0
        try:
            meta = self._packer.pack(obj)
        except _Unencodable as exc:
            self._packer.reset()
            raise EncodeError(
                f"cannot send a value of type {type(exc.value).__qualname__} at "
                f"{locate(obj, exc.value) or '(the value itself or inside it)'}. {PICKLE_HINT}"
            ) from None
        except (OverflowError, ValueError) as exc:
            self._packer.reset()
            raise EncodeError(f"cannot encode {type(obj).__qualname__}: {exc}") from exc
        except BaseException:
            self._packer.reset()
            raise
        head_len = padded(_U32.size + len(meta))
        if shm is not None and sharedmem.MIN_BYTES <= self.size <= len(shm):
            view, offset = memoryview(shm), 0
            for buf in self.buffers:
                view[offset : offset + buf.nbytes] = buf
                offset += padded(buf.nbytes)
            return [_U32.pack(len(meta) | _SHARED) + meta], _U32.size + len(meta)
        head = _U32.pack(len(meta)) + meta + bytes(head_len - _U32.size - len(meta))
        parts: List[Any] = [head]
        for buf in self.buffers:
            parts.append(buf)
            pad = padded(buf.nbytes) - buf.nbytes
            if pad:
                parts.append(bytes(pad))
        return parts, head_len + self.size

    def _array(self, obj: np.ndarray) -> msgpack.ExtType:
        if obj.dtype.hasobject or obj.dtype.fields is not None:
            return self._pickled(obj)
        data = array_bytes(obj)
        shape = obj.shape
        header = (
            _dtype_tag(obj.dtype)
            + _ARRAY_TAIL.pack(self.size, len(shape))
            + _shape_format(len(shape)).pack(*shape)
        )
        self.buffers.append(data)
        self.size += padded(data.nbytes)
        return msgpack.ExtType(_ARRAY, header)

    def _nested(self, code: int, items: list) -> msgpack.ExtType:
        # The shared packer is busy with the enclosing value: pack nested tuples apart.
        nested = msgpack.packb(items, default=self._default, strict_types=True, buf_size=_BUF_SIZE)
        return msgpack.ExtType(code, nested)

    def _default(self, obj: Any) -> msgpack.ExtType:
        kind = type(obj)
        if kind is np.ndarray:
            return self._array(obj)
        if kind is tuple:
            return self._nested(_TUPLE, list(obj))
        if kind is GraphInstance:  # a NamedTuple: kept apart from a plain tuple
            return self._nested(_GRAPH, [obj.nodes, obj.edges, obj.edge_links])
        if isinstance(obj, np.generic) and not isinstance(obj, np.object_):
            return msgpack.ExtType(_SCALAR, _dtype_tag(obj.dtype) + obj.tobytes())
        if isinstance(obj, np.ndarray):  # a subclass: send the plain array
            return self._array(np.asarray(obj))
        return self._pickled(obj)

    def _pickled(self, obj: Any) -> msgpack.ExtType:
        if not self.allow_pickle:
            raise _Unencodable(obj)
        try:
            return msgpack.ExtType(_PICKLE, pickle.dumps(obj, protocol=4))
        except Exception as exc:
            raise EncodeError(
                f"cannot send a value of type {type(obj).__qualname__}: {exc}"
            ) from exc


def locate(container: Any, target: Any) -> str:
    """Where target sits inside container, as an index path like `[1][4]['key']` ('' if absent).

    Only called on the error path, so a plain recursive search is fine.
    """
    if container is target:
        return ""
    if type(container) is dict:
        items: Any = container.items()
    elif type(container) in (list, tuple):
        items = enumerate(container)
    else:
        return ""
    for key, value in items:
        if value is target:
            return f"[{key!r}]"
        inner = locate(value, target)
        if inner:
            return f"[{key!r}]{inner}"
    return ""


class Decoder:
    """Decodes frames made by Encoder; one per connection (not thread-safe).

    A class rather than closures: a closure cycle would keep each (possibly
    huge) frame alive until the garbage collector runs.
    """

    def __init__(self, allow_pickle: bool = False) -> None:
        self._view = memoryview(b"")
        self._data_start = 0
        self._copy = False  # arrays in shared memory are copied out: the peer reuses it
        self._decoders: Dict[int, Callable[[bytes], Any]] = {
            _ARRAY: self._array,
            _SCALAR: _scalar,
            _TUPLE: lambda data: tuple(self._unpack(data)),
            _GRAPH: self._graph,
            _PICKLE: pickle.loads if allow_pickle else _refuse_pickle,
        }

    def decode(self, frame: bytearray, shm: Any = None) -> Any:
        """Decode one frame; arrays are writable views into frame (or copies from shm)."""
        view = memoryview(frame)
        if len(view) < _U32.size:
            raise ProtocolError(f"frame of {len(view)} bytes is too short")
        (meta_len,) = _U32.unpack_from(view)
        shared, meta_len = bool(meta_len & _SHARED), meta_len & ~_SHARED
        if _U32.size + meta_len > len(view):
            raise ProtocolError(f"frame structure length {meta_len} exceeds the frame")
        if shared and shm is None:
            raise ProtocolError("frame refers to shared memory that was never agreed")
        self._view = memoryview(shm) if shared else view
        self._data_start = 0 if shared else padded(_U32.size + meta_len)
        self._copy = shared
        try:
            return self._unpack(view[_U32.size : _U32.size + meta_len])
        except ProtocolError:
            raise
        except Exception as exc:  # msgpack and numpy raise many unrelated types on garbage
            raise ProtocolError(f"malformed frame: {type(exc).__name__}: {exc}") from exc
        finally:
            self._view = memoryview(b"")  # do not keep the frame alive

    def _ext_hook(self, code: int, data: bytes) -> Any:
        decoder = self._decoders.get(code)
        if decoder is None:
            raise ProtocolError(f"unknown extension type {code} in frame")
        return decoder(data)

    def _array(self, data: bytes) -> np.ndarray:
        dtype = _dtype(data[1 : 1 + data[0]])
        offset, ndim = _ARRAY_TAIL.unpack_from(data, 1 + data[0])
        shape = _shape_format(ndim).unpack_from(data, 1 + data[0] + _ARRAY_TAIL.size)
        count = math.prod(shape)  # np.prod costs ~4 us on a short tuple
        start = self._data_start + offset
        if start + count * dtype.itemsize > len(self._view):
            raise ProtocolError("array data lies outside the frame")
        array = np.frombuffer(self._view, dtype, count, start).reshape(shape)
        return array.copy() if self._copy else array

    def _graph(self, data: bytes) -> GraphInstance:
        parts = self._unpack(data)
        if type(parts) is not list or len(parts) != 3:
            raise ProtocolError(f"a graph value is [nodes, edges, edge_links], got {parts!r:.80}")
        return GraphInstance(*parts)

    def _unpack(self, data: Any) -> Any:
        return msgpack.unpackb(data, ext_hook=self._ext_hook, raw=False, strict_map_key=False)


def _refuse_pickle(data: bytes) -> Any:
    raise ProtocolError(
        "the peer sent a pickled value, and this side does not accept pickle (unpickling runs "
        "code the sender chooses). If you trust the peer, allow pickle on this side too "
        "(allow_pickle=True or PORTAL_ENV_ALLOW_PICKLE=1); else make the peer send plain values."
    )


def _scalar(data: bytes) -> np.generic:
    return np.frombuffer(data, _dtype(data[1 : 1 + data[0]]), 1, 1 + data[0])[0]


def encode(obj: Any, shm: Any = None) -> Tuple[List[Any], int]:
    """Encode obj with a fresh Encoder (convenience for tests and one-off use)."""
    return Encoder().encode(obj, shm)


def decode(frame: bytearray, shm: Any = None) -> Any:
    """Decode frame with a fresh Decoder (convenience for tests and one-off use)."""
    return Decoder().decode(frame, shm)
