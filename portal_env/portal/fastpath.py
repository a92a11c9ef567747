"""A fixed binary layout for step messages, agreed from the env's spaces.

Most steps move the same shapes every time: an action and an observation of
the spaces' dtype and shape, a float reward, two bool flags and a small info
dict. Both sides derive the same layout from the spaces they share, so such a
step travels as raw bytes behind a 16-byte struct header, with no per-value
dispatch. A value that does not fit exactly (another dtype, a numpy reward, an
observation of another shape) sends that one message through the general
codec instead, so exactness never depends on this module.
"""

from __future__ import annotations

import struct
from typing import Any, List, Optional, Tuple

import numpy as np
from gymnasium import spaces as gs
from gymnasium.vector.utils import batch_space

from ..errors import ProtocolError
from . import codec, infopack, obsring, sharedmem

# reward kind, terminated, truncated, flags, ring slot the obs is in (0: none), reward
_HEAD = struct.Struct("<BBBBBxxxd")
# flags: an info follows; the obs is in shared memory; the info is packed by the learnt
# schema (infopack); the info went through the codec and both sides learn its schema.
_HAS_INFO, _OBS_SHARED, _INFO_PACKED, _INFO_LEARN = 1, 2, 4, 8
# the flags a sender sets (see _put_obs, _put_info); any other byte is a malformed reply
_REPLY_FLAGS = frozenset(
    where | info
    for where in (0, _OBS_SHARED)
    for info in (0, _HAS_INFO | _INFO_PACKED, _HAS_INFO | _INFO_LEARN)
)
_SMALL = 4096
_INT64 = np.dtype(np.int64)
_FLOAT, _INT, _NP_FLOAT64, _NP_FLOAT32 = range(4)  # how the reward was typed
_REWARD_TYPES = {float: _FLOAT, int: _INT, np.float64: _NP_FLOAT64, np.float32: _NP_FLOAT32}
_REWARD_MAKERS = (float, int, np.float64, np.float32)
_FLAG_KINDS = {(bool, False): 0, (bool, True): 1, (np.bool_, False): 2, (np.bool_, True): 3}
_FLAG_VALUES = (False, True, np.False_, np.True_)
# A request's first byte: the action's tag in the low 4 bits, the ring slot asked for above.
_ACTION_INT, _ACTION_SCALAR, _ACTION_ARRAY = b"\x00", b"\x01", b"\x02"
_TAGS = [bytes([i]) for i in range(256)]
Parts = Tuple[List[Any], int]


_FLOAT32 = struct.Struct("<f")


def _reward_fits(kind: int, reward: float) -> bool:
    """Whether the double a reply carries is a value of the reward type it names."""
    if kind == _INT:
        return reward.is_integer()
    try:  # float32: the double must be one exactly (NaN and infinities are)
        return _FLOAT32.unpack(_FLOAT32.pack(reward))[0] == reward or reward != reward
    except OverflowError:
        return False


class Slot:
    """An array of one fixed dtype and shape."""

    def __init__(self, dtype: np.dtype, shape: Tuple[int, ...]) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = tuple(shape)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.count = self.nbytes // max(self.dtype.itemsize, 1)
        self.padded = codec.padded(self.nbytes)  # what the slot takes in a frame
        self._pad = bytes(self.padded - self.nbytes)

    def fits(self, value: Any) -> bool:
        if type(value) is not np.ndarray or value.shape != self.shape:
            return False
        return value.dtype is self.dtype or value.dtype == self.dtype  # `is`: builtin dtypes

    def pad(self) -> bytes:
        return self._pad

    @staticmethod
    def raw(value: np.ndarray) -> Any:
        if value.nbytes <= _SMALL:  # a copy is cheaper than exporting a buffer
            return value.tobytes()
        return codec.array_bytes(value)

    def share(self, value: np.ndarray, shm: Any, offset: int = 0) -> None:
        target = np.frombuffer(shm, self.dtype, self.count, offset).reshape(self.shape)
        if value.ctypes.data != target.ctypes.data:  # else workers wrote it there already
            target[...] = value

    def unshare(self, shm: Any) -> np.ndarray:
        return np.frombuffer(shm, self.dtype, self.count).reshape(self.shape).copy()

    def read(self, payload: Any, offset: int) -> np.ndarray:
        if offset + self.nbytes > len(payload):
            raise ProtocolError("step frame shorter than the layout agreed from the spaces")
        flat = np.frombuffer(payload, self.dtype, self.count, offset)
        return flat if len(self.shape) == 1 else flat.reshape(self.shape)


