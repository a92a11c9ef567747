"""Vector envs: N instances of a remote env as one gymnasium VectorEnv.

Agent side: `agent` (PortalVectorEnv, one server), `flight` (its send/recv
bookkeeping), `multiserver` (make_vec, one VectorEnv over many servers). Env side:
`hosted` (HostedVectorEnv, what a connection controls), `shard` (instances stepped
one after another), `workers` (forked processes that each step a shard), `costmodel`
(how many of them by default), `batchmem` (the batch they write into), `asyncsteps`
(EnvPool-style send/recv).
"""

from typing import Any


def __getattr__(name: str) -> Any:
    """PortalVectorEnv and make_vec, loaded on first use: the env side imports this package
    for its workers and needs no agent code."""
    if name == "PortalVectorEnv":
        from .agent import PortalVectorEnv

        return PortalVectorEnv
    if name == "make_vec":
        from .multiserver import make_vec

        return make_vec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
