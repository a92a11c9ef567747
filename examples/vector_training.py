"""REINFORCE on 4 envs at once through one portal, with portal_env.make_vec and numpy only.

  portal-env start -p examples/cartpole_env cartpole -b venv -d
  python examples/vector_training.py cartpole CartPole-v1
  portal-env stop cartpole

A linear softmax policy (for Discrete actions and flat Box observations) is
trained with REINFORCE on normalized discounted returns, one update per batch
of finished episodes; episode statistics are printed as it learns. The vector
env steps all 4 envs in one round trip and resets an env on the step after its
episode ended (gymnasium 1.x next-step autoreset): that step belongs to no
episode, so it is skipped.
"""

import sys
from collections import deque
from typing import List, Tuple

import numpy as np

import portal_env

NUM_ENVS, TOTAL_STEPS, EPISODES_PER_UPDATE = 4, 60_000, 8
LEARNING_RATE, GAMMA = 0.05, 0.99
Step = Tuple[np.ndarray, int, np.ndarray, float]  # features, action, probs, reward


class LinearPolicy:
    """pi(a | s) = softmax(W^T [s, 1])."""

    def __init__(self, obs_dim: int, num_actions: int, seed: int) -> None:
        self.weights = np.zeros((obs_dim + 1, num_actions))
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sampled actions, their features and the action probabilities, per env."""
        features = np.concatenate([obs, np.ones((len(obs), 1))], axis=1)
        logits = features @ self.weights
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        actions = np.array([self.rng.choice(len(p), p=p) for p in probs])
        return actions, features, probs

    def update(self, episodes: List[List[Step]]) -> None:
        """One REINFORCE step on a batch of finished episodes."""
        steps = [step for episode in episodes for step in episode]
        returns = np.concatenate([discounted(episode) for episode in episodes])
        advantages = (returns - returns.mean()) / (returns.std() + 1e-8)
        grad = np.zeros_like(self.weights)
        for (features, action, probs, _), advantage in zip(steps, advantages):
            score = -np.outer(features, probs)  # d log pi(a|s) / dW
            score[:, action] += features
            grad += advantage * score
        self.weights += LEARNING_RATE * grad / len(episodes)


def discounted(episode: List[Step]) -> np.ndarray:
    """The discounted return from each step of an episode to its end."""
    returns, total = np.zeros(len(episode)), 0.0
    for t in reversed(range(len(episode))):
        total = episode[t][3] + GAMMA * total
        returns[t] = total
    return returns


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "cartpole"
    env_id = sys.argv[2] if len(sys.argv) > 2 else "CartPole-v1"
    with portal_env.make_vec(name, num_envs=NUM_ENVS, env_args=[env_id]) as envs:
        train(envs)


def train(envs: portal_env.PortalVectorEnv) -> None:
    """Train a LinearPolicy on envs, printing episode statistics every 10 updates."""
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    policy = LinearPolicy(obs_dim, int(envs.single_action_space.n), seed=0)
    obs, _ = envs.reset(seed=0)
    running = [[] for _ in range(NUM_ENVS)]  # the unfinished episode of each env
    finished: List[List[Step]] = []
    recent = deque(maxlen=50)  # (return, length) of the latest episodes
    skip = np.zeros(NUM_ENVS, dtype=bool)  # this step is an autoreset step
    updates, episodes = 0, 0
    for _ in range(TOTAL_STEPS // NUM_ENVS):
        actions, features, probs = policy.act(obs.reshape(NUM_ENVS, -1))
        obs, rewards, terminated, truncated, _ = envs.step(actions)
        done = terminated | truncated
        for i in np.flatnonzero(~skip):
            running[i].append((features[i], int(actions[i]), probs[i], float(rewards[i])))
            if done[i]:
                recent.append((sum(s[3] for s in running[i]), len(running[i])))
                finished.append(running[i])
                running[i], episodes = [], episodes + 1
        skip = done
        if len(finished) >= EPISODES_PER_UPDATE:
            policy.update(finished)
            finished, updates = [], updates + 1
            if updates % 10 == 0:
                returns = [r for r, _ in recent]
                print(
                    f"update {updates:3d}  episodes {episodes:4d}  "
                    f"return mean {np.mean(returns):6.1f}  min {min(returns):5.1f}  "
                    f"max {max(returns):5.1f}  length mean {np.mean([n for _, n in recent]):6.1f}"
                )


if __name__ == "__main__":
    main()
