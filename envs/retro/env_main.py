"""Serve stable-retro games (Airstriker-Genesis-v0 ships with it; import other ROMs yourself).

Start it:  portal-env start retro -b venv
Use it:    AgentSidePortal("retro", env_args=["Airstriker-Genesis-v0"])
See README.md here for importing your own ROMs and for the one-game-per-server limit.
"""

import stable_retro
from stable_retro.retro_env import RetroEnv

from portal_env import EnvSidePortal


def make(game: str, **kwargs: object) -> RetroEnv:
    """stable_retro.make(game, **kwargs), rendering to arrays by default.

    stable-retro does not register its games with gymnasium, so the factory
    calls its own `make` (env_args=[game], env_kwargs are RetroEnv's keywords:
    state, scenario, obs_type, use_restricted_actions, ...). RetroEnv defaults
    to render_mode="human", which opens a window on every step; a server has no
    display, so the default here is "rgb_array" (pass render_mode to override).
    """
    kwargs.setdefault("render_mode", "rgb_array")
    return stable_retro.make(game=game, **kwargs)


if __name__ == "__main__":
    EnvSidePortal(env_factory=make).run()
