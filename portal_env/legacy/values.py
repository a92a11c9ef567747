"""The small server's side of the general codec (`portal_env.portal.codec`'s frame layout).

Python 2.7 and 3.5+, numpy and msgpack (0.5.6 up; 0.6.2 is the last for Python 2.7).
The same layout, so the agent's decoder reads these frames unchanged: u32 structure
length, msgpack structure, padding to ALIGN, then each array's bytes padded to ALIGN;
tuples, numpy scalars and arrays and graph values are extension types. Values are
walked once into what msgpack packs natively, which also turns the old runtime's
types into the agent's: an OrderedDict into a dict (order kept) and, on Python 2, a
text `str` into text (else the agent would see bytes keys such as b"TimeLimit.truncated").
Pickle is never sent nor accepted here.
"""

import struct
import sys

import msgpack
import numpy as np

from ..portal import protocol

PY2 = sys.version_info[0] == 2
TEXT = unicode if PY2 else str  # noqa: F821 (Python 2's name)
NATIVE_TEXT = str
_U32 = struct.Struct("<I")
_ARRAY_TAIL = struct.Struct(protocol.ARRAY_TAIL_FORMAT)
# Plain values msgpack packs as they are (int subclasses such as bool are plain too).
_PLAIN = (type(None), bool, int, float, TEXT) + ((long,) if PY2 else (bytes,))  # noqa: F821 # novm
_UNPACK_OPTIONS = {"raw": False}
if msgpack.version >= (1, 0, 0):
    _UNPACK_OPTIONS["strict_map_key"] = False  # int keys, as the agent's codec allows


class Unencodable(Exception):
    """A value of a type this codec does not carry (the small server never pickles)."""

    def __init__(self, value):
        Exception.__init__(
            self,
            "cannot send a value of type %s: the small server of an old runtime sends None, "
            "bool, int, float, str, bytes, list, tuple, dict and numpy arrays and scalars "
            "only (it never pickles). Convert it to one of those." % type(value).__name__,
        )


class MalformedFrame(Exception):
    """A frame that does not follow the protocol: the connection is closed."""


