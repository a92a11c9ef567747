"""Infos on the fast step path: packed while keys and types repeat, exact when they change."""

from __future__ import annotations

import numpy as np
import pytest

from portal_env import AgentSidePortal, make_vec
from portal_env.portal import infopack
from portal_env.portal.vector.agent import _InfoRows, merge_scalar_infos
from tests import envs
from tests.test_agent import assert_identical, run_trajectory
from tests.test_vector import local_vec, vec_trajectory


def test_a_learnt_schema_packs_exact_types():
    info = {"a": 1.5, "b": np.float32(0.25), "c": np.int64(-3), "d": True, "e": np.bool_(False)}
    sender, receiver = infopack.InfoPacker(False), infopack.InfoPacker(False)
    assert sender.pack(info) is None  # nothing learnt yet
    sender.learn(info)
    receiver.learn(info)
    later = dict(info, a=-2.0, c=np.int64(7))
    assert_identical(receiver.unpack(sender.pack(later)), later)
    assert sender.pack(dict(info, b=np.float64(0.25))) is None  # another type
    assert sender.pack(dict(info, f=1)) is None  # another key
    assert sender.pack({"a": 1.5, "c": np.int64(1), "b": np.float32(1), "d": 1, "e": 1}) is None


def test_unpackable_values_never_get_a_schema():
    packer = infopack.InfoPacker(True)
    packer.learn([{"a": 1}, {"nested": {"b": 1.0}}])
    assert packer.schema is None and packer.pack([{"a": 1}, {"nested": {"b": 1.0}}]) is None
    packer.learn([{"big": 1}])
    assert packer.pack([{"big": 2**70}]) is None  # beyond int64: the codec keeps it exact


@pytest.fixture
def count_unpacks(monkeypatch):
    calls = []
    original = infopack.InfoPacker.unpack

    def counting(self, data):
        calls.append(1)
        return original(self, data)

    monkeypatch.setattr(infopack.InfoPacker, "unpack", counting)
    return calls


def test_single_env_infos_are_exact_and_mostly_packed(server, count_unpacks):
    remote = AgentSidePortal("custom", ["PortalTest/Infos-v0"], **server.kwargs())
    local = envs.make("PortalTest/Infos-v0")
    assert_identical(run_trajectory(remote, 1, 80), run_trajectory(local, 1, 80))
    assert len(count_unpacks) >= 40  # steps 1-6 of every 10 after the first learnt one
    remote.close()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_vector_infos_are_exact_and_mostly_packed(server, count_unpacks, num_workers):
    remote = make_vec(
        "custom", 3, ["PortalTest/Infos-v0"], num_workers=num_workers, **server.kwargs()
    )
    local = local_vec("PortalTest/Infos-v0", 3)
    assert_identical(vec_trajectory(remote, 2, 70), vec_trajectory(local, 2, 70))
    assert len(count_unpacks) >= 30
    remote.close()


def gymnasium_merge(infos):
    """gymnasium's own per-instance merge, the oracle for merge_scalar_infos."""
    rows = _InfoRows(len(infos))
    merged = {}
    for i, info in enumerate(infos):
        if info:
            merged = rows._add_info(merged, info, i)
    return merged


@pytest.mark.parametrize(
    "infos",
    [
        [{"lives": np.int64(k), "frame_number": np.int64(4 * k)} for k in range(5)],
        [{"x_position": 0.5 * k, "reward_run": np.float32(k), "ok": k % 2 == 0} for k in range(3)],
        [{"n": k} for k in range(4)],
    ],
)
def test_column_merge_equals_gymnasium_merge(infos):
    assert_identical(merge_scalar_infos(infos), gymnasium_merge(infos))
    assert list(merge_scalar_infos(infos)) == list(gymnasium_merge(infos))  # key order too


@pytest.mark.parametrize(
    "infos",
    [
        [{"a": 1}, {"a": 1.0}],  # two types: gymnasium casts into the first one's array
        [{"a": 1}, {"b": 1}],  # other keys
        [{"a": 1}, {}],  # an instance without infos
        [{"a": np.bool_(True)}, {"a": np.bool_(False)}],  # gymnasium keeps numpy bools as objects
        [{"a": 1, "_a": 2}, {"a": 1, "_a": 2}],  # a key that is another's mask
        [{"final_obs": np.zeros(2)}, {"final_obs": np.zeros(2)}],
        [{"a": np.zeros(2)}, {"a": np.zeros(2)}],
        [],
    ],
)
def test_column_merge_leaves_other_infos_to_gymnasium(infos):
    assert merge_scalar_infos(infos) is None
