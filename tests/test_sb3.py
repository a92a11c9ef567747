"""The seed README's first example: Stable-Baselines3 PPO trains on a portal env unchanged."""

from __future__ import annotations

import pytest

from portal_env import AgentSidePortal


@pytest.mark.slow
def test_ppo_learns_on_a_portal_env(server, tmp_path):
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import configure

    env = AgentSidePortal(env_name="custom", env_args=["CartPole-v1"], **server.kwargs())
    agent = PPO("MlpPolicy", env, n_steps=256, batch_size=64, n_epochs=2, seed=0, device="cpu")
    agent.set_logger(configure(str(tmp_path / "sb3"), []))  # else SB3 leaves /tmp/SB3-* dirs
    agent.learn(total_timesteps=1024)
    assert agent.num_timesteps >= 1024
    obs, _ = env.reset(seed=0)
    action, _ = agent.predict(obs, deterministic=True)
    assert env.action_space.contains(action)
    env.close()


@pytest.mark.slow
def test_check_env_on_ale_pong(server):
    from gymnasium.utils.env_checker import check_env

    env = AgentSidePortal("custom", ["ALE/Pong-v5"], **server.kwargs())
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (210, 160, 3)
    for _ in range(50):
        obs, *_ = env.step(env.action_space.sample())
    env.close()
