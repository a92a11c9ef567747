"""Runs the small server (portal_env.legacy) of the test envs, as an old runtime would.

The factory: the test envs (tests/envs.py), plus the hostile ones of the security tests.
Settings come from PORTAL_ENV_* variables.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from portal_env.legacy.server import EnvSidePortal  # noqa: E402
from tests import serve_security  # noqa: E402

if __name__ == "__main__":
    EnvSidePortal(env_factory=serve_security.make).run()
