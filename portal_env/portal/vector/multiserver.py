"""One gymnasium VectorEnv over many servers (e.g. one per node of a cluster job).

Env i of N lives on one server: the servers take contiguous blocks of global
indices, in the order found (this node's server first, then by node name), so
`reset(seed=s)` seeds env i with s + i wherever it runs and a seeded run equals
SyncVectorEnv's. A step sends every server its block's actions first, then
receives every reply: the servers step at the same time, with no thread per
server. A server lost during a step is reported (which server, which envs) and
its step never resent; reset() reconnects to it once it is back.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import gymnasium
import numpy as np
from gymnasium import spaces as gs
from gymnasium.vector.utils import batch_space

from ...errors import PortalConnectionError, PortalEnvError
from ..client import DEFAULT_TIMEOUT
from .agent import PortalVectorEnv

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    """A server of the env: where it listens, its token, and its node (for messages)."""

    address: str
    token: Optional[str] = None
    node: str = ""

    def __str__(self) -> str:
        return f"{self.address} (node {self.node})" if self.node else self.address


def registered_endpoints(env_name: str, min_servers: int = 1, wait: float = 0.0) -> List[Endpoint]:
    """Every ready server registered for env_name, across nodes (this node's first);
    waits up to wait seconds until there are min_servers of them."""
    from ...serving import registry  # lazily: the agent's import path stays light

    deadline = time.monotonic() + wait
    records = registry.lookup_all(env_name)
    while len(records) < min_servers and time.monotonic() < deadline:
        time.sleep(0.2)
        records = registry.lookup_all(env_name)
    if records and len(records) < min_servers:
        raise PortalEnvError(
            f"only {len(records)} of {min_servers} servers of {env_name!r} were ready in "
            f"{registry.portals_dir()} after {wait:.0f}s (on nodes "
            f"{', '.join(r.node for r in records)}); see `portal-env logs {env_name}` on the "
            "others, or lower min_servers."
        )
    if not records:
        raise PortalEnvError(
            f"no server of {env_name!r} is registered in {registry.portals_dir()}. Start one "
            f"per node (`portal-env start {env_name} --host ADDR`; on Slurm with `srun "
            "--ntasks-per-node=1`) and point every node at one registry with "
            "PORTAL_ENV_REGISTRY_DIR, or pass addresses=[...]."
        )
    return [Endpoint(r.address, r.token, r.node) for r in records]


def split(num_envs: int, parts: int) -> List[int]:
    """Block sizes of num_envs over parts, as even as possible, larger blocks first."""
    return [num_envs // parts + (i < num_envs % parts) for i in range(parts)]


class MultiServerVectorEnv(gymnasium.vector.VectorEnv):
    """N instances of a remote env spread over several servers, with gymnasium 1.x
    next-step autoreset (each server's block autoresets on its own, as envs do)."""

    def __init__(
        self,
        env_name: str,
        num_envs: int,
        endpoints: Sequence[Endpoint],
        env_args: Optional[Sequence[Any]] = None,
        env_kwargs: Optional[Dict[str, Any]] = None,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        num_workers: Optional[int] = None,
    ) -> None:
        if not endpoints:
            raise ValueError("MultiServerVectorEnv needs at least one endpoint")
        self.env_name = env_name
        self.num_envs = num_envs
        self._make = (list(env_args or []), dict(env_kwargs or {}), timeout, num_workers)
        sizes = [n for n in split(num_envs, len(endpoints)) if n]
        self.endpoints = list(endpoints)[: len(sizes)]
        self.sizes = sizes
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self._parts: List[Optional[PortalVectorEnv]] = []
        try:
            for endpoint, size in zip(self.endpoints, sizes):
                self._parts.append(self._connect(endpoint, size))
        except BaseException:
            self.close_extras()
            raise
        first = self._parts[0]
        self.single_observation_space = first.single_observation_space
        self.single_action_space = first.single_action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = dict(first.metadata)
        self.render_mode = first.render_mode

    def _connect(self, endpoint: Endpoint, size: int) -> PortalVectorEnv:
        args, kwargs, timeout, num_workers = self._make
        return PortalVectorEnv(
            self.env_name, size, args, kwargs, address=endpoint.address,
            token=endpoint.token, timeout=timeout, num_workers=num_workers,
        )  # fmt: skip

    # -- the vector API --------------------------------------------------------

    def reset(
        self,
        *,
        seed: Optional[Union[int, List[Optional[int]]]] = None,
        options: Optional[Dict[str, Any]] = None,
    ) -> Tuple[Any, Dict[str, Any]]:
        """Reset every env (reconnecting to servers lost earlier); env i gets seed + i."""
        if seed is None:
            seeds: List[Optional[int]] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"reset(seed=...) got {len(seeds)} seeds for {self.num_envs} envs")
        self._reconnect_lost()
        jobs = [
            (part, seeds[lo : lo + n]) for part, lo, n in zip(self._parts, self.offsets, self.sizes)
        ]
        # resets can be slow (emulators): one thread per server, as a reset is not the hot path
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            futures = [pool.submit(part.reset, seed=block, options=options) for part, block in jobs]
            results = [future.result() for future in futures]
        obs = _concat(self.single_observation_space, [r[0] for r in results])
        return obs, _merge_infos([r[1] for r in results], self.sizes)

    def step(self, actions: Any) -> Tuple[Any, Any, Any, Any, Dict[str, Any]]:
        """Step every env: send to all servers, then receive from all."""
        sent, lost = [], []
        for i, (part, lo, n) in enumerate(zip(self._parts, self.offsets, self.sizes)):
            try:
                part._client.step_send(_take(self.single_action_space, actions, lo, lo + n))
                sent.append(i)
            except PortalConnectionError as exc:
                lost.append((i, exc))
        results = []
        for i in sent:
            try:
                results.append(self._parts[i]._client.step_receive())
            except PortalConnectionError as exc:
                lost.append((i, exc))
        if lost:
            raise self._lost_error(lost)
        obs = _concat(self.single_observation_space, [r[0] for r in results])
        rewards, terminations, truncations = (
            np.concatenate([r[k] for r in results]) for k in (1, 2, 3)
        )
        infos = _merge_infos([p._merge(r[4]) for p, r in zip(self._parts, results)], self.sizes)
        return obs, rewards, terminations, truncations, infos

    def _lost_error(self, lost: List[Tuple[int, BaseException]]) -> PortalConnectionError:
        where = "; ".join(
            f"{self.endpoints[i]}, envs {self.offsets[i]}-{self.offsets[i] + self.sizes[i] - 1}"
            f" ({exc.__cause__ or exc})"
            for i, exc in sorted(lost, key=lambda item: item[0])
        )
        return PortalConnectionError(
            f"lost {len(lost)} of {len(self._parts)} servers of {self.env_name!r} during a step: "
            f"{where}. The other servers stepped; the lost step is not resent. Call reset() "
            "once the server is back (its supervisor restarts it)."
        )

    def _reconnect_lost(self) -> None:
        for i, part in enumerate(self._parts):
            if part is None or part._client.broken:
                if part is not None:
                    part.close()
                self._parts[i] = None
                self._parts[i] = self._connect(self._current(self.endpoints[i]), self.sizes[i])

    def _current(self, endpoint: Endpoint) -> Endpoint:
        """endpoint, or where its node's server of this env is registered now."""
        if not endpoint.node:
            return endpoint
        try:
            for found in registered_endpoints(self.env_name):
                if found.node == endpoint.node:
                    return found
        except PortalEnvError:
            pass  # nothing registered now: try the old address, which says what failed
        return endpoint

    def render(self) -> Optional[Tuple[Any, ...]]:
        frames = [part.render() for part in self._parts]
        return None if any(f is None for f in frames) else sum((tuple(f) for f in frames), ())

    def call(self, name: str, *args: Any, **kwargs: Any) -> Tuple[Any, ...]:
        return sum((tuple(p.call(name, *args, **kwargs)) for p in self._parts), ())

    def get_attr(self, name: str) -> Tuple[Any, ...]:
        return sum((tuple(p.get_attr(name)) for p in self._parts), ())

    def set_attr(self, name: str, values: Union[List[Any], Tuple[Any, ...], Any]) -> None:
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"set_attr got {len(values)} values for {self.num_envs} envs")
        for part, lo, n in zip(self._parts, self.offsets, self.sizes):
            part.set_attr(name, list(values[lo : lo + n]))

    def close_extras(self, **kwargs: Any) -> None:
        for part in self._parts:
            if part is not None:
                part.close()

    def __enter__(self) -> MultiServerVectorEnv:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _take(space: Any, batch: Any, lo: int, hi: int) -> Any:
    """Envs lo..hi-1 of a batch of space's values (Dict and Tuple batches are nested)."""
    if isinstance(space, gs.Dict):
        return {key: _take(sub, batch[key], lo, hi) for key, sub in space.spaces.items()}
    if isinstance(space, gs.Tuple):
        return tuple(_take(sub, part, lo, hi) for sub, part in zip(space.spaces, batch))
    return batch[lo:hi]


