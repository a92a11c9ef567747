"""Large observations (and vector batches) as read-only views into a ring of shared slots."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from portal_env import AgentSidePortal, PortalEnvError, make_vec
from portal_env.portal import obsring
from tests import envs
from tests.test_agent import assert_identical, run_trajectory
from tests.test_vector import local_vec, vec_trajectory


def test_a_slot_is_reused_only_when_no_view_of_it_is_left():
    ring = obsring.Ring(mmap.mmap(-1, 4 * 64), 64, 3)
    views = {}
    for _ in range(3):
        k = ring.free_slot()
        views[k] = ring.view(k, np.dtype(np.uint8), 64, (8, 8))
    assert sorted(views) == [1, 2, 3] and not views[1].flags.writeable
    assert ring.free_slot() == 0  # all three held: the scratch slot, i.e. a copy
    part = views[2][2:4]  # a derived view keeps slot 2 taken
    del views[2]
    assert ring.free_slot() == 0
    del part
    assert ring.free_slot() == 2
    with pytest.raises(ValueError):
        views[1][0, 0] = 1  # read-only: the user cannot scribble on a slot


def test_ring_size_setting(monkeypatch):
    assert obsring.slots_for(100_000) == 4
    assert obsring.slots_for(16 << 20) == 2  # bounded by RING_BYTES
    monkeypatch.setenv("PORTAL_ENV_OBS_RING", "0")
    assert obsring.slots_for(100_000) == 0
    monkeypatch.setenv("PORTAL_ENV_OBS_RING", "many")
    with pytest.raises(PortalEnvError, match="PORTAL_ENV_OBS_RING='many'"):
        obsring.slots_for(100_000)


def test_kept_observations_stay_exact_beyond_the_ring(server):
    env = AgentSidePortal("custom", ["ALE/Pong-v5"], **server.kwargs())
    local = envs.make("ALE/Pong-v5")
    assert env._client.layout.ring is not None
    env.reset(seed=2)
    local.reset(seed=2)
    kept, expected = [], []
    for t in range(12):  # more than the ring holds: later steps are copies, all exact
        obs = env.step(t % 6)[0]
        kept.append(obs)
        expected.append(local.step(t % 6)[0])
    assert_identical([k.copy() for k in kept], expected)
    assert sum(not k.flags.writeable for k in kept) == 4  # the ring's 4, then copies
    env.close()


def test_ring_off_gives_writable_copies(server, monkeypatch):
    monkeypatch.setenv("PORTAL_ENV_OBS_RING", "0")
    with AgentSidePortal("custom", ["ALE/Pong-v5"], **server.kwargs()) as env:
        env.reset(seed=0)
        assert env._client.layout.ring is None and env.step(0)[0].flags.writeable


@pytest.mark.parametrize("obs_type", ["rgb", "grayscale"])
def test_ale_writes_frames_straight_into_shared_memory(server, obs_type):
    kwargs = {"obs_type": obs_type}
    env = AgentSidePortal(
        "custom", ["ALE/Pong-v5"], dict(kwargs, screen_into=True), **server.kwargs()
    )
    local = envs.make("ALE/Pong-v5", **kwargs)
    assert_identical(run_trajectory(env, 6, 40), run_trajectory(local, 6, 40))
    writes = env.get_attr("portal_screen_writes")
    if obs_type == "rgb":
        assert writes >= 35  # every fast step but the resets'
    else:  # 33 KB frames take the socket: no shared memory to write into
        assert env._client.layout.shm is None and writes == 0
    kept = [env.step(1)[0] for _ in range(6)]  # beyond the ring: the hook writes the scratch
    expected = [local.step(1)[0] for _ in range(6)]
    assert_identical([k.copy() for k in kept], expected)
    env.close()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_vector_batches_are_ring_views_that_stay_exact(server, num_workers):
    """Each fast step's batch is written (by ALE itself, in the server thread or the
    workers) into a free ring slot, and reaches the agent as a read-only view."""
    remote = make_vec(
        "custom", 3, ["ALE/Pong-v5"], {"screen_into": True}, num_workers=num_workers,
        **server.kwargs(),
    )  # fmt: skip
    assert remote._client.layout.ring is not None
    kept = vec_trajectory(remote, 4, 10)  # 10 batches kept: more than the ring's 4
    assert_identical(kept, vec_trajectory(local_vec("ALE/Pong-v5", 3), 4, 10))
    views = [not step[0].flags.writeable for step in kept[1:]]
    assert views == [True] * 4 + [False] * 6  # the ring's 4, then copies of the scratch slot
    assert all(w >= 10 for w in remote.get_attr("portal_screen_writes"))
    del kept, views
    assert not remote.step(remote.action_space.sample())[0].flags.writeable  # slots freed
    remote.close()
