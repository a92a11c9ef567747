"""Round-trip tests for portal_env.portal.spaces: every gymnasium space, exactly, as plain data."""

from __future__ import annotations

import inspect
from collections import OrderedDict

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces

from portal_env.errors import ProtocolError, UnsupportedSpaceError
from portal_env.portal.spaces import decode_space, encode_space

inf = np.inf
HAS_ONE_OF = hasattr(spaces, "OneOf")
HAS_DISCRETE_DTYPE = "dtype" in inspect.signature(spaces.Discrete).parameters
HAS_MULTI_DISCRETE_START = "start" in inspect.signature(spaces.MultiDiscrete).parameters


def _box_cases():
    mixed_low = np.array([[-inf, -1.0, 0.0], [-2.5, -inf, 3.0]], dtype=np.float32)
    mixed_high = np.array([[inf, 1.0, 5.0], [inf, 0.0, inf]], dtype=np.float32)
    cases = {
        "box-mixed-inf-2d": spaces.Box(mixed_low, mixed_high),
        "box-float64-all-inf": spaces.Box(-inf, inf, shape=(4,), dtype=np.float64),
        "box-float16": spaces.Box(
            np.array([-1, -inf], np.float16), np.array([1, 2], np.float16), dtype=np.float16
        ),
        "box-scalar-shape": spaces.Box(low=-1.5, high=2.5, shape=(), dtype=np.float32),
        "box-3d-uint8": spaces.Box(0, 255, shape=(2, 3, 4), dtype=np.uint8),
        "box-int8-per-element": spaces.Box(
            np.array([-128, -3, 0], np.int8), np.array([127, 3, 1], np.int8), dtype=np.int8
        ),
        # (array bounds with +inf overflow for int64 inside gymnasium 1.4, so int16 here)
        "box-int16-inf-per-element": spaces.Box(
            np.array([-inf, 0.0]), np.array([5.0, inf]), shape=(2,), dtype=np.int16
        ),
        "box-int64-scalar-inf": spaces.Box(-inf, inf, shape=(2,), dtype=np.int64),
        "box-int32": spaces.Box(-7, 9, shape=(3, 1), dtype=np.int32),
        "box-uint16": spaces.Box(0, 1000, shape=(2,), dtype=np.uint16),
        "box-zero-size": spaces.Box(0.0, 1.0, shape=(0, 3)),
    }
    try:  # bool Boxes exist in newer gymnasium only
        cases["box-bool"] = spaces.Box(False, True, shape=(2, 2), dtype=np.bool_)
    except (ValueError, AssertionError, TypeError):
        pass
    return cases