def shared_capacity(space: Any) -> int:
    """Bytes the fixed-size arrays of one value of space take (Dict/Tuple summed)."""
    slot = slot_for(space)
    if slot is not None:
        return slot.padded
    if isinstance(space, (gs.Dict, gs.Tuple)):
        parts = space.spaces.values() if isinstance(space, gs.Dict) else space.spaces
        return sum(shared_capacity(part) for part in parts)
    return 0  # variable-sized (Text, Sequence, Graph, ...): not counted


def slot_for(space: Any) -> Optional[Slot]:
    """The slot of a space whose values are plain arrays (or int64 scalars), else None."""
    if isinstance(space, (gs.Box, gs.MultiBinary, gs.MultiDiscrete, gs.Discrete)):
        if space.dtype is not None and not space.dtype.hasobject:
            return Slot(space.dtype, space.shape)
    return None


class _Layout:
    """What both layouts share: the info tail codec and the optional shared memory.

    Attributes:
        obs: The observation slot, or None when observations never take the fast path.
        capacity: Bytes of shared memory an observation (batch) can use.
        shm: A shared mapping of capacity bytes, once agent and server agreed on one.
    """

    obs: Optional[Slot]

    def __init__(self, observation_space: Any, many_infos: bool) -> None:
        self.capacity = shared_capacity(observation_space)
        self.shm: Any = None
        self.ring: Optional[obsring.Ring] = None  # the agent's view slots
        self.ring_slots = 0  # slots beyond the scratch one that shm holds
        self.slot = 0  # the ring slot the current step's obs goes to
        self.infos = infopack.InfoPacker(many_infos)
        self._encoder = codec.Encoder()
        self._decoder = codec.Decoder()

    def wants_shared_memory(self) -> bool:
        return self.capacity >= sharedmem.MIN_BYTES

    # -- ring slots (obsring): the agent names one per fast request --------

    @property
    def max_ring(self) -> int:
        """Ring slots a request's first byte can name; none without a fast obs layout."""
        return 15 if self.obs is not None else 0

    _fresh = False
    _target: Optional[np.ndarray] = None  # what obs_target() handed out for this request

    def _ask_slot(self, request: bytes) -> bytes:
        """request with a free ring slot named in its first byte (none: the scratch slot)."""
        if self.ring is None:
            return request
        self.slot = self.ring.free_slot()
        return _TAGS[request[0] | self.slot << 4] + request[1:] if self.slot else request

    def _take_slot(self, payload: Any) -> bytes:
        """The ring slot a fast request names (kept for its reply); returns its action tag."""
        self.slot = payload[0] >> 4
        self._fresh = True  # obs_target() may be used for this request's reply
        self._target = None
        if self.slot > self.ring_slots:
            raise ProtocolError(f"fast step request for ring slot {self.slot} of {self.ring_slots}")
        return _TAGS[payload[0] & 15]

    def obs_target(self) -> Optional[np.ndarray]:
        """Where the reply to the fast request just decoded puts its obs in shared memory.

        None unless such a request is being answered (a general-codec step must
        not write into a ring slot the agent may still hold).
        """
        if not self._fresh or self.shm is None or self.obs is None:
            return None
        self._fresh = False
        obs = self.obs
        offset = self.slot * self.capacity
        target = np.frombuffer(self.shm, obs.dtype, obs.count, offset).reshape(obs.shape)
        self._target = target
        return target

    def allow_pickle(self, allowed: bool) -> None:
        """Let info values travel pickled (trusted peers only; see codec)."""
        self._encoder.allow_pickle = allowed
        self._decoder = codec.Decoder(allowed)

    def _put_obs(self, obs: np.ndarray, parts: List[Any]) -> Tuple[int, int]:
        """Place obs in shared memory or in parts; (flags that say where, bytes added)."""
        target, self._target = self._target, None
        if self.shm is not None:  # sized from the same space: the obs always fits
            if obs is not target:  # else the env (or the workers) wrote it there already
                self.obs.share(obs, self.shm, self.slot * self.capacity)
            return _OBS_SHARED, 0
        parts += [Slot.raw(obs), self.obs.pad()]
        return 0, self.obs.padded

    def _get_obs(self, payload: Any, flags: int) -> Tuple[np.ndarray, int]:
        """The obs and the offset after it."""
        if flags & _OBS_SHARED:
            if self.shm is None:
                raise ProtocolError("step reply in shared memory that was never agreed")
            slot = payload[4]  # the header's ring slot
            if slot:
                if self.ring is None or slot != self.slot:
                    raise ProtocolError(f"step reply in ring slot {slot}, not the one asked for")
                obs = self.obs
                return self.ring.view(slot, obs.dtype, obs.count, obs.shape), _HEAD.size
            return self.obs.unshare(self.shm), _HEAD.size
        return self.obs.read(payload, _HEAD.size), _HEAD.size + self.obs.padded

    def _put_info(self, info: Any, parts: List[Any], size: int) -> Tuple[int, int]:
        """Append info packed by the learnt schema, else by the codec; (flags, new size)."""
        packed = self.infos.pack(info)
        if packed is not None:
            parts += [packed]
            return _HAS_INFO | _INFO_PACKED, size + len(packed)
        self.infos.learn(info)
        return _HAS_INFO | _INFO_LEARN, self._pack_tail(parts, size, info)

    def _check_head(self, payload: Any) -> int:
        """The flags of a reply's header, once its flags and ring slot are valid ones."""
        flags, slot = payload[3], payload[4]
        if flags not in _REPLY_FLAGS or (slot and not flags & _OBS_SHARED):
            raise ProtocolError(f"malformed step reply header: flags {flags:#x}, ring slot {slot}")
        return flags

    def _get_info(self, payload: Any, offset: int, flags: int, none: Any) -> Any:
        """The info(s) from offset on, or none; without info nothing may follow offset."""
        if not flags & _HAS_INFO:
            if len(payload) != offset:
                raise ProtocolError(
                    f"step reply of {len(payload)} bytes where the layout ends at {offset}"
                )
            return none
        if flags & _INFO_PACKED:
            if not self.infos.size or len(payload) - offset != self.infos.size:
                raise ProtocolError(
                    "step reply with a packed info that does not match the learnt schema"
                )
            return self.infos.unpack(memoryview(payload)[offset:])
        try:
            info = self._read_tail(payload, offset)
        except ProtocolError as exc:
            raise ProtocolError(f"step reply with a malformed info: {exc}") from exc
        if flags & _INFO_LEARN:
            self.infos.learn(info)
        return info

    def _pack_tail(self, parts: List[Any], size: int, tail: Any) -> int:
        tail_parts, tail_size = self._encoder.encode(tail)
        parts.extend(tail_parts)
        return size + tail_size

    def _read_tail(self, payload: Any, offset: int) -> Any:
        return self._decoder.decode(memoryview(payload)[offset:])


