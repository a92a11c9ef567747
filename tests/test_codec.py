"""The frame codec keeps every value's exact type and rejects malformed frames."""

from __future__ import annotations

import numpy as np
import pytest

from portal_env.errors import EncodeError, ProtocolError
from portal_env.portal import codec
from tests.test_agent import assert_identical

CASES = [
    None,
    True,
    False,
    0,
    -(2**63),
    2**64 - 1,
    1.5,
    float("inf"),
    "text ü",
    b"\x00bytes",
    [],
    (),
    [1, (2, [3, (4,)])],
    {"b": 1, "a": 2, 3: "int key", (1, 2): "tuple key"},
    np.float32(1.25),
    np.int8(-3),
    np.uint64(2**64 - 1),
    np.bool_(True),
    np.complex64(1 + 2j),
    np.datetime64("2026-11-24"),
    np.zeros((), np.float64),
    np.arange(24, dtype=">i4").reshape(2, 3, 4),
    np.zeros((0, 3), np.uint8),
    np.array([True, False]),
    np.array(["ab", "c"]),
    np.arange(10, dtype=np.float16)[::3],  # not contiguous
    np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    {"obs": (np.ones(3, np.float32), {"x": np.int64(4)}), "info": [None, "s"]},
]


def roundtrip(obj, allow_pickle=False):
    parts, size = codec.Encoder(allow_pickle).encode(obj)
    frame = bytearray(b"".join(bytes(memoryview(p).cast("B")) for p in parts))
    assert len(frame) == size
    return codec.Decoder(allow_pickle).decode(frame)


@pytest.mark.parametrize("value", CASES, ids=lambda v: type(v).__name__)
def test_value_roundtrips_exactly(value):
    assert_identical(roundtrip(value), value)


def test_decoded_arrays_are_writable_and_aligned():
    out = roundtrip([np.ones(3, np.uint8), np.ones((5, 7), np.float64)])
    for array in out:
        assert array.flags.writeable and array.flags.aligned
        array += 1


OTHER_OBJECTS = {
    "set": {1, 2},
    "frozen": frozenset("ab"),
    "obj_array": np.array([None, 1], dtype=object),
}


@pytest.mark.parametrize("key", sorted(OTHER_OBJECTS))
def test_other_objects_are_refused_naming_key_and_type(key):
    value = [0, [1, {"info": {key: OTHER_OBJECTS[key]}}]]
    kind = type(OTHER_OBJECTS[key]).__qualname__
    with pytest.raises(EncodeError, match=rf"type {kind} at \[1\]\[1\]\['info'\]\['{key}'\]"):
        roundtrip(value)


def test_other_objects_travel_pickled_only_when_both_sides_opt_in():
    out = roundtrip(OTHER_OBJECTS, allow_pickle=True)
    assert out["set"] == {1, 2} and out["frozen"] == frozenset("ab")
    assert out["obj_array"].dtype == object and list(out["obj_array"]) == [None, 1]
    parts, _ = codec.Encoder(allow_pickle=True).encode({"x": {1}})
    frame = bytearray(b"".join(bytes(memoryview(p).cast("B")) for p in parts))
    with pytest.raises(ProtocolError, match="does not accept pickle"):
        codec.Decoder().decode(frame)  # the default receiver never unpickles


def test_unencodable_value_names_its_type():
    with pytest.raises(EncodeError, match="lambda|function"):
        roundtrip({"f": lambda: 0})
    with pytest.raises(EncodeError, match="lambda|function"):
        roundtrip({"f": lambda: 0}, allow_pickle=True)


def test_object_dtype_arrays_in_a_frame_are_refused():
    parts, _ = codec.encode(np.zeros(3, np.int64))
    frame = bytearray(b"".join(bytes(memoryview(p).cast("B")) for p in parts))
    at = frame.index(b"<i8")
    frame[at : at + 3] = b"|O8"  # an object array pointing at raw bytes: pointers
    with pytest.raises(ProtocolError, match="array of dtype object in a frame"):
        codec.decode(frame)


@pytest.mark.parametrize(
    "frame, message",
    [
        (b"", "frame of 0 bytes is too short"),
        (b"\x01\x00", "frame of 2 bytes is too short"),
        (b"\xff\xff\xff\x00garbage", "frame structure length 16777215 exceeds the frame"),
        (b"\x02\x00\x00\x00\xc1\xc1" + bytes(10), "malformed frame: FormatError"),
    ],
)
def test_malformed_frames_raise_protocol_error(frame, message):
    with pytest.raises(ProtocolError, match=message):
        codec.decode(bytearray(frame))


def test_array_reference_outside_the_frame_is_rejected():
    parts, _ = codec.encode(np.ones(100, np.float64))
    frame = bytearray(bytes(parts[0]))  # structure only, data missing
    with pytest.raises(ProtocolError, match="outside the frame"):
        codec.decode(frame)


def test_large_array_data_goes_through_shared_memory_as_copies():
    shm = bytearray(1 << 20)
    value = {"screen": np.arange(100_000, dtype=np.uint8), "small": np.ones(3), "t": (1, "x")}
    parts, size = codec.encode(value, shm)
    assert size < 200 and len(parts) == 1  # only the structure travels in the frame
    frame = bytearray(b"".join(parts))
    out = codec.decode(frame, shm)
    assert_identical(out, value)
    shm[:] = bytes(len(shm))  # the peer reuses the mapping: decoded arrays are copies
    assert_identical(out, value)
    with pytest.raises(ProtocolError, match="shared memory"):
        codec.decode(bytearray(frame))


def test_small_or_oversized_data_stays_in_the_frame():
    small = np.ones(10)
    assert len(codec.encode(small, bytearray(1 << 20))[0]) > 1
    big = np.zeros(1 << 21, np.uint8)  # larger than the mapping
    parts, size = codec.encode(big, bytearray(1 << 20))
    assert size > 1 << 21
    assert_identical(roundtrip(big), big)