def padded(n):
    """n rounded up to a multiple of protocol.ALIGN."""
    return -(-n // protocol.ALIGN) * protocol.ALIGN


_TAGS = {}


def _dtype_tag(dtype):
    tag = _TAGS.get(dtype)
    if tag is None:
        text = dtype.str.encode("ascii") if not PY2 else dtype.str
        tag = _TAGS[dtype] = struct.pack("B", len(text)) + text
    return tag


# msgpack >= 1.1 preallocates 256 KiB per Packer unless told (buf_size, new in 1.1): small
# ones, reused; older ones (all that run on Python < 3.8) cannot be told.
_PACKER_SIZE = {"buf_size": 1024} if msgpack.version >= (1, 1, 0) else {}


def _packer(default=None):
    options = dict(_PACKER_SIZE, use_bin_type=True)
    if default is not None:
        options.update(default=default, strict_types=True)
    return msgpack.Packer(**options)


class Encoder(object):
    """Encodes one value into a frame payload (a list of byte strings and their size)."""

    def __init__(self):
        self._buffers = []
        self._size = 0
        if PY2:  # every value walked first (text str), then packed
            self._packer, self._prepare = _packer(), self.walk
        else:  # msgpack walks, and hands us only what it does not pack itself (2x faster)
            self._packer, self._prepare = _packer(self._default), _same
        self._walkers = {
            dict: self._dict,
            list: self._list,
            tuple: self._tuple,
            np.ndarray: self._array,
        }

    def encode(self, value):
        self._buffers, self._size = [], 0
        try:
            meta = self._packer.pack(self._prepare(value))
        except BaseException:
            self._packer.reset()  # drop what the failed value left in the packer's buffer
            raise
        finally:
            buffers, self._buffers = self._buffers, []
        head_len = padded(_U32.size + len(meta))
        parts = [_U32.pack(len(meta)), meta, b"\0" * (head_len - _U32.size - len(meta))]
        for data in buffers:
            parts.append(data)
            parts.append(b"\0" * (padded(len(data)) - len(data)))
        return parts, head_len + self._size

    def walk(self, value):
        """value as msgpack-native types and extension types."""
        kind = type(value)
        walker = self._walkers.get(kind)
        if walker is not None:
            return walker(value)
        if kind in _PLAIN:
            return value
        if PY2 and kind is str:
            return _text(value)
        if isinstance(value, np.ndarray):
            return self._array(value)
        if isinstance(value, np.generic) and value.dtype.kind != "O":
            return msgpack.ExtType(protocol.EXT_SCALAR, _dtype_tag(value.dtype) + value.tobytes())
        if isinstance(value, dict):  # OrderedDict and other mappings: a dict, order kept
            return self._dict(value)
        if isinstance(value, tuple):
            if kind.__name__ == "GraphInstance" and hasattr(value, "edge_links"):
                items = [value.nodes, value.edges, value.edge_links]
                return self._nested(protocol.EXT_GRAPH, items)
            return self._tuple(value)
        if isinstance(value, list):
            return self._list(value)
        raise Unencodable(value)

    def _default(self, value):
        """What msgpack (strict types) does not pack itself: arrays, numpy scalars, tuples
        and graphs, and subclasses of dict and list (Python 3 only)."""
        if isinstance(value, dict):
            return dict(value)
        if isinstance(value, list):
            return list(value)
        return self.walk(value)  # tuples and graphs nest: the packer is busy with their container

    def _dict(self, value):
        return dict((self.walk(k), self.walk(v)) for k, v in value.items())

    def _list(self, value):
        return [self.walk(item) for item in value]

    def _tuple(self, value):
        return self._nested(protocol.EXT_TUPLE, value)

    def _nested(self, code, items):
        if PY2:  # walked first: the one packer is free again when this runs
            return msgpack.ExtType(code, self._packer.pack([self.walk(item) for item in items]))
        return msgpack.ExtType(code, _packer(self._default).pack(list(items)))

    def _array(self, value):
        # (not ascontiguousarray, which makes a 0-d array 1-d on older numpy)
        array = value if value.flags.c_contiguous else value.copy(order="C")
        if array.dtype.hasobject or array.dtype.fields is not None:
            raise Unencodable(value)
        shape = array.shape
        header = (
            _dtype_tag(array.dtype)
            + _ARRAY_TAIL.pack(self._size, len(shape))
            + struct.pack("<%dQ" % len(shape), *shape)
        )
        data = array.tobytes()
        self._buffers.append(data)
        self._size += padded(len(data))
        return msgpack.ExtType(protocol.EXT_ARRAY, header)


def _same(value):
    return value


def _text(value):
    """A Python 2 `str` as text if it is UTF-8 (names, keys, ids), else as bytes."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return bytearray(value)  # packed as msgpack bin: the agent sees bytes


class Decoder(object):
    """Decodes a general frame's payload (a bytearray); arrays are copies."""

    def __init__(self):
        self._frame = b""
        self._data_start = 0
        self._ext = {
            protocol.EXT_ARRAY: self._array,
            protocol.EXT_SCALAR: _scalar,
            protocol.EXT_TUPLE: lambda data: tuple(self._unpack(data)),
            protocol.EXT_GRAPH: self._graph,
            protocol.EXT_PICKLE: _refuse_pickle,
        }

    def decode(self, frame):
        if len(frame) < _U32.size:
            raise MalformedFrame("frame of %d bytes is too short" % len(frame))
        (meta_len,) = _U32.unpack_from(frame, 0)
        if meta_len & protocol.SHARED_FLAG:
            raise MalformedFrame("frame refers to shared memory, which this server never offers")
        if _U32.size + meta_len > len(frame):
            raise MalformedFrame("frame structure length %d exceeds the frame" % meta_len)
        self._frame, self._data_start = frame, padded(_U32.size + meta_len)
        try:
            return self._unpack(bytes(frame[_U32.size : _U32.size + meta_len]))
        except MalformedFrame:
            raise
        except Exception as exc:  # msgpack and numpy raise many unrelated types on garbage
            raise MalformedFrame("malformed frame: %s: %s" % (type(exc).__name__, exc))
        finally:
            self._frame = b""

    def _unpack(self, data):
        return msgpack.unpackb(data, ext_hook=self._hook, **_UNPACK_OPTIONS)

    def _hook(self, code, data):
        decode = self._ext.get(code)
        if decode is None:
            raise MalformedFrame("unknown extension type %d in frame" % code)
        return decode(data)

    def _array(self, data):
        dtype, at = _dtype(data)
        offset, ndim = _ARRAY_TAIL.unpack_from(data, at)
        shape = struct.unpack_from("<%dQ" % ndim, data, at + _ARRAY_TAIL.size)
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        start = self._data_start + offset
        if start + count * dtype.itemsize > len(self._frame):
            raise MalformedFrame("array data lies outside the frame")
        return np.frombuffer(self._frame, dtype, count, start).reshape(shape).copy()

    def _graph(self, data):
        parts = self._unpack(data)
        if type(parts) is not list or len(parts) != 3:
            raise MalformedFrame("a graph value is [nodes, edges, edge_links]")
        return graph_instance(*parts)


def _dtype(data):
    size = bytearray(data[:1])[0]
    text = bytes(data[1 : 1 + size])
    dtype = np.dtype(text if PY2 else text.decode("ascii"))
    if dtype.hasobject:
        raise MalformedFrame("array of dtype %s in a frame" % dtype)
    return dtype, 1 + size


def _scalar(data):
    dtype, at = _dtype(data)
    return np.frombuffer(bytes(data), dtype, 1, at)[0]


def _refuse_pickle(data):
    raise MalformedFrame(
        "the agent sent a pickled value; the small server of an old runtime never unpickles "
        "(unpickling runs code the sender chooses): send plain values"
    )


def graph_instance(nodes, edges, edge_links):
    """A GraphInstance of the runtime's gym (0.25 up) or gymnasium, else a plain tuple."""
    for name in ("gymnasium.spaces", "gym.spaces"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "GraphInstance"):
            return module.GraphInstance(nodes, edges, edge_links)
    return (nodes, edges, edge_links)


def native(value):
    """Text as the runtime's native `str` (on Python 2: names and ids for old libraries),
    recursively through lists, tuples and dicts."""
    if not PY2:
        return value
    kind = type(value)
    if kind is TEXT:
        try:
            return value.encode("ascii")
        except UnicodeEncodeError:
            return value
    if kind is list:
        return [native(item) for item in value]
    if kind is tuple:
        return tuple(native(item) for item in value)
    if kind is dict:
        return dict((native(k), native(v)) for k, v in value.items())
    return value