class EnvLayout(_Layout):
    """Step layout of a single env: action → (obs, reward, terminated, truncated, info)."""

    def __init__(self, observation_space: Any, action_space: Any) -> None:
        super().__init__(observation_space, many_infos=False)
        self.obs = slot_for(observation_space)
        self.action = slot_for(action_space)
        action = self.action
        self._int_action = action is not None and action.shape == () and action.dtype == _INT64

    # -- requests ----------------------------------------------------------

    def encode_action(self, action: Any) -> Optional[bytes]:
        request = self._encode_action(action)
        return None if request is None else self._ask_slot(request)

    def _encode_action(self, action: Any) -> Optional[bytes]:
        slot, kind = self.action, type(action)
        if slot is None:
            return None
        if self._int_action:
            if kind is np.int64:
                return _ACTION_SCALAR + action.tobytes()
            if kind is int and -(2**63) <= action < 2**63:
                return _ACTION_INT + action.to_bytes(8, "little", signed=True)
        if slot.fits(action):
            return _ACTION_ARRAY + bytes(Slot.raw(action))
        return None

    def decode_action(self, payload: Any) -> Any:
        slot = self.action
        if slot is None or len(payload) < 1:
            raise ProtocolError("fast step request for an env without a fast layout")
        tag = self._take_slot(payload)
        if tag == _ACTION_INT and len(payload) == 9:
            return int.from_bytes(payload[1:9], "little", signed=True)
        if tag == _ACTION_SCALAR and len(payload) == 1 + slot.nbytes:
            if slot.dtype == _INT64:  # the common Discrete case, without an array
                return np.int64(int.from_bytes(payload[1:9], "little", signed=True))
            return slot.read(payload, 1)[()]
        if tag == _ACTION_ARRAY and len(payload) == 1 + slot.nbytes:
            return slot.read(bytearray(payload[1:]), 0)  # own, aligned, writable memory
        raise ProtocolError(f"malformed fast step request (tag {tag!r}, {len(payload)} bytes)")

    # -- replies -----------------------------------------------------------

    def encode_result(self, result: Any) -> Optional[Parts]:
        if self.obs is None or type(result) is not tuple or len(result) != 5:
            return None
        obs, reward, terminated, truncated, info = result
        reward_kind = _REWARD_TYPES.get(type(reward))
        term = _FLAG_KINDS.get((type(terminated), terminated))
        trunc = _FLAG_KINDS.get((type(truncated), truncated))
        if reward_kind is None or term is None or trunc is None or not self.obs.fits(obs):
            return None
        if reward_kind == _INT and not -(2**53) <= reward <= 2**53:
            return None  # beyond a double's exact integers
        if type(info) is not dict:
            return None
        parts: List[Any] = [b""]
        flags, size = self._put_obs(obs, parts)
        size += _HEAD.size
        if info:
            info_flags, size = self._put_info(info, parts, size)
            flags |= info_flags
        slot = self.slot if flags & _OBS_SHARED else 0
        parts[0] = _HEAD.pack(reward_kind, term, trunc, flags, slot, reward)
        return parts, size

    def decode_result(self, payload: Any) -> Tuple[Any, ...]:
        if self.obs is None or len(payload) < _HEAD.size:
            raise ProtocolError("fast step reply for an env without a fast layout")
        reward_kind, term, trunc, flags, _, reward = _HEAD.unpack_from(payload)
        if reward_kind > 3 or term > 3 or trunc > 3:
            raise ProtocolError(
                f"malformed fast step reply header: reward kind {reward_kind}, "
                f"terminated {term}, truncated {trunc}"
            )
        if reward_kind in (_INT, _NP_FLOAT32) and not _reward_fits(reward_kind, reward):
            kind = _REWARD_MAKERS[reward_kind].__name__
            raise ProtocolError(f"fast step reply with a reward of {reward} typed {kind}")
        obs, end = self._get_obs(payload, self._check_head(payload))
        info = self._get_info(payload, end, flags, {})
        if type(info) is not dict:
            raise ProtocolError(f"step reply whose info is {type(info).__name__}, not a dict")
        reward = _REWARD_MAKERS[reward_kind](reward)
        return obs, reward, _FLAG_VALUES[term], _FLAG_VALUES[trunc], info


