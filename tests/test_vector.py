"""make_vec against a real server: batched spaces, seeding, next-step autoreset."""

from __future__ import annotations

import gymnasium
import pytest
from gymnasium.vector import SyncVectorEnv
from gymnasium.vector.utils import batch_space

from portal_env import PortalVectorEnv, make_vec
from tests import envs
from tests.test_agent import assert_identical


def local_vec(env_id, n, **kwargs):
    return SyncVectorEnv([lambda: envs.make(env_id, **kwargs) for _ in range(n)])


def vec_trajectory(vec, seed, steps):
    vec.action_space.seed(seed)
    out = [vec.reset(seed=seed)]
    for _ in range(steps):
        out.append(vec.step(vec.action_space.sample()))
    return out


def test_is_a_vector_env_with_batched_spaces(server):
    vec = make_vec("custom", num_envs=4, env_args=["CartPole-v1"], **server.kwargs())
    single = gymnasium.make("CartPole-v1")
    assert isinstance(vec, gymnasium.vector.VectorEnv) and isinstance(vec, PortalVectorEnv)
    assert vec.num_envs == 4
    assert vec.single_observation_space == single.observation_space
    assert vec.single_action_space == single.action_space
    assert vec.observation_space == batch_space(single.observation_space, 4)
    assert vec.action_space == batch_space(single.action_space, 4)
    assert vec.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.NEXT_STEP
    vec.close()
    vec.close()  # idempotent
    with make_vec("custom", 2, ["CartPole-v1"], **server.kwargs()) as other:
        other.reset(seed=0)
    assert other.closed


@pytest.mark.parametrize(
    "env_id,steps",
    [("CartPole-v1", 250), ("PortalTest/Rich-v0", 30), ("PortalTest/Typed-v0", 45)],
)
def test_trajectory_with_autoreset_matches_sync_vector_env(server, env_id, steps):
    remote = make_vec("custom", num_envs=3, env_args=[env_id], **server.kwargs())
    local = local_vec(env_id, 3)
    got, expected = vec_trajectory(remote, 7, steps), vec_trajectory(local, 7, steps)
    assert_identical(got, expected)
    # Episodes end within these step counts: the autoreset path was exercised.
    assert any(step[2].any() or step[3].any() for step in expected[1:])
    remote.close()
    local.close()


def test_reset_with_a_list_of_seeds_and_options(server):
    remote = make_vec("custom", num_envs=2, env_args=["PortalTest/Rich-v0"], **server.kwargs())
    local = local_vec("PortalTest/Rich-v0", 2)
    assert_identical(
        remote.reset(seed=[5, None], options={"x": 1})[1],
        local.reset(seed=[5, None], options={"x": 1})[1],
    )
    obs_a, _ = remote.reset(seed=[11, 12])
    obs_b, _ = local.reset(seed=[11, 12])
    assert_identical(obs_a, obs_b)
    with pytest.raises(ValueError, match="3 seeds for 2 envs"):
        remote.reset(seed=[1, 2, 3])
    remote.close()


def test_render_call_and_attributes(server):
    vec = make_vec(
        "custom", 2, ["PortalTest/Rich-v0"], {"render_mode": "rgb_array"}, **server.kwargs()
    )
    vec.reset(seed=0)
    frames = vec.render()
    assert isinstance(frames, tuple) and len(frames) == 2 and frames[0].shape == (8, 6, 3)
    assert vec.call("double", 3) == (6, 6)
    vec.set_attr("label", ["a", "b"])
    assert vec.get_attr("label") == ("a", "b")
    vec.set_attr("label", "same")
    assert vec.get_attr("label") == ("same", "same")
    vec.close()


@pytest.mark.parametrize("env_id", ["ALE/Pong-v5", "PortalTest/Screen-v0"])
def test_vector_of_large_observations_uses_shared_memory(server, env_id):
    # Pong's frames take the fast step layout, Screen's Dict observations the codec:
    # both put their array data in the one mapping the connection shares.
    remote = make_vec("custom", num_envs=2, env_args=[env_id], **server.kwargs())
    local = local_vec(env_id, 2)
    layout = remote._client.layout
    assert layout.shm is not None
    # Pong's batches get a ring of slots; the codec's replies use the first (scratch) one.
    # Screen's Dict observations have no fast layout, so no ring: the codec uses it all.
    if env_id == "ALE/Pong-v5":
        assert layout.ring is not None and len(remote._client._channel.shm) == layout.capacity
    else:
        assert layout.ring is None and remote._client._channel.shm is layout.shm
    assert_identical(vec_trajectory(remote, 3, 25), vec_trajectory(local, 3, 25))
    remote.close()
