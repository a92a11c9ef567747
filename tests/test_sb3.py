"""The seed README's first example: Stable-Baselines3 PPO trains on a portal env unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Tuple

import gymnasium
import numpy as np
import pytest

from portal_env import AgentSidePortal

TIMESTEPS = 4096


def train_and_evaluate(env: gymnasium.Env, log_dir: Path) -> Tuple[List[float], List[float]]:
    """Seeded PPO: deterministic returns on three seeded episodes before and after training."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import configure

    agent = PPO("MlpPolicy", env, n_steps=256, batch_size=64, n_epochs=4, seed=0, device="cpu")
    agent.set_logger(configure(str(log_dir), []))  # else SB3 leaves /tmp/SB3-* dirs
    before = evaluate(agent, env)
    agent.learn(total_timesteps=TIMESTEPS)
    assert agent.num_timesteps >= TIMESTEPS
    return before, evaluate(agent, env)


def evaluate(agent: Any, env: gymnasium.Env) -> List[float]:
    returns = []
    for episode in range(3):
        obs, _ = env.reset(seed=100 + episode)
        total, done = 0.0, False
        while not done:
            action, _ = agent.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    return returns


@pytest.mark.slow
def test_ppo_learns_on_a_portal_env_exactly_as_in_process(server, tmp_path):
    remote = AgentSidePortal(env_name="custom", env_args=["CartPole-v1"], **server.kwargs())
    before, after = train_and_evaluate(remote, tmp_path / "portal")
    remote.close()
    local_before, local_after = train_and_evaluate(
        gymnasium.make("CartPole-v1"), tmp_path / "local"
    )
    # Same seeds, exact values over the wire: the same training, return for return.
    assert (before, after) == (local_before, local_after)
    assert np.mean(after) >= 2 * np.mean(before) and np.mean(after) >= 100, (before, after)


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