def _cases():
    box = spaces.Box(-1.0, 1.0, shape=(2,))
    cases = dict(_box_cases())
    cases.update(
        {
            "discrete": spaces.Discrete(5),
            "discrete-start-neg": spaces.Discrete(4, start=-3),
            "multidiscrete-1d": spaces.MultiDiscrete([3, 4, 5]),
            "multidiscrete-2d": spaces.MultiDiscrete(np.array([[2, 3], [4, 5]])),
            "multidiscrete-int32": spaces.MultiDiscrete([7, 2], dtype=np.int32),
            "multibinary-int": spaces.MultiBinary(6),
            "multibinary-2d": spaces.MultiBinary((3, 2)),
            "multibinary-list": spaces.MultiBinary([4]),
            "tuple-flat": spaces.Tuple((spaces.Discrete(2), box)),
            "tuple-nested": spaces.Tuple((spaces.Tuple((box, spaces.MultiBinary(2))),)),
            "tuple-empty": spaces.Tuple(()),
            # pairs keep their order on every gymnasium (1.0 sorts even an OrderedDict)
            "dict-unsorted-keys": spaces.Dict(
                [("zebra", spaces.Discrete(2)), ("apple", box), ("mango", spaces.MultiBinary(3))]
            ),
            "dict-ordereddict": spaces.Dict(OrderedDict(y=box, x=spaces.Discrete(2))),
            "dict-sorted-from-plain-dict": spaces.Dict({"b": box, "a": spaces.Discrete(3)}),
            "dict-of-tuple-of-box": spaces.Dict(
                [("pos", spaces.Tuple((box, box))), ("id", spaces.Discrete(9, start=1))]
            ),
            "dict-nested-dict": spaces.Dict(
                [("outer", spaces.Dict([("z", box), ("a", spaces.Discrete(2))])), ("b", box)]
            ),
            "text-default": spaces.Text(5),
            "text-custom-charset": spaces.Text(8, min_length=2, charset="zyx-!é 01"),
            "text-set-charset": spaces.Text(3, min_length=0, charset=frozenset("qwe")),
            "sequence": spaces.Sequence(spaces.Discrete(3)),
            "sequence-stack": spaces.Sequence(box, stack=True),
            "sequence-of-dict": spaces.Sequence(
                spaces.Dict([("y", box), ("x", spaces.Discrete(2))])
            ),
            "graph-box-box": spaces.Graph(
                node_space=spaces.Box(-1.0, 1.0, shape=(3,)), edge_space=spaces.Box(0, 1, (2,))
            ),
            "graph-discrete-discrete": spaces.Graph(spaces.Discrete(4), spaces.Discrete(2)),
            "graph-no-edges": spaces.Graph(node_space=spaces.Box(0.0, 1.0, (2,)), edge_space=None),
        }
    )
    if hasattr(spaces.Dict(), "sort_keys"):
        cases["dict-sort-keys-false"] = spaces.Dict({"b": box, "a": box}, sort_keys=False)
    if HAS_MULTI_DISCRETE_START:  # gymnasium >= 0.29
        cases["multidiscrete-2d-start"] = spaces.MultiDiscrete(
            np.array([[2, 3], [4, 5]]), start=np.array([[-1, 0], [10, -5]])
        )
    if HAS_DISCRETE_DTYPE:
        cases["discrete-int32"] = spaces.Discrete(3, start=2, dtype=np.int32)
    if HAS_ONE_OF:
        cases["oneof"] = spaces.OneOf((spaces.Discrete(3), box))
        cases["oneof-with-dict"] = spaces.OneOf(
            (spaces.Dict([("k", box), ("a", spaces.Text(4))]), spaces.MultiDiscrete([2, 2]))
        )
        cases["tuple-of-oneof"] = spaces.Tuple((spaces.OneOf((box,)), spaces.Discrete(2)))
    return cases


CASES = _cases()


