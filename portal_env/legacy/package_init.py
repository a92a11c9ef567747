"""portal-env in an old runtime (Python < 3.8): the small env-side server only.

This file is the `__init__.py` of the `portal_env` package that the backend puts on
the path of a runtime too old for portal-env itself, so an unchanged env_main.py
(`from portal_env import EnvSidePortal`) serves through the small server. Agents
run on a modern Python with the full package.
"""

from .legacy.server import EnvSidePortal  # noqa: F401

__all__ = ["EnvSidePortal"]
