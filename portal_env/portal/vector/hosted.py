"""The env-side object one agent connection controls for a vector env: N instances,
stepped by the server thread and, where they pay off, forked worker processes.

Imported inside isolated runtimes, which may carry an older gymnasium: only the
standard library, numpy and gymnasium here.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from ...config import spin_us as config_spin_us
from .. import fastpath
from ..hosted import EnvFactory, describe
from . import asyncsteps, batchmem, costmodel, workers
from .shard import InstanceError, Shard

logger = logging.getLogger(__name__)


def check_sizes(num_envs: int, num_workers: Optional[int], batch_size: Optional[int]) -> None:
    """Raise ValueError naming the bad value unless the sizes of a vector env make sense."""
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
    if num_workers is not None and not (
        isinstance(num_workers, int) and 0 <= num_workers <= num_envs
    ):
        raise ValueError(
            f"num_workers must be an integer from 0 (step in the server thread) to "
            f"num_envs={num_envs}, got {num_workers!r}"
        )
    if batch_size is not None and not (isinstance(batch_size, int) and 1 <= batch_size <= num_envs):
        raise ValueError(f"batch_size must be from 1 to num_envs={num_envs}, got {batch_size!r}")


def default_workers(
    factory: EnvFactory, args: Sequence[Any], kwargs: Dict[str, Any], num_envs: int, batch: int
) -> Tuple[int, Dict[str, Any]]:
    """The processes the cost model picks (0: none but the server thread), and why.

    batch: the steps the processes share at a time: num_envs for step(), batch_size for
    send/recv (a batch's instances step at once; the others wait in the agent's hands).
    """
    processes, measured = costmodel.default_workers(
        factory, args, kwargs, batch, min(workers.available_cores(), num_envs)
    )
    if measured:
        logger.info(
            "make_vec of %d instances, %d a batch: a step takes %.3f ms, a hand-off to a "
            "worker %.3f ms: %d process%s",
            num_envs, batch, measured["step_s"] * 1e3, measured["handoff_s"] * 1e3, processes,
            "es" if processes > 1 else "",
        )  # fmt: skip
    return (processes if processes > 1 else 0), measured


class HostedVectorEnv:
    """N instances stepped together, with gymnasium 1.x next-step autoreset.

    With K workers the instances are split into K contiguous shards that step at
    once: the server thread steps the first itself and K-1 forked worker
    processes step the others, so no core waits for a hand-off. With a batch_size
    below num_envs (EnvPool-style send/recv) all K are forked instead, which keeps
    the server thread free to report whichever instance finishes first.
    Observations land in one shared batch. Without workers the server thread
    steps every instance one after another. Infos go back as a list and are
    merged by the agent's own gymnasium.
    """

    def __init__(
        self,
        factory: EnvFactory,
        num_envs: int,
        args: Sequence[Any],
        kwargs: Dict[str, Any],
        num_workers: Optional[int] = None,
        batch_size: Optional[int] = None,
    ) -> None:
        check_sizes(num_envs, num_workers, batch_size)
        self.batch_size = num_envs if batch_size is None else batch_size
        asynchronous = self.batch_size < num_envs
        self.sizing: Dict[str, Any] = {}  # what the default was picked from (costmodel)
        if num_workers is None:
            count, self.sizing = default_workers(factory, args, kwargs, num_envs, self.batch_size)
        else:
            count = num_workers
        self.num_workers = count
        self.num_envs = num_envs
        self.local: Optional[Shard] = None  # what this thread steps: all, or the first shard
        self.workers: List[workers.Worker] = []
        self.batch: Optional[batchmem.SharedBatch] = None
        self.agent_memory = False  # the workers write fast steps' observations to the agent
        self._layout: Optional[fastpath.VectorLayout] = None
        self._reply_spin = workers.ReplySpin(config_spin_us())
        shards = workers.split(num_envs, max(count, 1))
        forked = shards if asynchronous and count else shards[1:]
        if not forked:
            self.local = Shard(factory, args, kwargs, 0, num_envs)
            self.facts = self.local.facts()
        else:
            own = None if forked is shards else shards[0]
            self._start_workers(factory, args, kwargs, forked, own)
        self.single_observation_space = self.facts["observation_space"]
        self.action_space = batch_space(self.facts["action_space"], num_envs)
        if self.local is not None:
            self._local_actions = batch_space(self.facts["action_space"], len(self.local.envs))
        # a batch of Box, Discrete, ... actions is one array whose rows are the actions
        self._plain_actions = isinstance(self.facts["action_space"], batchmem.FIXED_SPACES)
        self._out: Any = None  # the observation batch of replies, when no shared batch
        self.pending = asyncsteps.AsyncSteps(self)

    def extra_ops(self) -> Dict[str, Any]:
        """Requests beyond the single-env ones: EnvPool-style async stepping."""
        return {
            "async_reset": self.pending.reset,
            "send": self.pending.send,
            "recv": self.pending.recv,
        }

    def _start_workers(
        self,
        factory: EnvFactory,
        args: Sequence[Any],
        kwargs: Dict[str, Any],
        forked: List[range],
        own: Optional[range],
    ) -> None:
        fd = batchmem.anonymous_file(0)
        try:
            # Fork first: the workers start without this thread's envs in their memory.
            self.workers = workers.start(factory, args, kwargs, forked, fd)
            if own is not None:
                try:
                    self.local = Shard(factory, args, kwargs, own.start, len(own))
                except Exception as exc:  # named as a worker's failure would be
                    raise workers.instance_error(None, exc, own.start) from None
            self.facts = self.workers[0].facts
            space = self.facts["observation_space"]
            size = batchmem.batch_bytes(space, self.num_envs)
            if size is not None and batchmem.reserve(fd, size):
                self.batch = batchmem.SharedBatch(space, self.num_envs, fd)
                if self.local is not None:
                    self.local.out = self.batch.rows(own.start, own.stop)  # type: ignore[union-attr]
            shared = space if self.batch is not None else None  # None: no batch to write into
            for worker in self.workers:
                worker.send("attach", (fd, shared, self.num_envs))
            workers.gather(self.workers, "attach")
        except BaseException:
            self.close()
            raise
        finally:
            os.close(fd)

    def adopt_agent_memory(self, fd: int, layout: Any) -> None:
        """Have the workers write step observations into the mapping shared with the agent.

        fd is a descriptor of the file the server made for it (server.Session);
        each worker gets a duplicate over its pipe and maps that, never a path.
        Only where the step layout keeps a plain observation array in each ring
        slot (what fastpath.Slot.share writes); the reply then needs no copy here.
        """
        if not self.workers or layout.obs is None or layout.shm is None:
            return
        slot = layout.obs
        for worker in self.workers:
            worker.send("adopt_agent_memory", (len(layout.shm), slot.dtype, slot.shape))
            worker.send_fd("adopt_agent_memory", fd)
        if not all(workers.gather(self.workers, "adopt_agent_memory")):
            for worker in self.workers:
                worker.send("adopt_agent_memory", None)
            workers.gather(self.workers, "adopt_agent_memory")
            return  # observations then go through the shared batch, as for TCP
        self.agent_memory = True

    def describe(self) -> Dict[str, Any]:
        return describe(dict(self.facts, num_workers=self.num_workers, sizing=self.sizing))

    def layout(self) -> fastpath.VectorLayout:
        self._layout = fastpath.VectorLayout(
            self.facts["observation_space"], self.facts["action_space"], self.num_envs
        )
        return self._layout

    @property
    def step_layout(self) -> Optional[fastpath.VectorLayout]:
        """The step layout agreed with the agent (with its shared memory), once made."""
        return self._layout

    def _batch(self, shard_observations: Sequence[Any]) -> Any:
        if self.batch is not None:
            return self.batch.arrays  # the workers wrote into it
        observations = [obs for part in shard_observations for obs in part]
        if self._out is None:  # kept: each reply is encoded before the next step fills it
            self._out = create_empty_array(
                self.single_observation_space, self.num_envs, fn=np.empty
            )
        return concatenate(self.single_observation_space, observations, self._out)

    def _each_shard(self, op: str, per_instance: Optional[Sequence[Any]], *args: Any) -> List[Any]:
        """Run op on every shard at once; per_instance values are split among the shards."""
        self.pending.check_idle(op)
        for worker in self.workers:
            if per_instance is None:
                worker.send(op, args)
            else:
                part = per_instance[worker.instances.start : worker.instances.stop]
                worker.send(op, (part, *args))

        def run(shard: Shard) -> Any:
            if op == "reset":
                return shard.reset(self._local_part(per_instance), *args)
            return shard.each(op, *args)

        return self._with_local(op, run)

    def _local_part(self, per_instance: Any) -> Any:
        local = self.local
        return per_instance[local.first : local.first + len(local.envs)]  # type: ignore[union-attr]

    def _with_local(
        self,
        op: str,
        run: Callable[[Shard], Any],
        decode: Optional[Callable[[workers.Worker, Any], Any]] = None,
    ) -> List[Any]:
        """run(local shard) in this thread while the workers run op; every result in shard
        order. A local failure names its instance, as a worker's does, and raises (before
        theirs) only once every worker's reply is read, so the pipes stay in step."""
        if not self.workers:
            return [run(self.local)]  # type: ignore[arg-type]
        mine, failure = [], None
        if self.local is not None:
            try:
                mine.append(run(self.local))
            except Exception as exc:
                failure = workers.instance_error(self.local, exc, self.local.first)
                mine.append(None)
        try:
            spinner = self._reply_spin if self.local is not None else None
            theirs = workers.gather(self.workers, op, decode, spinner)
        except (InstanceError, workers.WorkerError):
            if failure is None:
                raise
            theirs = []
        if failure is not None:
            raise failure
        return mine + theirs

    def reset(self, seeds: Sequence[Optional[int]], options: Optional[dict]) -> Any:
        if len(seeds) != self.num_envs:
            raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} envs")
        results = self._each_shard("reset", list(seeds), options)
        infos = [info for part in results for info in part[1]]
        return [self._batch([part[0] for part in results]), infos]

    def step(self, actions: Any) -> Any:
        # A fast step's batch goes straight to the agent's ring slot (None otherwise).
        target = self._layout.obs_target() if self._layout is not None else None
        self.pending.check_idle("step")
        offset = None
        if self.workers:
            if target is not None and self.agent_memory:
                offset = self._layout.slot * self._layout.capacity  # type: ignore[union-attr]
            else:
                target = None  # the workers write the shared batch; the reply copies it
        results = self._step_shards(actions, offset, target)
        if len(results) == 1:  # the server thread stepped them all: its arrays are the batch
            _, rewards, terminations, truncations, infos = results[0]
        else:
            rewards, terminations, truncations = (
                np.concatenate([part[k] for part in results]) for k in (1, 2, 3)
            )
            infos = [info for part in results for info in part[4]]
        obs = target if target is not None else self._batch([part[0] for part in results])
        return [obs, rewards, terminations, truncations, infos]

    def _step_shards(self, actions: Any, offset: Optional[int], target: Any) -> List[Any]:
        """Step the workers' shards and, meanwhile, this thread's own (writing to target)."""
        whole = isinstance(actions, np.ndarray)
        if whole and len(actions) != self.num_envs:
            raise ValueError(f"step got {len(actions)} actions for {self.num_envs} envs")
        per_instance = None if whole else list(iterate(self.action_space, actions))
        for worker in self.workers:
            lo, hi = worker.instances.start, worker.instances.stop
            part = actions[lo:hi] if whole else per_instance[lo:hi]  # type: ignore[index]
            worker.send("step", (workers.step_actions(part), offset))

        def run(shard: Shard) -> Any:
            lo, hi = shard.first, shard.first + len(shard.envs)
            if whole:
                mine = list(actions[lo:hi]) if self._plain_actions else self._split(actions, lo, hi)
            else:
                mine = per_instance[lo:hi]  # type: ignore[index]
            return shard.step(mine, None if target is None else target[lo:hi])

        decode = workers.StepReply.decode
        return self._with_local("step", run, lambda w, reply: decode(reply, w.infos))

    def _split(self, actions: Any, lo: int, hi: int) -> List[Any]:
        return list(iterate(self._local_actions, actions[lo:hi]))

    def _gathered(self, op: str, *args: Any) -> tuple:
        return tuple(value for part in self._each_shard(op, None, *args) for value in part)

    def render(self) -> Any:
        return self._gathered("render")

    def call(self, name: str, args: Sequence[Any], kwargs: Dict[str, Any]) -> Any:
        return self._gathered("call", name, args, kwargs)

    def get_attr(self, name: str) -> Any:
        return self._gathered("get_attr", name)

    def set_attr(self, name: str, values: Sequence[Any]) -> None:
        if len(values) != self.num_envs:
            raise ValueError(f"set_attr got {len(values)} values for {self.num_envs} envs")
        self.pending.check_idle("set_attr")
        for worker in self.workers:
            worker.send("set_attr", (name, values[worker.instances.start : worker.instances.stop]))
        mine = self._local_part(values) if self.local is not None else []
        self._with_local("set_attr", lambda shard: shard.each("set_attr", name, mine))

    def close(self) -> None:
        pending = getattr(self, "pending", None)  # None if __init__ failed before it
        if pending is not None:
            pending.close()
        if self.local is not None:
            self.local.close()
        for worker in self.workers:
            worker.close()
        if self.batch is not None:
            self.batch.close()
