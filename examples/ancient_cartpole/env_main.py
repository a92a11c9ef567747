"""CartPole-v1 of gym 0.15.7 on Python 2.7, served to a modern Gymnasium agent.

Written as for any portal: in this Python 2.7 runtime `portal_env` is the small server
of old runtimes (the docker backend puts it on the path), and it answers with the
Gymnasium 1.x API whatever old gym API the env speaks.
"""

import gym

from portal_env import EnvSidePortal

if __name__ == "__main__":
    EnvSidePortal(env_factory=gym.make).run()