class VectorLayout(_Layout):
    """Step layout of N envs: actions → (obs, rewards, terminations, truncations, infos)."""

    def __init__(self, observation_space: Any, action_space: Any, num_envs: int) -> None:
        super().__init__(batch_space(observation_space, num_envs), many_infos=True)
        obs = slot_for(observation_space)
        action = slot_for(action_space)
        self.obs = slot_for(batch_space(observation_space, num_envs)) if obs else None
        self.action = slot_for(batch_space(action_space, num_envs)) if action else None
        self.rewards = Slot(np.float64, (num_envs,))
        self.flags = Slot(np.bool_, (num_envs,))

    def encode_action(self, actions: Any) -> Optional[bytes]:
        if self.action is not None and self.action.fits(actions):
            return self._ask_slot(_ACTION_ARRAY + bytes(Slot.raw(actions)))
        return None

    def decode_action(self, payload: Any) -> Any:
        if self.action is None or len(payload) < 1 or self._take_slot(payload) != _ACTION_ARRAY:
            raise ProtocolError("malformed fast step request for a vector env")
        if len(payload) != 1 + self.action.nbytes:
            raise ProtocolError(f"fast vector step request of {len(payload)} bytes")
        return self.action.read(bytearray(payload[1:]), 0)

    def encode_result(self, result: Any) -> Optional[Parts]:
        obs, rewards, terminations, truncations, infos = result
        if self.obs is None or not self.obs.fits(obs):
            return None
        if not (self.rewards.fits(rewards) and self.flags.fits(terminations)):
            return None
        if not self.flags.fits(truncations):
            return None
        parts: List[Any] = [b""]
        flags, size = self._put_obs(obs, parts)
        for value, slot in ((rewards, self.rewards), (terminations, self.flags)):
            parts += [Slot.raw(value), slot.pad()]
        parts += [Slot.raw(truncations), self.flags.pad()]
        size += _HEAD.size + self.rewards.padded + 2 * self.flags.padded
        if any(infos):
            info_flags, size = self._put_info(infos, parts, size)
            flags |= info_flags
        slot = self.slot if flags & _OBS_SHARED else 0
        parts[0] = _HEAD.pack(0, 0, 0, flags, slot, 0.0)
        return parts, size

    def decode_result(self, payload: Any) -> List[Any]:
        if self.obs is None or len(payload) < _HEAD.size:
            raise ProtocolError("fast vector step reply shorter than its header")
        flags = self._check_head(payload)
        obs, offset = self._get_obs(payload, flags)
        values: List[Any] = [obs]
        for slot in (self.rewards, self.flags, self.flags):
            values.append(slot.read(payload, offset))
            offset += slot.padded
        n = self.rewards.shape[0]
        infos = self._get_info(payload, offset, flags, [{}] * n)
        if type(infos) is not list or len(infos) != n or any(type(i) is not dict for i in infos):
            raise ProtocolError(f"vector step reply whose infos are not {n} dicts: {infos!r:.200}")
        values.append(infos)
        return values
