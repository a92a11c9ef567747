"""A portal server for the security tests: the test envs plus hostile ones.

Settings come from PORTAL_ENV_* variables, and max_pending from TEST_MAX_PENDING.
Run as a script (like an env's env_main.py), so it logs INFO lines to stderr.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gymnasium  # noqa: E402

from portal_env import EnvSidePortal  # noqa: E402
from tests import envs  # noqa: E402


class Marker:
    """Unpickling this creates the file at path: code chosen by the sender runs."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class InfoEnv(gymnasium.Wrapper):
    """CartPole whose reset and step infos carry `value` under the key 'payload'."""

    def __init__(self, value):
        super().__init__(gymnasium.make("CartPole-v1"))
        self.value = value

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, dict(info, payload=self.value)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, dict(info, payload=self.value)


def make(*args, **kwargs):
    if args and args[0] == "Hostile/MarkerInfo":  # a compromised env: code in its info
        return InfoEnv(Marker(args[1]))
    if args and args[0] == "Hostile/SetInfo":  # an honest env with an unusual info value
        return InfoEnv({1, 2})
    return envs.make(*args, **kwargs)


if __name__ == "__main__":
    EnvSidePortal(env_factory=make, max_pending=int(os.environ.get("TEST_MAX_PENDING", "64"))).run()
