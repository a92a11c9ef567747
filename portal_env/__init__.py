"""portal-env: serve RL environments from isolated runtimes, use them as gymnasium envs."""

from .errors import (
    AuthenticationError,
    PortalConnectionError,
    PortalEnvError,
    ProtocolError,
    RemoteEnvError,
    UnsupportedSpaceError,
)
from .portal.agent import AgentSidePortal
from .portal.server import EnvSidePortal
from .portal.vector import PortalVectorEnv, make_vec

__version__ = "0.10.0"

__all__ = [
    "AgentSidePortal",
    "AuthenticationError",
    "EnvSidePortal",
    "PortalConnectionError",
    "PortalEnvError",
    "PortalVectorEnv",
    "ProtocolError",
    "RemoteEnvError",
    "UnsupportedSpaceError",
    "make_vec",
]
