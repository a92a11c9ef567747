"""The env-side object one agent connection controls for a single env (a vector env's is
vector.hosted.HostedVectorEnv).

Imported inside isolated runtimes, which may carry an older gymnasium: only the
standard library, numpy and gymnasium here.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

from . import fastpath, screenbuf, spaces

EnvFactory = Callable[..., Any]


def get_attr(env: Any, name: str) -> Any:
    # gymnasium>=1.0 wrappers no longer forward attribute access to the inner env.
    getter = getattr(env, "get_wrapper_attr", None)
    return getter(name) if getter else getattr(env, name)


def set_attr(env: Any, name: str, value: Any) -> None:
    setter = getattr(env, "set_wrapper_attr", None)
    if setter:
        setter(name, value)
    else:
        setattr(env.unwrapped, name, value)


def call(env: Any, name: str, args: Sequence[Any], kwargs: Dict[str, Any]) -> Any:
    attr = get_attr(env, name)
    return attr(*args, **kwargs) if callable(attr) else attr


def describe(facts: Dict[str, Any]) -> Dict[str, Any]:
    """An env's facts with its spaces encoded for the wire."""
    return dict(
        facts,
        observation_space=spaces.encode_space(facts["observation_space"]),
        action_space=spaces.encode_space(facts["action_space"]),
    )


class HostedEnv:
    """One environment instance, driven op by op."""

    def __init__(self, factory: EnvFactory, args: Sequence[Any], kwargs: Dict[str, Any]) -> None:
        self.env = factory(*args, **kwargs)
        self._into = screenbuf.find_hook(self.env)  # the env can write into shared memory
        self._layout: Optional[fastpath.EnvLayout] = None

    def describe(self) -> Dict[str, Any]:
        env = self.env
        return describe(
            {
                "observation_space": env.observation_space,
                "action_space": env.action_space,
                "metadata": dict(getattr(env, "metadata", {}) or {}),
                "render_mode": getattr(env, "render_mode", None),
                "spec_id": getattr(getattr(env, "spec", None), "id", None),
            }
        )

    def layout(self) -> fastpath.EnvLayout:
        self._layout = fastpath.EnvLayout(self.env.observation_space, self.env.action_space)
        return self._layout

    def reset(self, seed: Optional[int], options: Optional[dict]) -> Any:
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> Any:
        target = self._layout.obs_target() if self._into and self._layout else None
        if target is None:
            return self.env.step(action)
        self._into(target)  # a fast-path step: the env writes its frame where the agent reads
        try:
            return self.env.step(action)
        finally:
            self._into(None)

    def render(self) -> Any:
        return self.env.render()

    def call(self, name: str, args: Sequence[Any], kwargs: Dict[str, Any]) -> Any:
        return call(self.env, name, args, kwargs)

    def get_attr(self, name: str) -> Any:
        return get_attr(self.env, name)

    def set_attr(self, name: str, value: Any) -> None:
        set_attr(self.env, name, value)

    def close(self) -> None:
        self.env.close()
