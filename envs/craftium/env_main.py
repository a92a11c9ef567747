"""Serve Craftium's environments (Craftium/ChopTree-v0, Craftium/Room-v0, ...).

Start it:  portal-env start craftium -b micromamba   (or -b docker; not -b venv:
           craftium builds the Luanti engine from source and needs system libraries)
Use it:    AgentSidePortal("craftium", env_args=["Craftium/ChopTree-v0"])
"""

import craftium  # noqa: F401  (registers the Craftium/... ids with gymnasium)
import gymnasium

from portal_env import EnvSidePortal

if __name__ == "__main__":
    EnvSidePortal(env_factory=gymnasium.make).run()
