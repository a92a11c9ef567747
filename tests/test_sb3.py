"""The seed README's first example: Stable-Baselines3 PPO trains on a portal env unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import List

import gymnasium
import numpy as np
import pytest

from portal_env import AgentSidePortal

TIMESTEPS = 8192


def train(env: gymnasium.Env, log_dir: Path) -> List[float]:
    """Seeded PPO on env; the return of every episode it played while learning."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.monitor import Monitor

    monitored = Monitor(env)
    agent = PPO(
        "MlpPolicy", monitored, n_steps=256, batch_size=64, n_epochs=4, seed=0, device="cpu"
    )
    agent.set_logger(configure(str(log_dir), []))  # else SB3 leaves /tmp/SB3-* dirs
    agent.learn(total_timesteps=TIMESTEPS)
    assert agent.num_timesteps >= TIMESTEPS
    return list(monitored.get_episode_rewards())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ppo_learns_on_a_portal_env_exactly_as_in_process(server, tmp_path):
    remote = AgentSidePortal(env_name="custom", env_args=["CartPole-v1"], **server.kwargs())
    returns = train(remote, tmp_path / "portal")
    remote.close()
    # Same seeds, exact values over the wire: the same training, episode for episode.
    assert returns == train(gymnasium.make("CartPole-v1"), tmp_path / "local")
    first, last = np.mean(returns[:10]), np.mean(returns[-10:])
    assert last >= 2 * first, (first, last)  # it learns: longer episodes at the end


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
