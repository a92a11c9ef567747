"""Serve gymnasium's built-in envs (e.g. CartPole-v1) through a portal.

Start it:  portal-env start -p examples/cartpole_env mycart -b venv
Use it:    AgentSidePortal("mycart", env_args=["CartPole-v1"])
"""

import gymnasium

from portal_env import EnvSidePortal

if __name__ == "__main__":
    EnvSidePortal(env_factory=gymnasium.make).run()
