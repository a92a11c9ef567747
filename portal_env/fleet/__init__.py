"""Fleets of portal servers on a Ray cluster (the engine of `portal_env.ray`).

Importing this package imports no Ray; `launch()` does, when called.
"""

from .fleet import Fleet, ServerInfo, launch

__all__ = ["Fleet", "ServerInfo", "launch"]
