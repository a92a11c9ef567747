"""The optional env-side hook that lets an env write its next observation into shared memory.

An env (or any of its wrappers) may define ``set_observation_buffer(out)``: from
then on, until it is called again with None, the next observation it returns
should be written into the numpy array ``out`` and ``out`` itself returned. The
server calls it around a fast-path step of a single env whose observations go
through shared memory, so the frame is written once, where the agent reads it.
Custom envs never need it; an env that does not return ``out`` simply has its
observation copied, as without the hook. It must not be combined with wrappers
that keep past observations (frame stacks), which would see them overwritten.

``ale_screen_into`` installs it on ale-py's AtariEnv, whose ALE can write the
screen into a given array (``getScreenRGB(out)``, ``getScreenGrayscale(out)``).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import numpy as np

logger = logging.getLogger(__name__)

HOOK = "set_observation_buffer"


def find_hook(env: Any) -> Optional[Callable[[Optional[np.ndarray]], None]]:
    """The env's set_observation_buffer, searched through its wrappers; None if it has none."""
    getter = getattr(env, "get_wrapper_attr", None)
    try:
        hook = getter(HOOK) if getter else getattr(env, HOOK)
    except AttributeError:
        return None
    return hook if callable(hook) else None


def ale_screen_into(env: Any) -> Any:
    """Give ale-py's AtariEnv (rgb or grayscale, no sound) the hook; returns env.

    Other envs are returned unchanged.
    """
    atari = getattr(env, "unwrapped", env)
    kind = getattr(atari, "_obs_type", None)
    if (
        not hasattr(atari, "ale")
        or kind not in ("rgb", "grayscale")
        or getattr(atari, "sound_obs", False)
    ):
        return env
    original = atari._get_obs
    read = atari.ale.getScreenRGB if kind == "rgb" else atari.ale.getScreenGrayscale
    state = {"out": None}

    def set_observation_buffer(out: Optional[np.ndarray]) -> None:
        state["out"] = out

    def get_obs() -> Any:
        out = state["out"]
        if out is None:
            return original()
        read(out)
        atari.portal_screen_writes += 1
        return out

    atari.portal_screen_writes = 0  # how many frames went straight to shared memory
    atari.set_observation_buffer = set_observation_buffer
    atari._get_obs = get_obs
    return env
