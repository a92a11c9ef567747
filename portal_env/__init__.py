"""portal-env: serve RL environments from isolated runtimes, use them as gymnasium envs."""

from .agent import AgentSidePortal
from .errors import (
    AuthenticationError,
    PortalConnectionError,
    PortalEnvError,
    ProtocolError,
    RemoteEnvError,
    UnsupportedSpaceError,
)
from .server import EnvSidePortal
from .vector import PortalVectorEnv, make_vec

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
