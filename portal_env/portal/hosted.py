"""The env-side objects one agent connection controls: a single env or a batch.

Imported inside isolated runtimes, which may carry an older gymnasium: only the
standard library, numpy and gymnasium here.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from . import fastpath, spaces

EnvFactory = Callable[..., Any]


def _get_attr(env: Any, name: str) -> Any:
    # gymnasium>=1.0 wrappers no longer forward attribute access to the inner env.
    getter = getattr(env, "get_wrapper_attr", None)
    return getter(name) if getter else getattr(env, name)


def _set_attr(env: Any, name: str, value: Any) -> None:
    setter = getattr(env, "set_wrapper_attr", None)
    if setter:
        setter(name, value)
    else:
        setattr(env.unwrapped, name, value)


def _call(env: Any, name: str, args: Sequence[Any], kwargs: Dict[str, Any]) -> Any:
    attr = _get_attr(env, name)
    return attr(*args, **kwargs) if callable(attr) else attr


def _describe(env: Any) -> Dict[str, Any]:
    spec = getattr(env, "spec", None)
    return {
        "observation_space": spaces.encode_space(env.observation_space),
        "action_space": spaces.encode_space(env.action_space),
        "metadata": dict(getattr(env, "metadata", {}) or {}),
        "render_mode": getattr(env, "render_mode", None),
        "spec_id": getattr(spec, "id", None),
    }


class HostedEnv:
    """One environment instance, driven op by op."""

    def __init__(self, factory: EnvFactory, args: Sequence[Any], kwargs: Dict[str, Any]) -> None:
        self.env = factory(*args, **kwargs)

    def describe(self) -> Dict[str, Any]:
        return _describe(self.env)

    def layout(self) -> fastpath.EnvLayout:
        return fastpath.EnvLayout(self.env.observation_space, self.env.action_space)

    def reset(self, seed: Optional[int], options: Optional[dict]) -> Any:
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> Any:
        return self.env.step(action)

    def render(self) -> Any:
        return self.env.render()

    def call(self, name: str, args: Sequence[Any], kwargs: Dict[str, Any]) -> Any:
        return _call(self.env, name, args, kwargs)

    def get_attr(self, name: str) -> Any:
        return _get_attr(self.env, name)

    def set_attr(self, name: str, value: Any) -> None:
        _set_attr(self.env, name, value)

    def close(self) -> None:
        self.env.close()


class HostedVectorEnv:
    """N instances stepped together, with gymnasium 1.x next-step autoreset.

    Observations are batched here (one array per step crosses the wire); infos
    go back as a list and are merged by the agent's own gymnasium.
    """

    def __init__(
        self, factory: EnvFactory, num_envs: int, args: Sequence[Any], kwargs: Dict[str, Any]
    ) -> None:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        self.envs: List[Any] = []
        try:
            for _ in range(num_envs):
                self.envs.append(factory(*args, **kwargs))
        except BaseException:
            self.close()
            raise
        first = self.envs[0]
        self.single_observation_space = first.observation_space
        self.action_space = batch_space(first.action_space, num_envs)
        self.autoreset = np.zeros(num_envs, dtype=np.bool_)

    def describe(self) -> Dict[str, Any]:
        return _describe(self.envs[0])

    def layout(self) -> fastpath.VectorLayout:
        first = self.envs[0]
        return fastpath.VectorLayout(first.observation_space, first.action_space, len(self.envs))

    def _batch(self, observations: Sequence[Any]) -> Any:
        out = create_empty_array(self.single_observation_space, len(self.envs), fn=np.empty)
        return concatenate(self.single_observation_space, observations, out)

    def reset(self, seeds: Sequence[Optional[int]], options: Optional[dict]) -> Any:
        if len(seeds) != len(self.envs):
            raise ValueError(f"got {len(seeds)} seeds for {len(self.envs)} envs")
        results = [env.reset(seed=s, options=options) for env, s in zip(self.envs, seeds)]
        self.autoreset[:] = False
        return [self._batch([r[0] for r in results]), [r[1] for r in results]]

    def step(self, actions: Any) -> Any:
        n = len(self.envs)
        observations, infos = [], []
        rewards = np.zeros(n, dtype=np.float64)
        terminations = np.zeros(n, dtype=np.bool_)
        truncations = np.zeros(n, dtype=np.bool_)
        for i, (env, action) in enumerate(zip(self.envs, iterate(self.action_space, actions))):
            if self.autoreset[i]:
                obs, info = env.reset()
            else:
                obs, rewards[i], terminations[i], truncations[i], info = env.step(action)
            observations.append(obs)
            infos.append(info)
        self.autoreset = terminations | truncations
        return [self._batch(observations), rewards, terminations, truncations, infos]

    def render(self) -> Any:
        return tuple(env.render() for env in self.envs)

    def call(self, name: str, args: Sequence[Any], kwargs: Dict[str, Any]) -> Any:
        return tuple(_call(env, name, args, kwargs) for env in self.envs)

    def get_attr(self, name: str) -> Any:
        return tuple(_get_attr(env, name) for env in self.envs)

    def set_attr(self, name: str, values: Sequence[Any]) -> None:
        for env, value in zip(self.envs, values):
            _set_attr(env, name, value)

    def close(self) -> None:
        for env in self.envs:
            env.close()
