"""Old-gym envs for the conversion tests, run inside a venv with gym 0.26.2 and Shimmy.

`python gym_compat_envs.py serve` serves them with the small server (the venv's path
holds the shim `portal_env` only, as an old runtime's would); `python gym_compat_envs.py
record SPEC SEED STEPS` prints (pickled, to the test that started it) the spaces and
the seeded trajectory Shimmy's GymV26CompatibilityV0 / GymV21CompatibilityV0 give.

SPEC is `v26:<gym id>` (gym 0.26's own API), `v25:<gym id>` (gym 0.25's, in a venv
with gym 0.25.2), `v21:<gym id>` (the same env behind the
gym <= 0.21 API: seed(), reset() -> obs, step() -> 4 values, render(mode=)), or
`v21:spaces` (an old-API env whose spaces are every kind old gym has, nested).
"""

import pickle
import sys

import gym
import numpy as np
from gym import spaces


class OldApiEnv:
    """A gym 0.26 env behind the gym <= 0.21 API (what Shimmy's LegacyV21Env describes)."""

    def __init__(self, env):
        self.env = env
        self.observation_space = env.observation_space
        self.action_space = env.action_space
        self.metadata = {"render.modes": ["rgb_array"], "video.frames_per_second": 30}
        self.spec = env.spec
        self._seed = None

    def seed(self, seed=None):
        self._seed = seed
        return [seed]

    def reset(self):
        obs, _ = self.env.reset(seed=self._seed)
        self._seed = None
        return obs

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if truncated:
            info["TimeLimit.truncated"] = not terminated
        return obs, reward, terminated or truncated, info

    def render(self, mode="human"):
        return np.zeros((2, 2, 3), np.uint8) if mode == "rgb_array" else None

    def close(self):
        self.env.close()


def every_space():
    """A gym Dict holding every kind of space old gym has, with exact dtypes and bounds."""
    return spaces.Dict(
        {
            "box": spaces.Box(np.array([-1.5, 0.0]), np.array([2.0, np.inf]), dtype=np.float64),
            "image": spaces.Box(0, 255, (3, 4, 2), np.uint8),
            "ints": spaces.Box(-3, 7, (2,), np.int16),
            "discrete": spaces.Discrete(5),
            "multi_discrete": spaces.MultiDiscrete([3, 4, 2]),
            "multi_binary": spaces.MultiBinary(6),
            "nested": spaces.Tuple(
                (
                    spaces.Discrete(3),
                    spaces.Dict({"inner": spaces.Box(-1.0, 1.0, (2, 2), np.float32)}),
                    spaces.MultiBinary([2, 3]),
                )
            ),
        }
    )


class SpacesEnv:
    """An old-API env whose observations (seeded samples) and actions are every kind."""

    metadata = {"render.modes": []}
    spec = None

    def __init__(self):
        self.observation_space = every_space()
        self.action_space = spaces.Tuple((spaces.Discrete(4), spaces.MultiDiscrete([2, 5])))
        self.t = 0

    def seed(self, seed=None):
        self.observation_space.seed(seed)
        return [seed]

    def reset(self):
        self.t = 0
        return self.observation_space.sample()

    def step(self, action):
        self.t += 1
        info = {"t": self.t, "action": action}
        if self.t == 5:
            info["TimeLimit.truncated"] = True
        return self.observation_space.sample(), float(self.t), self.t >= 5, info

    def render(self, mode="human"):
        return None

    def close(self):
        pass


def make(spec, **kwargs):
    api, _, name = spec.partition(":")
    if api in ("v26", "v25"):  # gym's own API, whichever gym this venv has
        return gym.make(name, **kwargs)
    if name == "spaces":
        return SpacesEnv()
    return OldApiEnv(gym.make(name, **kwargs))


def record(spec, seed, steps):
    """Shimmy's view of the env: its spaces and a seeded trajectory (actions sampled from
    Shimmy's action space, seeded too, and returned with it)."""
    import shimmy

    env = make(spec)
    if spec.startswith("v26:"):
        shimmed = shimmy.GymV26CompatibilityV0(env=env)
    else:  # gym <= 0.21's API, and gym 0.22-0.25's (it still has seed() and reset() -> obs)
        shimmed = shimmy.GymV21CompatibilityV0(env=env)
    shimmed.action_space.seed(seed)
    actions, out = [], [shimmed.reset(seed=seed)]
    for _ in range(steps):
        action = shimmed.action_space.sample()
        actions.append(action)
        result = shimmed.step(action)
        out.append(result)
        if result[2] or result[3]:
            out.append(shimmed.reset())
    return {
        "observation_space": shimmed.observation_space,
        "action_space": shimmed.action_space,
        "actions": actions,
        "trajectory": out,
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["record"]:
        result = record(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        sys.stdout.buffer.write(pickle.dumps(result))
    else:
        from portal_env import EnvSidePortal

        EnvSidePortal(env_factory=make).run()
