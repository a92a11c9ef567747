"""Serve the Arcade Learning Environment (ALE/Pong-v5, ALE/Breakout-v5, ...).

Start it:  portal-env start ale -b venv
Use it:    AgentSidePortal("ale", env_args=["ALE/Pong-v5"])
ale-py's wheels ship the Atari ROMs; nothing is downloaded at run time.
"""

import ale_py
import gymnasium

from portal_env import EnvSidePortal
from portal_env.portal.screenbuf import ale_screen_into

gymnasium.register_envs(ale_py)  # makes the ALE/... ids known to gymnasium.make


def make(*args, **kwargs):
    # ALE writes each frame straight into the shared memory the agent reads it from.
    return ale_screen_into(gymnasium.make(*args, **kwargs))


if __name__ == "__main__":
    EnvSidePortal(env_factory=make).run()
