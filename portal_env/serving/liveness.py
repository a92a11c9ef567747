"""Is the server of a registry record still there? Asked over the wire, not by pid.

A record written on another node has a pid that means nothing here, so its
server is asked: connect, authenticate with the record's token, ping. The answer
is one of three verdicts, and only GONE ("not me": something else answers at that
address) is certain enough to delete a record; a refused or unreachable address
may be a server that is restarting, or a network this node does not see.
"""

from __future__ import annotations

import logging

from ..errors import AuthenticationError, PortalEnvError, ProtocolError
from ..portal import protocol, wire

logger = logging.getLogger(__name__)

LIVE = "live"
GONE = "gone"  # another server (another token) or not a portal answers there
PING_TIMEOUT = 2.0  # seconds: a live server answers a ping in well under a millisecond


def ask(address: str, token: str, timeout: float = PING_TIMEOUT) -> str:
    """LIVE, GONE, or why the server cannot be judged from here (e.g. "refused")."""
    try:
        where = wire.Address.parse(address)
    except ValueError:
        return f"bad address {address!r}"
    if where.path is not None:
        return "a Unix socket of another node (start it with --host to reach it)"
    try:
        channel = wire.Channel.connect(where, token, timeout)
    except (AuthenticationError, ProtocolError):
        return GONE
    except PortalEnvError as exc:
        cause = exc.__cause__
        if isinstance(cause, ConnectionRefusedError):
            return "refused"
        return f"no answer ({cause or exc})"
    try:
        channel.send(["ping"])
        return LIVE if channel.recv() == [protocol.REPLY_OK, "pong"] else GONE
    except (PortalEnvError, OSError) as exc:
        return f"no answer ({exc})"
    finally:
        channel.close()
