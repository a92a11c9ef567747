"""Environments for the tests, registered with gymnasium under PortalTest/*."""

from __future__ import annotations

import os
import time

import ale_py
import gymnasium
import numpy as np
from gymnasium import spaces

gymnasium.register_envs(ale_py)  # ALE/Pong-v5 for the slow tests


class RichEnv(gymnasium.Env):
    """Dict/Tuple observations and infos holding every value type the codec keeps exact."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, render_mode=None):
        self.render_mode = render_mode
        self.observation_space = spaces.Dict(
            {
                "pos": spaces.Box(-1.0, 1.0, (3,), np.float64),
                "grid": spaces.Box(0, 255, (4, 5), np.uint8),
                "pair": spaces.Tuple((spaces.Discrete(5, start=2), spaces.MultiBinary((2, 2)))),
                "count": spaces.Discrete(100),
            }
        )
        self.action_space = spaces.MultiDiscrete([3, 4], start=[-1, 0])
        self.t = 0
        self.label = "initial"

    def _obs(self):
        return self.observation_space.sample()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(int(self.np_random.integers(1 << 30)))
        self.t = 0
        return self._obs(), {"options": options, "seeded": seed is not None}

    def step(self, action):
        self.t += 1
        info = {
            "t": self.t,
            "np_int": np.int16(self.t),
            "np_float": np.float32(0.5),
            "flag": np.bool_(self.t % 2 == 0),
            "tuple": (1, "two", b"three", None),
            "list": [1.5, [2, (3,)]],
            "nested": {"a": {"b": np.arange(3, dtype=np.int8)}},
            "action": action,
        }
        reward = float(self.np_random.normal())
        return self._obs(), reward, self.t >= 7, False, info

    def render(self):
        return np.full((8, 6, 3), self.t, dtype=np.uint8)

    def double(self, x, scale=2):
        return x * scale


class FaultyEnv(gymnasium.Env):
    """Raises inside the env on demand, to test remote error reporting."""

    observation_space = spaces.Box(0.0, 1.0, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, fail_in=None, render_mode=None):
        if fail_in == "init":
            raise RuntimeError("factory failed on purpose")
        self.fail_in = fail_in
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if self.fail_in == "reset":
            raise ValueError("reset failed on purpose")
        return np.zeros(2, np.float32), {}

    def step(self, action):
        if action == 1:
            self._explode()
        return np.zeros(2, np.float32), 0.0, False, False, {}

    def _explode(self):
        raise ZeroDivisionError("step failed on purpose")

    def render(self):
        raise KeyError("render failed on purpose")


class BigEnv(gymnasium.Env):
    """A 16 MB observation (4096 x 1024 float32)."""

    observation_space = spaces.Box(0.0, 1.0, (4096, 1024), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action):
        return self._obs(), 1.0, False, False, {}

    def _obs(self):
        return self.np_random.random((4096, 1024), dtype=np.float32)


class TypedEnv(gymnasium.Env):
    """Box obs and Discrete actions (the fast step layout), but cycling through every
    reward and flag type, empty and full infos, and now and then an observation
    outside the space's dtype, so that both the fast path and its fallback run."""

    observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = spaces.Discrete(3)
    REWARDS = (1.5, 2, np.float64(0.25), np.float32(-0.5), 2**60, np.int64(3))
    FLAGS = (False, np.False_)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.random(3, dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        obs = self.np_random.random(3, dtype=np.float32)
        if self.t % 7 == 0:
            obs = obs.astype(np.float64)  # outside the layout: general codec
        reward = self.REWARDS[self.t % len(self.REWARDS)]
        flag = self.FLAGS[self.t % 2]
        info = {"t": self.t, "action": action} if self.t % 3 else {}
        return obs, reward, flag if self.t < 20 else True, flag, info


class ScreenEnv(gymnasium.Env):
    """VizDoom-like: a Dict observation with a 230 KB screen and a small vector."""

    action_space = spaces.Discrete(3)

    def __init__(self):
        self.observation_space = spaces.Dict(
            {
                "screen": spaces.Box(0, 255, (240, 320, 3), np.uint8),
                "vars": spaces.Box(-1.0, 1.0, (2,), np.float32),
            }
        )

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(int(self.np_random.integers(1 << 30)))
        return self.observation_space.sample(), {"frame": np.zeros((64, 64, 3), np.uint8)}

    def step(self, action):
        self.observation_space.seed(int(self.np_random.integers(1 << 30)))
        return self.observation_space.sample(), 1.0, False, False, {}


class SlowEnv(gymnasium.Env):
    """Sleeps `delay` seconds per step (settable per instance) and tells its process id.

    With `gate` set to a named pipe (per instance), its next step waits until the test
    opens the pipe for writing and closes it: a slow instance the test releases.
    """

    gate = None

    observation_space = spaces.Box(0.0, 1e6, (2,), np.float64)
    action_space = spaces.Discrete(2)

    def __init__(self, delay=0.0):
        self.delay = delay
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([self.t, self.delay]), {}

    def step(self, action):
        if self.gate is not None:
            gate, self.gate = self.gate, None
            with open(gate, "rb") as pipe:  # blocks until the test opens the other end
                pipe.read()
        time.sleep(self.delay)
        self.t += 1
        return np.array([self.t, self.delay]), float(action), self.t >= 5, False, {"t": self.t}

    def pid(self):
        return os.getpid()


class InfosEnv(gymnasium.Env):
    """MuJoCo-like infos: the same keys and types step after step, then now and then
    a change (a new key, another type) and back."""

    observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.random(3, dtype=np.float32), {"x_position": 0.0}

    fail_at = None  # a step number at which step raises, once (set_attr per instance)

    def step(self, action):
        if self.fail_at == self.t + 1:
            self.fail_at = None
            raise ValueError(f"step {self.t + 1} failed on purpose")
        self.t += 1
        x = float(self.np_random.normal())
        info = {"x_position": x, "reward_run": np.float64(x / 2), "t": np.int64(self.t)}
        phase = self.t % 10
        if phase == 7:
            info["note"] = "a string is not packed"
        elif phase == 8:
            info["reward_run"] = np.float32(x)
        elif phase == 9:
            info["t"] = self.t  # a Python int now
        obs = self.np_random.random(3, dtype=np.float32)
        return obs, x, self.t >= 33, False, info


class BusyEnv(gymnasium.Env):
    """Keeps its core busy for `cost` seconds per step (a busy wait, as an env's own
    computation would): a step of a known, fixed cost."""

    observation_space = spaces.Box(0.0, 1e6, (2,), np.float64)
    action_space = spaces.Discrete(2)

    def __init__(self, cost=0.0):
        self.cost = cost
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([self.t, self.cost]), {}

    def step(self, action):
        end = time.perf_counter() + self.cost
        while time.perf_counter() < end:
            pass
        self.t += 1
        return np.array([self.t, self.cost]), float(action), False, self.t >= 200, {}


gymnasium.register("PortalTest/Infos-v0", entry_point=InfosEnv, disable_env_checker=True)
gymnasium.register("PortalTest/Slow-v0", entry_point=SlowEnv, disable_env_checker=True)
gymnasium.register("PortalTest/Screen-v0", entry_point=ScreenEnv, max_episode_steps=25)
gymnasium.register("PortalTest/Typed-v0", entry_point=TypedEnv, disable_env_checker=True)
gymnasium.register("PortalTest/Rich-v0", entry_point=RichEnv, max_episode_steps=50)
gymnasium.register("PortalTest/Faulty-v0", entry_point=FaultyEnv, disable_env_checker=True)
gymnasium.register("PortalTest/Big-v0", entry_point=BigEnv)
gymnasium.register("PortalTest/Busy-v0", entry_point=BusyEnv, disable_env_checker=True)
# Gymnasium's own TESTING_SPACES, one env per space (tests/gymnasium_spaces.py).
gymnasium.register("PortalTest/Space-v0", entry_point="tests.gymnasium_spaces:SpaceEnv")


def make(*args, screen_into=False, **kwargs):
    """The factory the test servers serve: gymnasium.make with the test envs registered.

    screen_into=True gives ALE envs the hook that writes frames into shared memory.
    """
    env = gymnasium.make(*args, **kwargs)
    if screen_into:
        from portal_env.portal.screenbuf import ale_screen_into

        env = ale_screen_into(env)
    return env
