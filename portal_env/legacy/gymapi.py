"""Whatever env API the factory returns, answered with Gymnasium 1.x semantics.

Python 2.7 and 3.5+. The agent always sees the Gymnasium API, so the conversion
happens here, where the env runs, and the wire carries Gymnasium semantics. It
follows Shimmy's `GymV21CompatibilityV0` and `GymV26CompatibilityV0`:

- gym <= 0.21 (and objects with its API): `reset(seed=s)` calls `seed(s)` then
  `reset()` and answers `(obs, {})` (options are ignored, with a warning);
  a step's `done` becomes `terminated = done and not truncated` and
  `truncated = done and truncated`, where `truncated` is popped from
  `info["TimeLimit.truncated"]`; `render()` is `render(mode=render_mode)`; with
  render_mode "human" the env renders after each reset and step.
- gym 0.22-0.25: `reset(seed=, options=, return_info=True)`; a four-value step as
  above (a five-value one, gym 0.25's new step API, passes as it is).
- gym 0.26 and gymnasium: passed through, after stripping gym's default render
  wrappers as Shimmy does.

Deliberate differences from Shimmy: Discrete's `start` and MultiDiscrete's dtype
are kept (Shimmy drops them); with render_mode "rgb_array" a V21 env is not
rendered after every step (Shimmy renders and discards the frame); and an old
env's observation arrays come in their Box's dtype (gym 0.15's CartPole returns
float64 for a float32 Box, which Gymnasium's check_env refuses), cast only within
a kind (float to float, int to int).

Spaces are described in the plain form `portal_env.portal.spaces.encode_space`
makes, so the agent rebuilds exact gymnasium spaces from gym's (or gymnasium's).
"""

import inspect
import logging
import sys

import numpy as np

logger = logging.getLogger(__name__)

V21, V22, V26 = "gym<=0.21", "gym 0.22-0.25", "gym 0.26/gymnasium"


class UnsupportedSpace(Exception):
    """A space of a class the small server cannot describe."""

    reported_as = "portal_env.errors.UnsupportedSpaceError"  # what the agent sees


# -- spaces ------------------------------------------------------------------------------


def describe_space(space):
    """The plain description of a gym or gymnasium space (encode_space's form)."""
    kind = _kind(space)
    if kind is None:
        cls = space.__class__
        raise UnsupportedSpace(
            "cannot describe a space of type %s.%s; the small server describes %s"
            % (cls.__module__, cls.__name__, ", ".join(sorted(_DESCRIBERS)))
        )
    return _DESCRIBERS[kind](space)


def _box(space):
    low, high = np.array(space.low), np.array(space.high)
    below = getattr(space, "bounded_below", None)
    above = getattr(space, "bounded_above", None)
    return {
        "type": "Box",
        "low": low,
        "high": high,
        "shape": [int(d) for d in space.shape],
        "dtype": space.dtype.str,
        "bounded_below": np.array(-np.inf < low if below is None else below, dtype=bool),
        "bounded_above": np.array(high < np.inf if above is None else above, dtype=bool),
    }


def _discrete(space):
    dtype = getattr(space, "dtype", None)
    return {
        "type": "Discrete",
        "n": int(space.n),
        "start": int(getattr(space, "start", 0)),
        "dtype": np.dtype(np.int64).str if dtype is None else dtype.str,
    }


def _multi_discrete(space):
    nvec = np.array(space.nvec)
    return {
        "type": "MultiDiscrete",
        "nvec": nvec,
        "start": np.array(getattr(space, "start", np.zeros_like(nvec))),
        "dtype": space.dtype.str,
    }


def _multi_binary(space):
    n = space.n
    return {"type": "MultiBinary", "n": int(n) if np.ndim(n) == 0 else [int(d) for d in n]}


def _tuple(space):
    return {"type": "Tuple", "spaces": [describe_space(s) for s in space.spaces]}


def _dict(space):
    return {
        "type": "Dict",
        "spaces": [[key, describe_space(s)] for key, s in space.spaces.items()],
        "sort_keys": bool(getattr(space, "sort_keys", True)),
    }


def _text(space):
    chars = getattr(space, "character_list", None)
    charset = "".join(chars) if chars is not None else space._char_str
    return {
        "type": "Text",
        "min_length": int(space.min_length),
        "max_length": int(space.max_length),
        "charset": charset,
    }


def _sequence(space):
    return {
        "type": "Sequence",
        "space": describe_space(space.feature_space),
        "stack": bool(getattr(space, "stack", False)),
    }


def _graph(space):
    edge = None if space.edge_space is None else describe_space(space.edge_space)
    return {"type": "Graph", "node_space": describe_space(space.node_space), "edge_space": edge}


_DESCRIBERS = {
    "Box": _box,
    "Discrete": _discrete,
    "MultiDiscrete": _multi_discrete,
    "MultiBinary": _multi_binary,
    "Tuple": _tuple,
    "Dict": _dict,
    "Text": _text,
    "Sequence": _sequence,
    "Graph": _graph,
}


# -- the env API -------------------------------------------------------------------------