def _concat(space: Any, batches: List[Any]) -> Any:
    """One batch from consecutive batches of space's values."""
    if len(batches) == 1:
        return batches[0]
    if isinstance(space, gs.Dict):
        return {key: _concat(sub, [b[key] for b in batches]) for key, sub in space.spaces.items()}
    if isinstance(space, gs.Tuple):
        return tuple(_concat(sub, [b[i] for b in batches]) for i, sub in enumerate(space.spaces))
    if isinstance(batches[0], np.ndarray):
        return np.concatenate(batches)
    return sum((tuple(b) for b in batches), ())  # Graph, Text, Sequence: tuples of values


def _merge_infos(infos: List[Dict[str, Any]], sizes: List[int]) -> Dict[str, Any]:
    """One gymnasium vector info dict (values with `_key` masks) from per-block ones."""
    if len(infos) == 1:
        return infos[0]
    total, merged = sum(sizes), {}
    keys = [k for info in infos for k in info if not k.startswith("_")]
    for key in dict.fromkeys(keys):
        present = [(i, info[key]) for i, info in enumerate(infos) if key in info]
        if all(isinstance(value, dict) for _, value in present):
            parts = [info.get(key, {}) for info in infos]
            merged[key] = _merge_infos(parts, sizes)
        else:
            merged[key] = _stack(present, sizes, total)
        mask = np.zeros(total, dtype=np.bool_)
        for i, info in enumerate(infos):
            if key in info:
                lo = sum(sizes[:i])
                mask[lo : lo + sizes[i]] = info.get("_" + key, True)
        merged["_" + key] = mask
    return merged


