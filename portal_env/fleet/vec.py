"""One VectorEnv over a fleet's servers that finds a lost server's new address through
the fleet (not the registry: the driver need not see the nodes' registries)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence

from ..portal.client import DEFAULT_TIMEOUT
from ..portal.vector.multiserver import Endpoint, MultiServerVectorEnv

if TYPE_CHECKING:
    from .fleet import Fleet


class FleetVectorEnv(MultiServerVectorEnv):
    """MultiServerVectorEnv whose reset() reconnects a lost server at the address its
    launcher reports now: the same one after the supervisor restarted the server, a new
    one (maybe on another node) after Ray restarted the launcher. Steps go straight to
    the servers over TCP; the fleet (Ray actor calls) is asked only on reconnect."""

    def __init__(
        self,
        fleet: Fleet,
        num_envs: int,
        endpoints: Sequence[Endpoint],
        env_args: Optional[Sequence[Any]] = None,
        env_kwargs: Optional[Dict[str, Any]] = None,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
    ) -> None:
        self._fleet = fleet
        self._wait = timeout or DEFAULT_TIMEOUT
        super().__init__(fleet.name, num_envs, endpoints, env_args, env_kwargs, timeout)

    def _current(self, endpoint: Endpoint) -> Endpoint:
        """Where server i of the fleet is now, once it is back (waits up to timeout)."""
        return self._fleet.current(self.endpoints.index(endpoint), self._wait)
