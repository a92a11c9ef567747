"""Exact conversion of gymnasium spaces to plain data (dicts, lists, numpy arrays) and back.

The encoded form holds only types the wire codec carries natively, never pickles or reprs, so a
space described by an env on one gymnasium version is rebuilt faithfully on another (0.28 to 1.x).
Seeds and RNG state are not transported.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Dict, List

import gymnasium
import numpy as np
from gymnasium import spaces

from ..errors import ProtocolError, UnsupportedSpaceError

_OneOf = getattr(spaces, "OneOf", None)  # gymnasium >= 1.0 only

_DECODERS: Dict[str, Callable[[Dict[str, Any]], gymnasium.Space]] = {}


def _supported() -> str:
    return ", ".join(_DECODERS)


def _call(cls: type, *args: Any, **optional: Any) -> Any:
    """Build ``cls``, passing only the non-None keywords; None means "the default".

    A non-default keyword that the installed (older) gymnasium does not accept raises rather than
    being dropped, so a space is never silently rebuilt as a different one.
    """
    params = inspect.signature(cls).parameters
    missing = [k for k, v in optional.items() if v is not None and k not in params]
    if missing:
        raise UnsupportedSpaceError(
            f"gymnasium {gymnasium.__version__} cannot build {cls.__name__} with {missing}"
        )
    return cls(*args, **{k: v for k, v in optional.items() if v is not None})


# ----------------------------------------------------------------------------- encoding


@functools.singledispatch
def encode_space(space: gymnasium.Space) -> dict:
    """Convert a gymnasium space to plain data that ``decode_space`` turns back into it.

    Args:
        space: Any of the supported gymnasium spaces, arbitrarily nested.

    Returns:
        A dict with a ``"type"`` key and the space's parameters.

    Raises:
        UnsupportedSpaceError: ``space`` is not an instance of a supported space class.
    """
    cls = type(space)
    raise UnsupportedSpaceError(
        f"cannot encode space of type {cls.__module__}.{cls.__qualname__}; "
        f"supported types: {_supported()}"
    )


@encode_space.register(spaces.Box)
def _(space: spaces.Box) -> dict:
    return {
        "type": "Box",
        "low": np.array(space.low),
        "high": np.array(space.high),
        "shape": list(space.shape),
        "dtype": space.dtype.str,
        # An int Box given +-inf stores the dtype limits but is marked unbounded there; the
        # stored bounds alone cannot rebuild that, so the flags travel too.
        "bounded_below": np.array(space.bounded_below, dtype=bool),
        "bounded_above": np.array(space.bounded_above, dtype=bool),
    }


@encode_space.register(spaces.Discrete)
def _(space: spaces.Discrete) -> dict:
    return {
        "type": "Discrete",
        "n": int(space.n),
        "start": int(space.start),
        "dtype": space.dtype.str,
    }


@encode_space.register(spaces.MultiDiscrete)
def _(space: spaces.MultiDiscrete) -> dict:
    return {
        "type": "MultiDiscrete",
        "nvec": np.array(space.nvec),
        "start": np.array(getattr(space, "start", np.zeros_like(space.nvec))),  # 0.28: no start
        "dtype": space.dtype.str,
    }


@encode_space.register(spaces.MultiBinary)
def _(space: spaces.MultiBinary) -> dict:
    # An int n and a shape tuple are kept apart: MultiBinary stores n as given.
    n = int(space.n) if isinstance(space.n, (int, np.integer)) else list(space.n)
    return {"type": "MultiBinary", "n": n}


@encode_space.register(spaces.Tuple)
def _(space: spaces.Tuple) -> dict:
    return {"type": "Tuple", "spaces": [encode_space(s) for s in space.spaces]}


@encode_space.register(spaces.Dict)
def _(space: spaces.Dict) -> dict:
    for key in space.spaces:
        if not isinstance(key, (str, int)):
            raise UnsupportedSpaceError(
                f"Dict space key {key!r} of type {type(key).__name__} cannot be sent; "
                "keys must be str or int"
            )
    return {
        "type": "Dict",
        # A list of pairs keeps the order exactly and allows non-str keys.
        "spaces": [[key, encode_space(s)] for key, s in space.spaces.items()],
        "sort_keys": bool(getattr(space, "sort_keys", True)),  # gymnasium > 1.1 only
    }


@encode_space.register(spaces.Text)
def _(space: spaces.Text) -> dict:
    return {
        "type": "Text",
        "min_length": int(space.min_length),
        "max_length": int(space.max_length),
        # A str keeps the characters' order, which sampling uses.
        "charset": "".join(space.character_list),
    }


@encode_space.register(spaces.Sequence)
def _(space: spaces.Sequence) -> dict:
    return {
        "type": "Sequence",
        "space": encode_space(space.feature_space),
        "stack": bool(space.stack),
    }


@encode_space.register(spaces.Graph)
def _(space: spaces.Graph) -> dict:
    edge = None if space.edge_space is None else encode_space(space.edge_space)
    return {"type": "Graph", "node_space": encode_space(space.node_space), "edge_space": edge}


if _OneOf is not None:

    @encode_space.register(_OneOf)
    def _(space: Any) -> dict:
        return {"type": "OneOf", "spaces": [encode_space(s) for s in space.spaces]}


# ----------------------------------------------------------------------------- decoding


def decode_space(data: dict) -> gymnasium.Space:
    """Rebuild the gymnasium space that ``encode_space`` described.

    Args:
        data: The dict produced by ``encode_space`` (possibly after a trip over the wire).

    Returns:
        A new space of the same class and parameters (unseeded).

    Raises:
        ProtocolError: ``data`` is malformed: not a dict, unknown ``"type"``, missing keys or
            invalid parameters.
        UnsupportedSpaceError: The installed gymnasium cannot represent the space.
    """
    if not isinstance(data, dict):
        raise ProtocolError(f"space data must be a dict, got {type(data).__name__}: {data!r:.200}")
    type_name = data.get("type")
    decoder = _DECODERS.get(type_name) if isinstance(type_name, str) else None
    if decoder is None:
        raise ProtocolError(
            f"unknown space type {type_name!r}; gymnasium {gymnasium.__version__} here supports: "
            f"{_supported()}"
        )
    try:
        return decoder(data)
    except KeyError as exc:
        raise ProtocolError(f"{type_name} space data is missing key {exc.args[0]!r}") from exc
    except (TypeError, ValueError, AssertionError) as exc:  # older gymnasium uses asserts
        raise ProtocolError(f"invalid {type_name} space data: {exc}") from exc


def _decoder(name: str) -> Callable:
    def register(func: Callable[[Dict[str, Any]], gymnasium.Space]) -> Callable:
        _DECODERS[name] = func
        return func

    return register


def _flags(data: Dict[str, Any], key: str, shape: tuple) -> np.ndarray:
    flags = np.array(data[key], dtype=bool)
    if flags.shape != shape:
        raise ValueError(f"{key} has shape {flags.shape}, expected {shape}")
    return flags


def _spaces(items: List[Any]) -> List[gymnasium.Space]:
    return [decode_space(item) for item in items]


@_decoder("Box")
def _decode_box(data: Dict[str, Any]) -> spaces.Box:
    shape = tuple(int(d) for d in data["shape"])
    dtype = np.dtype(data["dtype"])
    # Copies: the constructor may write into its inputs and wire arrays may be read-only.
    box = spaces.Box(np.array(data["low"]), np.array(data["high"]), shape=shape, dtype=dtype)
    box.bounded_below = _flags(data, "bounded_below", shape)
    box.bounded_above = _flags(data, "bounded_above", shape)
    return box


@_decoder("Discrete")
def _decode_discrete(data: Dict[str, Any]) -> spaces.Discrete:
    dtype = np.dtype(data["dtype"])
    # Up to gymnasium 1.1 Discrete has no dtype keyword and is always int64.
    dtype_kw = None if dtype == np.dtype(np.int64) else dtype
    return _call(spaces.Discrete, int(data["n"]), start=int(data["start"]), dtype=dtype_kw)


@_decoder("MultiDiscrete")
def _decode_multi_discrete(data: Dict[str, Any]) -> spaces.MultiDiscrete:
    start = np.array(data["start"])
    start_kw = start if start.any() else None  # gymnasium 0.28 has no start keyword
    return _call(
        spaces.MultiDiscrete, np.array(data["nvec"]), dtype=np.dtype(data["dtype"]), start=start_kw
    )


@_decoder("MultiBinary")
def _decode_multi_binary(data: Dict[str, Any]) -> spaces.MultiBinary:
    n = data["n"]
    return spaces.MultiBinary(tuple(int(d) for d in n) if isinstance(n, (list, tuple)) else int(n))


@_decoder("Tuple")
def _decode_tuple(data: Dict[str, Any]) -> spaces.Tuple:
    return spaces.Tuple(_spaces(data["spaces"]))


@_decoder("Dict")
def _decode_dict(data: Dict[str, Any]) -> spaces.Dict:
    items = [(key, decode_space(item)) for key, item in data["spaces"]]
    # A list of pairs is never re-sorted, so sort_keys only matters as a stored attribute (> 1.1).
    if "sort_keys" in inspect.signature(spaces.Dict).parameters:
        return spaces.Dict(items, sort_keys=bool(data["sort_keys"]))
    return spaces.Dict(items)


@_decoder("Text")
def _decode_text(data: Dict[str, Any]) -> spaces.Text:
    return spaces.Text(
        int(data["max_length"]), min_length=int(data["min_length"]), charset=data["charset"]
    )


@_decoder("Sequence")
def _decode_sequence(data: Dict[str, Any]) -> spaces.Sequence:
    return spaces.Sequence(decode_space(data["space"]), stack=bool(data["stack"]))


@_decoder("Graph")
def _decode_graph(data: Dict[str, Any]) -> spaces.Graph:
    edge = data["edge_space"]
    return spaces.Graph(
        decode_space(data["node_space"]), None if edge is None else decode_space(edge)
    )


if _OneOf is not None:

    @_decoder("OneOf")
    def _decode_one_of(data: Dict[str, Any]) -> Any:
        return _OneOf(_spaces(data["spaces"]))