def _stack(present: List[Tuple[int, Any]], sizes: List[int], total: int) -> np.ndarray:
    arrays = [(i, np.asarray(value)) for i, value in present]
    first = arrays[0][1]
    out = np.zeros((total,) + first.shape[1:], dtype=np.result_type(*(a for _, a in arrays)))
    if out.dtype.kind == "O":
        out[:] = None
    for i, array in arrays:
        lo = sum(sizes[:i])
        out[lo : lo + sizes[i]] = array
    return out


def make_vec(
    env_name: str,
    num_envs: int = 1,
    env_args: Optional[Sequence[Any]] = None,
    env_kwargs: Optional[Dict[str, Any]] = None,
    agent_in_docker: bool = False,
    address: Optional[str] = None,
    token: Optional[str] = None,
    timeout: Optional[float] = DEFAULT_TIMEOUT,
    addresses: Optional[Sequence[str]] = None,
    min_servers: Optional[int] = None,
    num_workers: Optional[int] = None,
    batch_size: Optional[int] = None,
) -> gymnasium.vector.VectorEnv:
    """N instances of env_name's env as one gymnasium VectorEnv, on one server or many.

    The arguments are those of AgentSidePortal, plus:

    Args:
        num_envs: How many env instances.
        addresses: Spread the instances over these servers ("host:port" or
            "unix:/path", all with token, else the registry's token for each).
            Without it (and without address=): every server registered for env_name
            on any node (registry.lookup_all), this node's first.
        min_servers: First wait up to timeout seconds until this many servers are
            ready (a learner started with its job's servers: $SLURM_JOB_NUM_NODES).
        num_workers: Processes stepping each server's instances at once, each a
            contiguous shard: the server's connection thread steps the first and
            num_workers - 1 forked workers the others (all num_workers are forked
            with batch_size). Default: what the server's cost model picks: with K
            processes a batch of n steps of t seconds takes about ceil(n/K)*t + h
            (h: a hand-off to a worker, which the server measures once; t: a throwaway
            instance's median step), against n*t in the server thread alone; the K up
            to its cores with the least time if it saves 35 %, else none (see
            vector.costmodel). 0 or 1 step them all in the server's connection
            thread, one after another.
        batch_size: One server only: how many instances recv() returns, EnvPool-style
            (send(actions, env_ids) starts steps and returns at once; recv() returns the
            first batch_size to finish, with info["env_id"]).
    """
    single = {"num_workers": num_workers, "batch_size": batch_size}
    if address is not None or agent_in_docker:
        return PortalVectorEnv(
            env_name, num_envs, env_args, env_kwargs, agent_in_docker, address, token, timeout,
            **single,
        )  # fmt: skip
    if addresses is not None:
        known = {e.address: e for e in _registered_or_none(env_name)}
        endpoints = [known.get(a, Endpoint(a)) for a in addresses]
        if token is not None:
            endpoints = [Endpoint(e.address, token, e.node) for e in endpoints]
    elif min_servers:
        endpoints = registered_endpoints(env_name, min_servers, timeout or DEFAULT_TIMEOUT)
    else:
        endpoints = registered_endpoints(env_name)
    if len(endpoints) == 1:
        (only,) = endpoints
        return PortalVectorEnv(
            env_name, num_envs, env_args, env_kwargs, False, only.address, only.token, timeout,
            **single,
        )  # fmt: skip
    if batch_size is not None:
        raise PortalEnvError(
            f"batch_size={batch_size} (send/recv) works on one server, and {env_name!r} has "
            f"{len(endpoints)} ({', '.join(map(str, endpoints))}): pass address=... for one "
            "of them, or leave batch_size out to step all of them together"
        )
    return MultiServerVectorEnv(
        env_name, num_envs, endpoints, env_args, env_kwargs, timeout, num_workers
    )


def _registered_or_none(env_name: str) -> List[Endpoint]:
    try:
        return registered_endpoints(env_name)
    except PortalEnvError:
        return []