def _version(module):
    parts = []
    for part in getattr(module, "__version__", "0").split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def api_of(env):
    """Which API env speaks: V21, V22 or V26."""
    gymnasium = sys.modules.get("gymnasium")
    if gymnasium is not None and isinstance(env, gymnasium.Env):
        return V26
    gym = sys.modules.get("gym")
    if gym is not None and isinstance(env, gym.Env):
        version = _version(gym)
        return V21 if version < (0, 22) else V22 if version < (0, 26) else V26
    if _takes(env.reset, "seed"):  # a plain object: by its reset's signature
        return V22
    return V21


def _takes(method, name):
    try:
        from inspect import signature  # novm (Python 3 only; 2 takes the except)
    except ImportError:  # Python 2
        from inspect import getargspec

        try:
            return name in getargspec(method).args
        except TypeError:
            return False
    try:
        return name in signature(method).parameters
    except (TypeError, ValueError):
        return False


def strip_default_wrappers(env):
    """gym 0.26's render wrappers that `make` may add, removed (as Shimmy does)."""
    wrappers = sys.modules.get("gym.wrappers")
    kinds = tuple(
        getattr(getattr(wrappers, module, None), cls, None)
        for module, cls in (
            ("render_collection", "RenderCollection"),
            ("human_rendering", "HumanRendering"),
        )
    )
    kinds = tuple(kind for kind in kinds if kind is not None)
    while kinds and isinstance(env, kinds):
        env = env.env
    return env


def conform(value, space):
    """value with each array of a Box (in Dict and Tuple too) in that Box's dtype."""
    kind = _kind(space)
    if kind == "Box":
        dtype = space.dtype
        if isinstance(value, np.ndarray) and value.dtype != dtype:
            if np.can_cast(value.dtype, dtype, "same_kind"):
                return value.astype(dtype)
        return value
    if kind == "Dict" and isinstance(value, dict):
        parts = space.spaces
        return type(value)((k, conform(v, parts[k]) if k in parts else v) for k, v in value.items())
    if kind == "Tuple" and isinstance(value, tuple) and type(value) is tuple:
        return tuple(conform(v, s) for v, s in zip(value, space.spaces))
    return value


def _kind(space):
    """The known space class space is (or derives from), by name: gym's, gymnasium's, or a
    look-alike (`__class__` and getmro: Python 2's old-style classes too)."""
    for base in inspect.getmro(space.__class__):
        if base.__name__ in _DESCRIBERS:
            return base.__name__
    return None


def terminated_truncated(result):
    """A step result as (obs, reward, terminated, truncated, info), Gymnasium's rule."""
    if len(result) == 5:
        return tuple(result)
    if len(result) != 4:
        raise ValueError("a step returned %d values; expected 4 or 5" % len(result))
    obs, reward, done, info = result
    truncated = info.pop("TimeLimit.truncated", False)
    return obs, reward, done and not truncated, done and truncated, info


class GymnasiumView(object):
    """An env of any supported API, driven with Gymnasium 1.x calls and results."""

    def __init__(self, env, render_mode=None):
        self.api = api_of(env)
        if self.api == V26 and "gymnasium" not in type(env).__module__:
            env = strip_default_wrappers(env)
        self.env = env
        gym = sys.modules.get("gym")
        self._gym_env = gym is not None and isinstance(env, gym.Env)
        self.render_mode = getattr(env, "render_mode", None) if self.api == V26 else render_mode

    def describe(self):
        env = self.env
        spec = getattr(env, "spec", None)
        return {
            "observation_space": describe_space(env.observation_space),
            "action_space": describe_space(env.action_space),
            "metadata": dict(getattr(env, "metadata", {}) or {}),
            "render_mode": self.render_mode,
            "spec_id": getattr(spec, "id", None),
        }

    def reset(self, seed, options):
        if self.api == V26:
            return tuple(self.env.reset(seed=seed, options=options))
        obs, info = self._reset_old(seed, options)
        return conform(obs, self.env.observation_space), info

    def _reset_old(self, seed, options):
        if self.api == V22:
            if self._gym_env:  # gym 0.22-0.25 returns (obs, info) when asked
                result = self.env.reset(seed=seed, options=options, return_info=True)
            else:  # an object with reset(seed=...): whatever it returns
                result = self.env.reset(seed=seed, options=options)
            return tuple(result) if _is_obs_info(result) else (result, {})
        if seed is not None:
            self.env.seed(seed)
        if options is not None:
            logger.warning("gym<=0.21 envs take no reset options; ignored %r", options)
        obs = self.env.reset()
        if self.render_mode == "human":
            self.render()
        return obs, {}

    def step(self, action):
        if self.api == V26:
            return tuple(self.env.step(action))
        obs, reward, terminated, truncated, info = terminated_truncated(self.env.step(action))
        if self.api == V21 and self.render_mode == "human":
            self.render()
        return conform(obs, self.env.observation_space), reward, terminated, truncated, info

    def render(self):
        if self.api == V26:
            return self.env.render()
        return self.env.render(mode=self.render_mode)

    def close(self):
        self.env.close()


def _is_obs_info(result):
    return type(result) is tuple and len(result) == 2 and isinstance(result[1], dict)
