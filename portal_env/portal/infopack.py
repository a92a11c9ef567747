"""Step infos whose keys and value types repeat, packed as one struct.

MuJoCo's envs return the same few floats under the same keys every step
(``x_position``, ``reward_run``, ...). Sending them through the general codec
costs a msgpack pass and an extension type per value on each side. Instead,
both sides learn a schema (keys, exact value types) from the last info that
went through the codec, and while infos keep that schema they travel as the
bytes of one ``struct`` format. The moment keys or types change, that step's
info goes through the codec again and both sides learn the new schema from it;
the codec keeps types exact, so sender and receiver always learn the same one.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

# Exact type -> (struct code, rebuild on the receiving side).
_CODES: Dict[type, Tuple[str, Callable[[Any], Any]]] = {
    float: ("d", float),
    int: ("q", int),
    bool: ("?", bool),
    np.float64: ("d", np.float64),
    np.float32: ("f", np.float32),
    np.int64: ("q", np.int64),
    np.int32: ("i", np.int32),
    np.int16: ("h", np.int16),
    np.int8: ("b", np.int8),
    np.uint8: ("B", np.uint8),
    np.bool_: ("?", np.bool_),
}
Schema = Tuple[Tuple[Tuple[str, type], ...], ...]  # per info dict: ((key, type), ...)


def _dict_schema(info: Any) -> Optional[Tuple[Tuple[str, type], ...]]:
    if type(info) is not dict:
        return None
    fields = []
    for key, value in info.items():
        kind = type(value)
        if type(key) is not str or kind not in _CODES:
            return None
        fields.append((key, kind))
    return tuple(fields)


def schema_of(infos: Any, many: bool) -> Optional[Schema]:
    """The schema of one info dict (many=False) or of a list of them; None if not packable."""
    if not many:
        one = _dict_schema(infos)
        return None if one is None else (one,)
    if type(infos) is not list:
        return None
    out = []
    for info in infos:
        one = _dict_schema(info)
        if one is None:
            return None
        out.append(one)
    return tuple(out)


class InfoPacker:
    """One side's view of the schema agreed for a connection's infos."""

    def __init__(self, many: bool) -> None:
        self.many = many  # a vector env's list of infos, else one info dict
        self.schema: Optional[Schema] = None
        self._struct: Optional[struct.Struct] = None
        self._makers: List[Callable[[Any], Any]] = []
        self._keys: List[Tuple[str, ...]] = []  # each info dict's keys, in order

    def learn(self, infos: Any) -> None:
        """Adopt the schema of infos that just went (or came) through the codec."""
        schema = schema_of(infos, self.many)
        self.schema, self._struct = schema, None
        if not schema or not any(schema):
            return
        codes = [_CODES[kind] for fields in schema for _, kind in fields]
        self._struct = struct.Struct("<" + "".join(code for code, _ in codes))
        self._makers = [make for _, make in codes]
        self._keys = [tuple(key for key, _ in fields) for fields in schema]

    def pack(self, infos: Any) -> Optional[bytes]:
        """The values of infos as bytes if they have the learnt schema, else None."""
        if self._struct is None or schema_of(infos, self.many) != self.schema:
            return None
        dicts = infos if self.many else [infos]
        try:
            return self._struct.pack(*[v for info in dicts for v in info.values()])
        except (struct.error, OverflowError):  # e.g. an int beyond 64 bits: the codec keeps it
            return None

    @property
    def size(self) -> int:
        return self._struct.size if self._struct is not None else 0

    def unpack(self, data: Any) -> Any:
        """Infos of the learnt schema back from the bytes pack() made."""
        raw = self._struct.unpack_from(data)  # type: ignore[union-attr]
        values = [make(v) for make, v in zip(self._makers, raw)]
        if not self.many:
            return dict(zip(self._keys[0], values))
        infos, start = [], 0
        for keys in self._keys:
            infos.append(dict(zip(keys, values[start : start + len(keys)])))
            start += len(keys)
        return infos
