"""Offline nodes (HPC compute nodes): serve from the cache, never wait on a network.

A node is offline when $PORTAL_ENV_OFFLINE says so, or when it has no network
interface but loopback (e.g. `unshare --net`). There a cached runtime is served
as usual (a cache hit touches no network: no re-lock, no index query, no
download), but anything that would need the network (locking, building) fails
at once with the command to run on a node that has network, instead of letting
uv or rattler retry a dead connection until they time out.
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
from typing import Optional, Sequence

from ..errors import BuildError
from .catalog import EnvSource

logger = logging.getLogger(__name__)

OFFLINE_VAR = "PORTAL_ENV_OFFLINE"
_YES, _NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def reason() -> Optional[str]:
    """Why this node counts as offline, or None when it may use the network."""
    raw = os.environ.get(OFFLINE_VAR, "").strip().lower()
    if raw in _YES:
        return f"{OFFLINE_VAR}={raw}"
    if raw in _NO:
        return None
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:  # cannot tell: assume the network is there
        return None
    if names and all(name == "lo" for name in names):
        return "this node has no network interface but loopback"
    return None


def command(verb: str, source: EnvSource, backend: str, extra: Sequence[str] = ()) -> str:
    """The portal-env command that makes what an offline node lacks (extra: more options)."""
    parts = ["portal-env", verb]
    parts += ["-e", source.name] if verb == "build" else [source.name]
    parts += [] if source.builtin else ["-p", str(source.env_dir)]
    return shlex.join(parts + ["-b", backend] + (list(extra) if verb == "build" else []))


def refuse(
    source: EnvSource, backend: str, missing: str, verb: str = "build", extra: Sequence[str] = ()
) -> None:
    """Raise BuildError at once if this node is offline; missing says what is not cached."""
    why = reason()
    if why is None:
        return
    cache = os.environ.get("PORTAL_ENV_CACHE_DIR")
    where = f" with the same PORTAL_ENV_CACHE_DIR={cache}" if cache else " with the same cache"
    raise BuildError(
        f"cannot {verb} {missing} of {source.name!r} on this node: it is offline ({why}). "
        f"Run `{command(verb, source, backend, extra)}` on a node with network{where}, then start "
        "it here again."
    )
