"""One authenticated connection from an agent to a server, with call semantics."""

from __future__ import annotations

import weakref
from typing import Any, Optional

from . import config, wire
from .errors import PortalConnectionError, ProtocolError, RemoteEnvError

DEFAULT_TIMEOUT = 300.0  # seconds; generous for slow resets (emulators, Minecraft-likes)


class Client:
    """Sends requests and returns results; a lost connection is never retried.

    Retrying could apply a step twice, so once the connection breaks every
    call raises PortalConnectionError until a new Client is made.
    """

    def __init__(self, env_name: str, address: wire.Address, token: str, timeout: Optional[float]):
        self.env_name = env_name
        self.address = address
        self.broken = False
        self._channel = wire.Channel.connect(address, token, timeout)
        self._finalizer = weakref.finalize(self, self._channel.close)  # no I/O, just close

    @classmethod
    def for_env(
        cls,
        env_name: str,
        address: Optional[str],
        token: Optional[str],
        agent_in_docker: bool,
        timeout: Optional[float],
    ) -> Client:
        """Find the server for env_name (arguments, environment, defaults) and connect."""
        where = config.agent_address(env_name, address, agent_in_docker)
        secret = config.explicit_token(token) or config.find_token(where)
        return cls(env_name, where, secret, timeout)

    def call(self, op: str, *args: Any) -> Any:
        """Run op on the server; remote exceptions re-raise as RemoteEnvError."""
        if self.broken:
            raise PortalConnectionError(
                f"the connection to the '{self.env_name}' portal at {self.address} was lost "
                "earlier; its env instance is gone. Make a new env (or call reset())."
            )
        try:
            self._channel.send([op, *args])
            reply = self._channel.recv()
        except (PortalConnectionError, OSError) as exc:
            self.broken = True
            self._channel.close()
            raise PortalConnectionError(
                f"lost the connection to the '{self.env_name}' portal at {self.address} during "
                f"'{op}' ({exc}); the request may or may not have run and is not resent. "
                "Make a new env (or call reset()) once the server is back."
            ) from exc
        if not isinstance(reply, list) or len(reply) != 2 or reply[0] not in (0, 1):
            raise ProtocolError(f"malformed reply to '{op}' from {self.address}: {reply!r:.200}")
        status, payload = reply
        if status == 1:
            raise RemoteEnvError(*payload)
        return payload

    def close(self, goodbye: bool = True) -> None:
        """Tell the server to close the env (best effort), then close the socket."""
        if goodbye and not self.broken:
            try:
                wire.set_timeout(self._channel.sock, 2.0)
                self.call("close")
            except (PortalConnectionError, RemoteEnvError, ProtocolError):
                pass
        self._finalizer()
