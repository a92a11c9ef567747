"""The default num_workers of a vector env: a cost model, with its costs measured here.

With K processes stepping at once (the server thread and K - 1 forked workers,
each a contiguous shard), a batch of n steps of t seconds each takes about

    T(1) = n * t                  (the server thread steps every instance)
    T(K) = ceil(n / K) * t + h    (K > 1)

where h is a hand-off: the server thread sends a worker its shard's actions and
reads the reply, a round trip through a pipe to a forked process, with the
messages' encoding at both ends and the worker's wake-up. Both costs are
measured, never assumed, as they move with the machine's speed:

- t: the median step of a throwaway instance of the env, stepped for up to
  PROBE_S with its own RNGs (the real instances are untouched);
- h: the median round trip of a real step request through a real worker
  process whose env does nothing, measured once per server process (at its
  first make_vec that needs it) and kept.

The default is the K in 1..min(cores, n) with the least T(K), if it beats T(1)
by MARGIN; else the server thread steps every instance. The margin covers the
noise in t and h and what the model leaves out: two processes stepping at once
share caches and memory bandwidth, and a machine busy with other work has no
spare core for a worker at all. It is wide because the two mistakes cost
differently: on the project's 2-core VMs, quiet, the hand-off a real batch pays
came out near 0.3 ms against the 0.1-0.15 ms measured in isolation (Pong and
HalfCheetah x8, benchmarks/RESULTS-vector.md), so with a 20 % margin HalfCheetah
(t 50-80 us) was sometimes given workers and ran 0.8x as fast, while declining
workers near the break-even loses little.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from gymnasium import Env, spaces

from ...config import spin_us
from ..hosted import EnvFactory
from . import batchmem, workers

logger = logging.getLogger(__name__)

MARGIN = 0.35  # K > 1 processes only where the model says a batch takes 35 % less time
PROBE_S = 0.05  # the longest the probe instance steps
PROBE_STEPS = 50  # and the most steps it takes
HANDOFF_TRIPS = 30  # round trips timed for h
_HANDOFF_PAUSE_S = 0.0002  # between trips: the worker goes back to waiting, as between steps


def estimate(n: int, step_s: float, handoff_s: float, processes: int) -> float:
    """Seconds a batch of n steps of step_s takes on that many processes (the model)."""
    if processes <= 1:
        return n * step_s
    return math.ceil(n / processes) * step_s + handoff_s


def choose(n: int, step_s: float, handoff_s: float, cores: int) -> int:
    """The number of processes the model says to step n instances with (1: no workers)."""
    most = max(1, min(cores, n))
    best = min(range(1, most + 1), key=lambda k: (estimate(n, step_s, handoff_s, k), k))
    if estimate(n, step_s, handoff_s, best) > (1 - MARGIN) * estimate(n, step_s, handoff_s, 1):
        return 1
    return best


def break_even(n: int, handoff_s: float, cores: int) -> Optional[float]:
    """The shortest step for which the model gives n instances workers (None: never).

    With K = min(cores, n) processes, workers are picked once
    ceil(n / K) * t + h <= (1 - MARGIN) * n * t.
    """
    most = max(1, min(cores, n))
    room = (1 - MARGIN) * n - math.ceil(n / most)
    return handoff_s / room if most > 1 and room > 0 else None


def step_seconds(
    factory: EnvFactory, args: Sequence[Any], kwargs: Dict[str, Any]
) -> Optional[float]:
    """The median step of a throwaway instance (its own RNGs); None if it cannot be probed.

    Resets are not timed. The median, not the mean: a step preempted by another
    process on a busy machine says nothing about the env.
    """
    try:
        env = factory(*args, **kwargs)
    except Exception:
        return None
    try:
        env.reset()
        env.step(env.action_space.sample())  # the first step may warm caches up
        times: List[float] = []
        deadline = time.perf_counter() + PROBE_S
        while len(times) < 3 or (len(times) < PROBE_STEPS and time.perf_counter() < deadline):
            action = env.action_space.sample()
            start = time.perf_counter()
            _, _, terminated, truncated, _ = env.step(action)
            times.append(time.perf_counter() - start)
            if terminated or truncated:
                env.reset()
        return statistics.median(times)
    except Exception:
        return None
    finally:
        try:
            env.close()
        except Exception:
            pass


class _Idle(Env):
    """An env whose step does nothing: what a hand-off costs without any stepping."""

    observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(2)
    _obs = np.zeros(1, np.float32)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> Any:
        return self._obs, {}

    def step(self, action: Any) -> Any:
        return self._obs, 0.0, False, False, {}


_handoff: Dict[str, float] = {}
_handoff_lock = threading.Lock()


def handoff_seconds() -> float:
    """h: the median round trip of a step through a real worker process (see the module
    docstring); measured at the first call in this process, then kept."""
    with _handoff_lock:
        if "s" not in _handoff:
            _handoff["s"] = _measure_handoff()
            logger.debug("a hand-off to a worker process takes %.1f us", _handoff["s"] * 1e6)
        return _handoff["s"]


def _measure_handoff() -> float:
    fd = batchmem.anonymous_file(0)
    try:
        (worker,) = workers.start(_Idle, (), {}, [range(0, 1)], fd)
    finally:
        os.close(fd)  # the worker has its own descriptor
    try:
        actions = workers.step_actions(np.zeros(1, np.int64))
        spinner = workers.ReplySpin(spin_us())
        trips = []
        for _ in range(HANDOFF_TRIPS + 3):
            time.sleep(_HANDOFF_PAUSE_S)
            start = time.perf_counter()
            worker.send("step", (actions, None))
            workers.gather([worker], "step", _decode, spinner)
            trips.append(time.perf_counter() - start)
        return statistics.median(trips[3:])  # the first trips warm up
    finally:
        worker.close()


def _decode(worker: workers.Worker, reply: Any) -> Tuple[Any, ...]:
    return workers.StepReply.decode(reply, worker.infos)


def default_workers(
    factory: EnvFactory, args: Sequence[Any], kwargs: Dict[str, Any], n: int, cores: int
) -> Tuple[int, Dict[str, Any]]:
    """(processes, what was measured) for n instances on cores: see the module docstring.

    An env that cannot be probed gets a process per core, as if it were slow.
    """
    most = max(1, min(cores, n))
    if most == 1:
        return 1, {}
    step_s = step_seconds(factory, args, kwargs)
    if step_s is None:
        return most, {}
    handoff_s = handoff_seconds()
    chosen = choose(n, step_s, handoff_s, cores)
    return chosen, {"step_s": step_s, "handoff_s": handoff_s}
