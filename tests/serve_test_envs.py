"""Runs a portal server of the test envs; settings come from PORTAL_ENV_* variables."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from portal_env import EnvSidePortal  # noqa: E402
from tests import envs  # noqa: E402

if __name__ == "__main__":
    EnvSidePortal(env_factory=envs.make).run()
