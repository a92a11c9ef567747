"""portal-env: serve RL environments from isolated runtimes, use them as gymnasium envs.

    import portal_env
    with portal_env.serve("ale", backend="venv") as portal:   # build, supervise, wait
        env = portal.make(env_args=["ALE/Pong-v5"])              # a gymnasium.Env

The lifecycle functions (serve, build, lock, running, stop) load on first use,
so agents and env servers that only need the portal import no build machinery.
"""

from typing import Any

import gymnasium

from .errors import (
    AuthenticationError,
    DirectoryError,
    PortalConnectionError,
    PortalEnvError,
    ProtocolError,
    RemoteEnvError,
    UnsupportedSpaceError,
)
from .portal.agent import AgentSidePortal
from .portal.server import EnvSidePortal
from .portal.vector.agent import PortalVectorEnv
from .portal.vector.multiserver import make_vec

__version__ = "0.10.0"

_LIFECYCLE = ("Portal", "build", "lock", "running", "serve", "stop")

__all__ = [
    "AgentSidePortal",
    "AuthenticationError",
    "DirectoryError",
    "EnvSidePortal",
    "PortalConnectionError",
    "PortalEnvError",
    "PortalVectorEnv",
    "ProtocolError",
    "RemoteEnvError",
    "UnsupportedSpaceError",
    "make_vec",
    *_LIFECYCLE,
]

# gymnasium.make("portal_env:Portal-v0", env_name=..., env_args=[...]) and
# gymnasium.make_vec("portal_env:Portal-v0", num_envs=N, vectorization_mode=
# "vector_entry_point", env_name=..., ...) for libraries that take an env id.
if "Portal-v0" not in gymnasium.registry:
    gymnasium.register(
        "Portal-v0",
        entry_point="portal_env.portal.agent:AgentSidePortal",
        vector_entry_point="portal_env.portal.vector.multiserver:make_vec",
        disable_env_checker=True,  # the remote env is checked where it runs
    )


def __getattr__(name: str) -> Any:
    if name in _LIFECYCLE:
        from .serving import lifecycle

        return getattr(lifecycle, name)
    raise AttributeError(f"module 'portal_env' has no attribute {name!r}")
