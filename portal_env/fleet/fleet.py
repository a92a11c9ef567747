"""A fleet: N portal servers of one env on a Ray cluster, stepped directly over TCP.

Ray places, starts, watches and restarts the servers (one launcher actor each, in a
placement group); it stays off the step path: agents connect to the servers'
addresses with the fleet's token, and the fleet is asked only where a server is.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import FleetError
from ..portal.client import DEFAULT_TIMEOUT
from ..portal.vector.multiserver import Endpoint
from .agent import FleetEnv
from .launcher import Launcher, ServerSpec
from .vec import FleetVectorEnv

logger = logging.getLogger(__name__)

PLACEMENTS = {
    "spread": "SPREAD",
    "pack": "PACK",
    "strict_spread": "STRICT_SPREAD",
    "strict_pack": "STRICT_PACK",
}


@dataclass(frozen=True)
class ServerInfo:
    """One server of a fleet as its launcher reports it."""

    index: int
    node_id: str
    host: str
    address: str
    ready: bool
    server_pid: Optional[int]
    supervisor_pid: Optional[int]
    launcher_pid: int
    restarts: int
    log_path: str


class Fleet:
    """The servers of one launch(); a context manager whose exit stops them.

    Attributes:
        name: The env's name.
        token: The one token every server of the fleet expects (hand it with
            `endpoints` to agents in other processes).
    """

    def __init__(self, name: str, token: str, actors: List[Any], group: Any) -> None:
        self.name = name
        self.token = token
        self._actors = actors
        self._group = group
        self._next = itertools.count()
        self._closed = False

    # -- where the servers are -------------------------------------------------

    def servers(self, timeout: float = 60.0) -> List[ServerInfo]:
        """Every server's launcher report (waits for launchers Ray is restarting)."""
        self._require_open()
        infos = self._get([a.info.remote() for a in self._actors], timeout)
        return [ServerInfo(**info) for info in infos]

    @property
    def endpoints(self) -> List[Tuple[str, str]]:
        """[(Ray node id, "host:port")] of every server, in server order."""
        return [(s.node_id, s.address) for s in self.servers()]

    def current(self, index: int, timeout: float = DEFAULT_TIMEOUT) -> Endpoint:
        """Server index's endpoint once it answers (after a restart: its new address)."""
        count = len(self._actors)
        if not 0 <= index < count:
            raise FleetError(
                f"server index {index} is out of range: the fleet has {count} servers "
                f"(0-{count - 1})"
            )
        self._require_open()
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.1, deadline - time.monotonic())
            (info,) = self._get([self._actors[index].info.remote()], left)
            if info["ready"]:
                return Endpoint(info["address"], self.token, info["node_id"])
            if time.monotonic() > deadline:
                raise FleetError(
                    f"server {index} of {self.name!r} (node {info['node_id']}) did not come "
                    f"back within {timeout:.0f}s; see its log {info['log_path']} on that node"
                )
            time.sleep(0.1)

    # -- envs on the servers -----------------------------------------------------

    def make(
        self,
        env_args: Optional[Sequence[Any]] = None,
        env_kwargs: Optional[Dict[str, Any]] = None,
        server: Optional[int] = None,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        render_mode: Optional[str] = None,
    ) -> FleetEnv:
        """An AgentSidePortal (gymnasium.Env) on one server (server: its index; default: the
        next in turn) that reconnects through the fleet after its server was lost."""
        index = next(self._next) % len(self._actors) if server is None else server
        return FleetEnv(self, index, env_args, env_kwargs, timeout, render_mode)

    def make_vec(
        self,
        num_envs: int,
        env_args: Optional[Sequence[Any]] = None,
        env_kwargs: Optional[Dict[str, Any]] = None,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
    ) -> FleetVectorEnv:
        """One gymnasium VectorEnv of num_envs instances over every server (contiguous
        blocks, in server order: env i gets seed + i from reset(seed=...) wherever it runs)."""
        if not isinstance(num_envs, int) or num_envs < 1:
            raise FleetError(f"make_vec(num_envs={num_envs!r}): give a positive int")
        endpoints = [self.current(i) for i in range(len(self._actors))]
        return FleetVectorEnv(self, num_envs, endpoints, env_args, env_kwargs, timeout)

    # -- stopping ------------------------------------------------------------------

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every server and launcher and free the placement group; idempotent."""
        if self._closed:
            return
        self._closed = True
        import ray
        from ray.util.placement_group import remove_placement_group

        refs = [a.stop.remote() for a in self._actors]  # each removes its files too
        done, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        for ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayError as exc:  # dead already: its server died with it
                logger.warning("fleet %r: a launcher could not stop cleanly: %s", self.name, exc)
        if pending:
            logger.warning("fleet %r: %d launchers did not stop within %.0fs; killing them",
                           self.name, len(pending), timeout)  # fmt: skip
        for actor in self._actors:
            ray.kill(actor, no_restart=True)  # its supervisor stops its server (lifeline)
        remove_placement_group(self._group)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _require_open(self) -> None:
        if self._closed:
            raise FleetError(
                f"the fleet of {self.name!r} was stopped; launch() a new one to make envs"
            )

    def _get(self, refs: List[Any], timeout: float) -> List[Any]:
        import ray

        try:
            return ray.get(refs, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise FleetError(
                f"the launchers of {self.name!r} did not answer within {timeout:.0f}s "
                "(a node is down and Ray is still placing them?); see `ray status`"
            ) from None
        except ray.exceptions.RayActorError as exc:
            raise FleetError(
                f"a launcher of {self.name!r} is dead and will not be restarted: {_last_lines(exc)}"
            ) from exc


def launch(
    name: str,
    *,
    backend: Optional[str] = None,
    path: Optional[Union[str, Path]] = None,
    num_servers: int = 1,
    cpus_per_server: float = 1.0,
    placement: str = "spread",
    token: Optional[str] = None,
    max_restarts: int = -1,
    ready_timeout: float = 120.0,
    start_timeout: float = 900.0,
    state_root: Optional[str] = None,
    cache_dir: Optional[str] = None,
) -> Fleet:
    """Start num_servers portal servers of env name on the Ray cluster; ready when it returns.

    Args:
        name: A built-in env, or the name to give the custom env at path.
        backend: "venv", "micromamba"/"mm" or "docker" (default: $PORTAL_ENV_BACKEND, else
            docker); each node builds the runtime once into its cache, or reuses it.
        path: A custom env directory; it must exist at this path on every node.
        num_servers: How many servers (one launcher actor and one server process each).
        cpus_per_server: The CPUs Ray reserves for each server (a placement group bundle).
        placement: "spread" (over as many nodes as possible), "pack" (as few as
            possible), "strict_spread" or "strict_pack".
        token: The fleet's token (default: a fresh random one, in fleet.token).
        max_restarts: How often Ray may restart each launcher (-1: without limit).
        ready_timeout: Seconds each server may take to answer its first health check.
        start_timeout: Seconds for the whole start, runtime builds included.
        state_root: A node-local directory for the launchers' records and logs
            (default: $TMPDIR/portal-env-fleet-UID).
        cache_dir: The runtime cache on every node (default: each node's
            $PORTAL_ENV_CACHE_DIR, else its user cache dir); may be shared.

    Connects to Ray with ray.init() first when this process has not (RAY_ADDRESS, else a
    local cluster).
    """
    strategy = _check(name, path, num_servers, cpus_per_server, placement)
    ray = _import_ray()
    from ray.util.placement_group import placement_group, remove_placement_group

    if not ray.is_initialized():
        ray.init()
    fleet_id = secrets.token_hex(4)
    token = token or secrets.token_urlsafe(32)
    group = placement_group([{"CPU": cpus_per_server}] * num_servers, strategy=strategy)
    try:
        _wait_placed(group, num_servers, cpus_per_server, placement)
        actors = _start_launchers(
            group, cpus_per_server, max_restarts,
            [
                ServerSpec(name, backend, str(Path(path).resolve()) if path else None, token,
                           fleet_id, i, ready_timeout, state_root, cache_dir)
                for i in range(num_servers)
            ],
        )  # fmt: skip
    except BaseException:
        remove_placement_group(group)
        raise
    fleet = Fleet(name, token, actors, group)
    try:
        _wait_started(fleet, actors, start_timeout)
    except BaseException:
        fleet.stop()
        raise
    logger.info("fleet %s of %r: %d servers ready", fleet_id, name, num_servers)
    return fleet


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise FleetError(
            f"portal_env.ray needs Ray, which cannot be imported here ({exc}); install it on "
            "every node of the cluster: pip install 'portal-env[ray]'"
        ) from exc
    return ray


def _check(
    name: str,
    path: Optional[Union[str, Path]],
    num_servers: int,
    cpus_per_server: float,
    placement: str,
) -> str:
    """The Ray placement strategy; clear errors for bad arguments, before any work."""
    from ..serving import lifecycle

    if not isinstance(num_servers, int) or num_servers < 1:
        raise FleetError(f"launch(num_servers={num_servers!r}): give a positive int")
    if not isinstance(cpus_per_server, (int, float)) or cpus_per_server <= 0:
        raise FleetError(
            f"launch(cpus_per_server={cpus_per_server!r}): give a positive number of CPUs"
        )
    if placement not in PLACEMENTS:
        raise FleetError(
            f"launch(placement={placement!r}): use one of {', '.join(map(repr, PLACEMENTS))}"
        )
    lifecycle.find(name, Path(path) if path else None)  # an unknown env fails here, at once
    return PLACEMENTS[placement]


def _wait_placed(group: Any, num_servers: int, cpus: float, placement: str) -> None:
    import ray

    try:
        ray.get(group.ready(), timeout=60)
    except ray.exceptions.GetTimeoutError:
        raise FleetError(
            f"Ray could not place {num_servers} servers of {cpus:g} CPUs each with "
            f"placement={placement!r} within 60s (the cluster has {ray.cluster_resources()}"
            f", free: {ray.available_resources()}); lower num_servers or cpus_per_server, "
            "use placement='spread'/'pack' instead of a strict one, or add nodes"
        ) from None


def _start_launchers(
    group: Any, cpus: float, max_restarts: int, specs: List[ServerSpec]
) -> List[Any]:
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    remote = ray.remote(Launcher)
    return [
        remote.options(
            num_cpus=cpus,
            max_restarts=max_restarts,
            max_task_retries=-1,  # info() and stop() are safe to repeat on a restarted launcher
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=spec.index
            ),
        ).remote(spec)
        for spec in specs
    ]


def _wait_started(fleet: Fleet, actors: List[Any], timeout: float) -> None:
    """Return once every server answers; else a FleetError naming the first that failed."""
    import ray

    deadline = time.monotonic() + timeout
    for index, actor in enumerate(actors):
        try:
            ray.get(actor.info.remote(), timeout=max(1.0, deadline - time.monotonic()))
        except ray.exceptions.GetTimeoutError:
            raise FleetError(
                f"server {index} of {fleet.name!r} was not ready within {timeout:.0f}s "
                "(start_timeout, runtime builds included); raise start_timeout, or build the "
                "runtime into a cache the nodes share first and pass cache_dir="
            ) from None
        except ray.exceptions.RayActorError as exc:
            raise FleetError(
                f"server {index} of {fleet.name!r} could not start: {_last_lines(exc)}"
            ) from exc


def _last_lines(exc: BaseException, count: int = 12) -> str:
    """The launcher's own error in a Ray error's text (which wraps it in Ray's traceback)."""
    text = str(exc)
    start = text.rfind("portal_env.errors.")
    if start >= 0:  # the portal-env error the launcher raised, with the server's output
        own = text[start + len("portal_env.errors.") :]
        return "\n".join(line for line in own.split("\n\n")[0].splitlines() if line.strip())
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-count:])