def assert_same_space(a: gymnasium.Space, b: gymnasium.Space, path: str = "space") -> None:
    """Assert ``b`` has the exact class and every parameter of ``a``, recursively."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    assert a.shape == b.shape, f"{path}: shape {a.shape} != {b.shape}"
    assert a.dtype == b.dtype, f"{path}: dtype {a.dtype} != {b.dtype}"
    if isinstance(a, spaces.Box):
        for name in ("low", "high", "bounded_below", "bounded_above"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype, f"{path}.{name}: dtype {x.dtype} != {y.dtype}"
            assert np.array_equal(x, y), f"{path}.{name}: {x} != {y}"
    elif isinstance(a, spaces.Discrete):
        assert (a.n, a.start) == (b.n, b.start), f"{path}: n/start differ"
        assert type(a.n) is type(b.n) and type(a.start) is type(b.start), f"{path}: int types"
    elif isinstance(a, spaces.MultiDiscrete):
        for name in ("nvec", "start") if hasattr(a, "start") else ("nvec",):  # 0.28: no start
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and np.array_equal(x, y), f"{path}.{name}: {x} != {y}"
    elif isinstance(a, spaces.MultiBinary):
        assert type(a.n) is type(b.n) and a.n == b.n, f"{path}: n {a.n!r} != {b.n!r}"
    elif isinstance(a, spaces.Dict):
        assert list(a.spaces) == list(b.spaces), f"{path}: keys {list(a)} != {list(b)}"
        assert getattr(a, "sort_keys", None) == getattr(b, "sort_keys", None), f"{path}: sort"
        for key in a.spaces:
            assert_same_space(a.spaces[key], b.spaces[key], f"{path}[{key!r}]")
    elif isinstance(a, spaces.Tuple) or (HAS_ONE_OF and isinstance(a, spaces.OneOf)):
        assert len(a.spaces) == len(b.spaces), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a.spaces, b.spaces)):
            assert_same_space(x, y, f"{path}[{i}]")
    elif isinstance(a, spaces.Text):
        assert (a.min_length, a.max_length) == (b.min_length, b.max_length), f"{path}: lengths"
        assert a.character_set == b.character_set, f"{path}: charset"
        assert a.character_list == b.character_list, f"{path}: charset order"
        assert a.characters == b.characters, f"{path}: _char_str"
    elif isinstance(a, spaces.Sequence):
        assert a.stack == b.stack, f"{path}: stack {a.stack} != {b.stack}"
        assert_same_space(a.feature_space, b.feature_space, f"{path}.feature_space")
    elif isinstance(a, spaces.Graph):
        assert_same_space(a.node_space, b.node_space, f"{path}.node_space")
        assert (a.edge_space is None) == (b.edge_space is None), f"{path}: edge_space presence"
        if a.edge_space is not None:
            assert_same_space(a.edge_space, b.edge_space, f"{path}.edge_space")
    else:
        raise AssertionError(f"{path}: no comparison for {type(a).__name__}")
    assert a == b


ALLOWED_LEAVES = (type(None), bool, int, float, str, bytes)


def assert_plain(data, path: str = "data") -> None:
    """Assert ``data`` holds only the types the wire codec carries natively."""
    if isinstance(data, dict):
        for key, value in data.items():
            assert type(key) is str, f"{path}: non-str key {key!r}"
            assert_plain(value, f"{path}[{key!r}]")
    elif type(data) in (list, tuple):
        for i, value in enumerate(data):
            assert_plain(value, f"{path}[{i}]")
    elif isinstance(data, np.ndarray):
        assert not data.dtype.hasobject, f"{path}: object array"
    else:
        assert type(data) in ALLOWED_LEAVES or isinstance(data, np.generic), (
            f"{path}: {type(data).__name__} is not a plain type"
        )


@pytest.mark.parametrize("space", CASES.values(), ids=CASES.keys())
def test_round_trip_is_exact(space):
    data = encode_space(space)
    assert data["type"] == type(space).__name__
    assert_plain(data)
    assert_same_space(space, decode_space(data))


@pytest.mark.parametrize("space", CASES.values(), ids=CASES.keys())
def test_decoded_space_samples_belong_to_original(space):
    decoded = decode_space(encode_space(space))
    decoded.seed(0)
    for _ in range(5):
        assert space.contains(decoded.sample())


def test_encoding_does_not_alias_the_space():
    space = spaces.Box(-2.0, 3.0, shape=(2,))
    data = encode_space(space)
    data["low"][...] = 0
    data["bounded_above"][...] = False
    assert space.low.tolist() == [-2.0, -2.0] and space.bounded_above.all()


def test_dict_key_order_is_kept_not_sorted():
    space = spaces.Dict(
        [("c", spaces.Discrete(2)), ("a", spaces.Discrete(3)), ("b", spaces.Text(2))]
    )
    assert list(space.spaces) == ["c", "a", "b"]
    assert list(decode_space(encode_space(space)).spaces) == ["c", "a", "b"]


def test_int_box_with_inf_keeps_unbounded_flags():
    space = spaces.Box(np.array([-inf, 0.0]), np.array([1.0, inf]), dtype=np.int32)
    decoded = decode_space(encode_space(space))
    assert decoded.bounded_below.tolist() == [False, True]
    assert decoded.bounded_above.tolist() == [True, False]
    assert not decoded.is_bounded("both")


def test_decode_tolerates_tuples_and_readonly_arrays():
    data = encode_space(spaces.Box(np.zeros((2, 2)), np.ones((2, 2)), dtype=np.float64))
    for key in ("low", "high"):
        data[key].setflags(write=False)
    data["shape"] = tuple(data["shape"])
    decoded = decode_space(data)
    assert decoded.shape == (2, 2) and decoded.dtype == np.float64


def test_decoded_spaces_are_independent():
    data = encode_space(spaces.MultiDiscrete([3, 3]))
    first, second = decode_space(data), decode_space(data)
    first.nvec[0] = 9
    assert second.nvec[0] == 3


class _Custom(gymnasium.Space):
    def sample(self, mask=None, probability=None):
        return 0

    def contains(self, x):
        return x == 0


def test_unknown_space_raises_unsupported_with_class_and_supported_list():
    with pytest.raises(UnsupportedSpaceError) as info:
        encode_space(_Custom())
    message = str(info.value)
    assert "_Custom" in message
    for name in ("Box", "Discrete", "Dict", "Graph", "Text"):
        assert name in message


def test_unknown_space_nested_in_dict_raises():
    with pytest.raises(UnsupportedSpaceError, match="_Custom"):
        encode_space(spaces.Dict([("ok", spaces.Discrete(2)), ("bad", _Custom())]))


def test_non_space_raises_unsupported():
    with pytest.raises(UnsupportedSpaceError, match="int"):
        encode_space(3)


def test_subclass_of_known_space_encodes_as_base():
    class MyBox(spaces.Box):
        pass

    decoded = decode_space(encode_space(MyBox(0.0, 1.0, shape=(2,))))
    assert type(decoded) is spaces.Box


def test_unknown_type_raises_protocol_error_naming_it():
    with pytest.raises(ProtocolError, match="'Blob'") as info:
        decode_space({"type": "Blob"})
    assert "Box" in str(info.value)


@pytest.mark.parametrize(
    "bad, message",
    [
        (None, "space data must be a dict, got NoneType: None"),
        ([], r"space data must be a dict, got list: \[\]"),
        ("Box", "space data must be a dict, got str: 'Box'"),
        ({"no_type": 1}, "unknown space type None; gymnasium .* supports: Box, Discrete"),
        ({"type": 7}, "unknown space type 7; gymnasium .* supports: Box, Discrete"),
    ],
)
def test_malformed_data_raises_protocol_error(bad, message):
    with pytest.raises(ProtocolError, match=message):
        decode_space(bad)


@pytest.mark.parametrize(
    "space, key",
    [
        (spaces.Box(0.0, 1.0, (2,)), "high"),
        (spaces.Discrete(3), "n"),
        (spaces.MultiDiscrete([2]), "nvec"),
        (spaces.Text(3), "charset"),
        (spaces.Sequence(spaces.Discrete(2)), "space"),
        (spaces.Graph(spaces.Discrete(2), None), "node_space"),
    ],
)
def test_missing_key_raises_protocol_error_naming_it(space, key):
    data = encode_space(space)
    del data[key]
    with pytest.raises(ProtocolError, match=f"'{key}'"):
        decode_space(data)


def test_nested_bad_data_raises_protocol_error():
    data = encode_space(spaces.Tuple((spaces.Discrete(2),)))
    data["spaces"][0]["type"] = "Nope"
    with pytest.raises(ProtocolError, match="'Nope'"):
        decode_space(data)


def test_invalid_parameters_raise_protocol_error():
    data = encode_space(spaces.Discrete(3))
    data["n"] = 0
    with pytest.raises(ProtocolError, match="Discrete"):
        decode_space(data)
    box = encode_space(spaces.Box(0.0, 1.0, (2,)))
    box["bounded_below"] = np.array([True])
    with pytest.raises(ProtocolError, match="bounded_below"):
        decode_space(box)


class _MultiDiscreteWithoutStart(spaces.MultiDiscrete):
    """Stands in for gymnasium 0.28's MultiDiscrete, whose constructor has no start."""

    def __init__(self, nvec, dtype=np.int64, seed=None):
        super().__init__(nvec, dtype=dtype, seed=seed)


def test_older_gymnasium_without_keyword_refuses_non_default_value(monkeypatch):
    data = {"type": "MultiDiscrete", "nvec": np.array([2, 3]), "dtype": "<i8"}
    monkeypatch.setattr(spaces, "MultiDiscrete", _MultiDiscreteWithoutStart)
    decoded = decode_space({**data, "start": np.array([0, 0])})
    assert type(decoded) is _MultiDiscreteWithoutStart and decoded.nvec.tolist() == [2, 3]
    with pytest.raises(UnsupportedSpaceError, match="start"):
        decode_space({**data, "start": np.array([1, 0])})


def test_dict_with_unsendable_key_raises_unsupported():
    with pytest.raises(UnsupportedSpaceError, match=r"\(1, 2\)"):
        encode_space(spaces.Dict([((1, 2), spaces.Discrete(2))]))


def test_numpy_scalars_from_the_wire_are_accepted():
    decoded = decode_space({"type": "MultiBinary", "n": np.int64(4)})
    assert decoded.n == 4 and type(decoded.n) is int
    decoded = decode_space(
        {"type": "Discrete", "n": np.int32(3), "start": np.int64(-1), "dtype": "<i8"}
    )
    assert (decoded.n, decoded.start) == (3, -1)
