"""EnvPool-style stepping of a vector env: send actions for some instances, receive the first
M that finish, with their instance ids.

The server thread only hands work to the worker processes and collects what they
report; each worker steps its instances one by one and reports each as soon as
it is done, so a fast instance never waits for a slow one. (A vector env made
for synchronous use also has a shard of its own in the server thread, stepped
there at once: its instances can hold the others up.)

The agent posts its next recv before it hands a batch to the user (vector.flight),
so a recv often waits here while the user's agent thinks. Meanwhile the agent's
sends arrive: recv reads them too and runs them at once (server.Session.meanwhile),
so instances sent meanwhile can finish first, as if the recv had come later. A
batch's observations go into the ring slot of the agent's shared memory that the
agent named (obsring), which it hands out as a read-only view: no copy to the agent.
"""

from __future__ import annotations

import selectors
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from . import workers
from .flight import busy_error, check_ids, check_not_flying
from .shard import InstanceError

Result = Tuple[Any, ...]  # (index, obs or None, reward, terminated, truncated, info)


class AsyncSteps:
    """The instances of one hosted vector env that are stepping or wait to be received."""

    def __init__(self, vec: Any) -> None:
        self.vec = vec
        self.in_flight = np.zeros(vec.num_envs, dtype=np.bool_)
        self.done: Deque[Result] = deque()
        self.failure: Optional[Exception] = None
        self._action_spaces: Dict[int, Any] = {}
        self._sent = False  # whether instances may be in flight (a step's check is then a scan)
        self._selector: Any = None  # the workers' pipes (and the agent's socket), kept
        self._agent: Optional[Tuple[Any, Callable[[], bool], Callable[[], bool]]] = None
        self._listening = True  # reading the agent's requests while recv() waits
        self._registered = False  # the agent's socket is in the selector

    def check_idle(self, op: str) -> None:
        """Raise if instances are in flight: op would mix their replies with its own."""
        if not self._sent:  # nothing sent since all were last found back: skip the scan
            return
        if self.in_flight.any():
            raise busy_error(op, self.in_flight)
        self._sent = False

    def _claim(self, env_ids: Sequence[Any]) -> List[int]:
        ids = [int(i) for i in env_ids]
        check_ids(ids, self.vec.num_envs)
        check_not_flying(ids, self.in_flight)
        self.in_flight[ids] = True
        self._sent = True
        return ids

    def send(self, env_ids: Sequence[Any], actions: Any) -> None:
        try:
            ids = self._claim(env_ids)
            space = self._action_spaces.get(len(ids))
            if space is None:
                space = batch_space(self.vec.facts["action_space"], len(ids))
                self._action_spaces[len(ids)] = space
            self._dispatch("step_each", list(zip(ids, iterate(space, actions))), None)
        except Exception as exc:
            self._keep(exc)

    def reset(self, seeds: Sequence[Optional[int]], options: Optional[dict]) -> None:
        try:
            ids = self._claim(range(self.vec.num_envs))
            self._dispatch("reset_each", list(zip(ids, seeds)), options)
        except Exception as exc:
            self._keep(exc)

    def _keep(self, exc: Exception) -> None:
        """A failed send or reset raises from the next recv, before it takes any result:
        the agent sends that recv without waiting for the send's reply (Client.call_next)."""
        if self.failure is None:
            self.failure = exc

    def _dispatch(self, op: str, items: List[Tuple[int, Any]], options: Any) -> None:
        for worker in self.vec.workers:
            theirs = [item for item in items if item[0] in worker.instances]
            if theirs:
                worker.send(op, (theirs, options))
        local = self.vec.local
        if local is None:
            return
        # The server thread's own instances (all of them without workers; the first shard
        # of a vector env made for synchronous use): stepped now, in this thread.
        lo, hi = local.first, local.first + len(local.envs)
        for index, value in items:
            if not lo <= index < hi:
                continue
            try:
                one = local.step_one if op == "step_each" else local.reset_one
                self.done.append(one(index, value, *([options] if op != "step_each" else [])))
            except Exception as exc:
                self._fail(index, exc)

    def _fail(self, index: int, exc: Exception) -> None:
        self.in_flight[index] = False
        if self.failure is None:
            if not isinstance(exc, InstanceError):
                kind = type(exc)
                exc = InstanceError(index, kind.__qualname__, str(exc), "")
            self.failure = exc

    def recv(self, count: int, slot: int = 0) -> List[Any]:
        """The first count instances to finish: [obs, rewards, terms, truncs, infos, env_ids];
        with a ring slot, the obs are written there and obs is the slot's number."""
        self._in_ring(slot)  # a bad slot raises before anything is taken
        self._listening = True
        while len(self.done) < count and self.failure is None:
            if int(self.in_flight.sum()) < count:
                raise ValueError(
                    f"recv() waits for {count} instances but only "
                    f"{int(self.in_flight.sum())} were sent actions; send() more first"
                )
            self._wait()
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure
        return self._batch([self.done.popleft() for _ in range(count)], slot)

    def listen(self, sock: Any, buffered: Callable[[], bool], read: Callable[[], bool]) -> None:
        """While recv() waits for workers, also read the agent's next requests: read() runs
        one (a send runs at once) and says whether to read on; buffered() whether one was
        read into a buffer already. See server.Session.meanwhile."""
        self._agent = (sock, buffered, read)

    def _wait(self) -> None:
        """Block until a worker replies or the agent sends a request; take what came."""
        selector = self._selector
        if selector is None:
            selector = self._selector = selectors.DefaultSelector()
            for worker in self.vec.workers:
                selector.register(worker.conn.fileno(), selectors.EVENT_READ, worker)
        listening = self._agent is not None and self._listening
        if listening and self._agent[1]():  # a request is read already: select() misses it
            self._listening = self._agent[2]()
            return
        if listening and not self._registered:
            selector.register(self._agent[0], selectors.EVENT_READ, None)
            self._registered = True
        elif self._registered and not listening:
            selector.unregister(self._agent[0])
            self._registered = False
        for key, _ in selector.select(None):
            worker = key.data
            if worker is None:  # the agent's socket
                self._listening = self._agent[2]()
                continue
            self._collect(worker)
            while worker.conn.poll():  # whatever else it sent meanwhile
                self._collect(worker)

    def _collect(self, worker: Any) -> None:
        try:
            reply = worker.receive("recv", wait=False)
        except InstanceError as exc:
            self._fail(exc.index, exc)
            return
        self.done.append(workers.OneReply.decode(reply, worker.one_infos))

    def _batch(self, results: List[Result], slot: int = 0) -> List[Any]:
        ids = [r[0] for r in results]
        self.in_flight[ids] = False
        vec = self.vec
        target = self._ring_target(slot, len(ids))
        if target is not None:
            if vec.batch is not None:
                np.take(vec.batch.arrays, ids, axis=0, out=target)
            else:
                concatenate(vec.single_observation_space, [r[1] for r in results], target)
            obs: Any = slot
        elif vec.batch is not None:
            obs = _take(vec.batch.arrays, ids)
        else:
            space = vec.single_observation_space
            out = create_empty_array(space, len(ids), fn=np.empty)
            obs = concatenate(space, [r[1] for r in results], out)
        return [
            obs,
            np.array([r[2] for r in results], dtype=np.float64),
            np.array([r[3] for r in results], dtype=np.bool_),
            np.array([r[4] for r in results], dtype=np.bool_),
            [r[5] for r in results],
            np.array(ids, dtype=np.int32),  # EnvPool's dtype for info["env_id"]
        ]

    def _in_ring(self, slot: int) -> bool:
        """Whether the agent asked for a batch in ring slot slot (obsring) and the layout has
        a ring; ValueError for a slot the ring does not have."""
        layout = self.vec.step_layout
        if not slot or layout is None or layout.shm is None or layout.obs is None:
            return False
        if not 0 < slot <= layout.ring_slots:
            raise ValueError(f"recv into ring slot {slot} of {layout.ring_slots}")
        return True

    def _ring_target(self, slot: int, rows: int) -> Optional[np.ndarray]:
        """Where the agent asked this batch's observations to go: the first rows of its
        ring slot; None if it asked for none or the layout has no ring."""
        if not self._in_ring(slot):
            return None
        layout = self.vec.step_layout
        row = layout.obs.count // self.vec.num_envs
        shape = (rows,) + layout.obs.shape[1:]
        return np.frombuffer(
            layout.shm, layout.obs.dtype, rows * row, slot * layout.capacity
        ).reshape(shape)

    def close(self) -> None:
        if self._selector is not None:
            self._selector.close()
            self._selector = None


def _take(tree: Any, ids: List[int]) -> Any:
    if isinstance(tree, dict):
        return {key: _take(value, ids) for key, value in tree.items()}
    if isinstance(tree, tuple):
        return tuple(_take(value, ids) for value in tree)
    return tree[ids]  # a copy: the rows may be overwritten by the next steps
