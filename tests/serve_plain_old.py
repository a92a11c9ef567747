"""A small server on an old interpreter (2.7, 3.6, 3.7 here), serving a plain env of the
gym <= 0.21 API that needs nothing but numpy: run with the shim `portal_env` on the path.

Also imported by the tests on this host's Python, to run the same env in-process.
"""

import numpy as np

from portal_env import EnvSidePortal


class Box(object):
    """Named and shaped like gym's Box (the small server describes spaces by class)."""

    def __init__(self, low, high, dtype):
        self.low, self.high = np.asarray(low, dtype), np.asarray(high, dtype)
        self.shape, self.dtype = self.low.shape, np.dtype(dtype)


class Discrete(object):
    def __init__(self, n):
        self.n, self.dtype = n, np.dtype(np.int64)


class Walker(object):
    """A seeded random walk: seed(), reset() -> obs, step() -> (obs, reward, done, info),
    with gym's TimeLimit.truncated after `limit` steps."""

    metadata = {"render.modes": ["ansi"]}

    def __init__(self, limit=25):
        self.observation_space = Box([-np.inf, -1.0], [np.inf, 1.0], np.float32)
        self.action_space = Discrete(3)
        self.limit = limit
        self.rng = np.random.RandomState(0)

    def seed(self, seed=None):
        self.rng = np.random.RandomState(seed)
        return [seed]

    def reset(self):
        self.t, self.x = 0, 0.0
        return self._obs()

    def _obs(self):
        return np.array([self.x, self.rng.uniform(-1, 1)], np.float64)  # float64: cast on the way

    def step(self, action):
        if action not in (0, 1, 2):
            raise ValueError("action %r is not 0, 1 or 2" % (action,))
        self.t += 1
        self.x += float(action - 1) + self.rng.normal()
        done = abs(self.x) > 6 or self.t >= self.limit
        info = {"t": self.t, "name": "walker"}
        if self.t >= self.limit:
            info["TimeLimit.truncated"] = abs(self.x) <= 6
        return self._obs(), -abs(self.x), done, info

    def render(self, mode="human"):
        return "x=%.3f" % self.x

    def close(self):
        pass


def make(*args, **kwargs):
    return Walker(**kwargs)


if __name__ == "__main__":
    EnvSidePortal(env_factory=make).run()
