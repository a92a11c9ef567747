"""Serve ViZDoom's gymnasium environments (VizdoomBasic-v1, VizdoomDeadlyCorridor-v1, ...).

Start it:  portal-env start vizdoom -b venv
Use it:    AgentSidePortal("vizdoom", env_args=["VizdoomBasic-v1"])
Observations are Dict spaces ({"screen": ..., "gamevariables": ...}).
"""

import gymnasium
from vizdoom import gymnasium_wrapper  # noqa: F401  (registers the Vizdoom* ids)

from portal_env import EnvSidePortal

if __name__ == "__main__":
    EnvSidePortal(env_factory=gymnasium.make).run()
