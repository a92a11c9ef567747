"""One env on one server of a fleet, reconnecting through the fleet."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence

from ..portal.agent import AgentSidePortal
from ..portal.client import DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from .fleet import Fleet


class FleetEnv(AgentSidePortal):
    """AgentSidePortal on server index of a fleet: after a lost connection, reset()
    reconnects at the address the server's launcher reports now (the same one after a
    supervisor restart, a new one after Ray restarted the launcher)."""

    def __init__(
        self,
        fleet: Fleet,
        index: int,
        env_args: Optional[Sequence[Any]] = None,
        env_kwargs: Optional[Dict[str, Any]] = None,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        render_mode: Optional[str] = None,
    ) -> None:
        self._fleet = fleet
        self.server_index = index
        self._wait = timeout or DEFAULT_TIMEOUT
        super().__init__(
            fleet.name, env_args, env_kwargs, address="", token=fleet.token, timeout=timeout,
            render_mode=render_mode,
        )  # fmt: skip

    def _connect(self) -> None:
        where = self._fleet.current(self.server_index, self._wait)
        self._connect_args = (where.address, *self._connect_args[1:])  # only the address moves
        super()._connect()
