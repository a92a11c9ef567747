"""Serve Flappy Bird (flappy-bird-env), headless.

Start it:  portal-env start flappy-bird -b venv
Use it:    AgentSidePortal("flappy-bird", env_args=["FlappyBird-v0"])
"""

import os

# pygame needs a video driver even to draw into an off-screen surface; the
# server has no display, so SDL's dummy driver is used. It must be set before
# pygame is imported (flappy_bird_env imports it).
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import flappy_bird_env  # noqa: E402, F401  (registers FlappyBird-v0 with gymnasium)
import gymnasium  # noqa: E402

from portal_env import EnvSidePortal  # noqa: E402


def make(env_id: str = "FlappyBird-v0", **kwargs: object) -> gymnasium.Env:
    """gymnasium.make(env_id, **kwargs) with render_mode="rgb_array" by default.

    FlappyBirdEnv's observations are the pixels of the surface it draws on, and
    it makes that surface only when a render_mode is set: with the default
    (None) reset() fails. "human" would open a window, so "rgb_array" it is.
    """
    kwargs.setdefault("render_mode", "rgb_array")
    return gymnasium.make(env_id, **kwargs)


if __name__ == "__main__":
    EnvSidePortal(env_factory=make).run()
