"""Worker processes that each own a shard of a vector env, inside the env's runtime.

Why fork (not spawn or forkserver): the env factory is whatever env_main.py gave
EnvSidePortal, often a lambda or a closure, and only fork hands it to a child
without pickling it; a forked worker also starts in milliseconds, without
importing the env's libraries again. Forking a threaded server is safe enough
here because the child runs only this module's loop: it first detaches every
inherited socket (other agents' connections, the listener, sibling workers'
pipes) and never touches the server's own objects. What remains is the usual
hazard of fork in a threaded process: a C library lock held by another
connection's thread at that instant (an env stepping with the GIL released)
stays locked in the child, and a worker whose envs need that lock would hang
until the agent's timeout. A zygote forked while the server is still single-
threaded would remove it; it is not built (yet).

A worker never outlives its server: it asks the kernel for SIGKILL when the
thread that forked it ends (PR_SET_PDEATHSIG; that thread is the connection's,
which outlives the vector env), and where that call is missing it notices its
parent is gone on its next idle second.

Messages between server and workers are pickled: both ends are this code in
processes of one server, never a peer from the network. A step's messages avoid
numpy objects, which pickle slowly: actions travel as the bytes of one array,
rewards and flags as raw bytes, infos packed by a schema both ends learn.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import multiprocessing
import os
import pickle
import signal
import stat
import sys
import time
import traceback
import warnings
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from gymnasium.vector.utils import batch_space, iterate

from ...errors import PortalEnvError
from .. import infopack, spin
from ..hosted import EnvFactory
from ..parentdeath import die_with_parent
from .batchmem import FIXED_SPACES
from .shard import InstanceError, Shard

logger = logging.getLogger(__name__)

_PR_SET_NAME = 15
_IDLE_CHECK_S = 1.0  # how often a waiting side checks that its peer process still lives
_CLOSE_WAIT_S = 5.0


class WorkerError(PortalEnvError):
    """A worker process of a vector env died or failed to start."""


def available_cores() -> int:
    """Cores this process may run on: affinity mask and cgroup CPU quota, at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:  # cgroup v2: "max 100000" or "<quota> <period>"
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def split(num_envs: int, num_workers: int) -> List[range]:
    """Contiguous index ranges, sizes differing by at most one (the first ones larger)."""
    base, extra = divmod(num_envs, num_workers)
    ranges, start = [], 0
    for k in range(num_workers):
        size = base + (1 if k < extra else 0)
        ranges.append(range(start, start + size))
        start += size
    return ranges


# -- a step's messages ---------------------------------------------------------------------


def step_actions(part: Any) -> Any:
    """A shard's actions for "step": the bytes of one plain array, else the values one by one."""
    if isinstance(part, np.ndarray) and not part.dtype.hasobject and part.dtype.fields is None:
        return ("array", part.dtype.str, part.shape, part.tobytes())
    return ("items", part)


def actions_of(message: Any, space: Any) -> Sequence[Any]:
    """The per-instance actions step_actions sent; space is the shard's batched action space."""
    if message[0] == "items":
        return message[1]
    _, dtype, shape, raw = message
    batch = np.frombuffer(bytearray(raw), dtype).reshape(shape)
    if isinstance(space, FIXED_SPACES):  # what iterate() gives, without its dispatch
        return list(batch)
    return list(iterate(space, batch))


def _pack_infos(infos: Any, packer: infopack.InfoPacker) -> Tuple[str, Any]:
    packed = packer.pack(infos)
    if packed is None:
        packer.learn(infos)  # the server learns the same schema from these infos
        return ("full", infos)
    return ("packed", packed)


def _unpack_infos(message: Tuple[str, Any], packer: infopack.InfoPacker) -> Any:
    how, infos = message
    if how == "packed":
        return packer.unpack(infos)
    packer.learn(infos)
    return infos


class StepReply:
    """A shard's step result on the pipe: (obs or None, rewards, terminations, truncations,
    infos) with the arrays as bytes and the infos packed once both ends know their schema."""

    @staticmethod
    def encode(result: Tuple[Any, ...], packer: infopack.InfoPacker) -> Tuple[Any, ...]:
        obs, rewards, terminations, truncations, infos = result
        info = _pack_infos(infos, packer)
        return obs, rewards.tobytes(), terminations.tobytes(), truncations.tobytes(), info

    @staticmethod
    def decode(reply: Tuple[Any, ...], packer: infopack.InfoPacker) -> Tuple[Any, ...]:
        obs, rewards, terminations, truncations, info = reply
        flags = (np.frombuffer(terminations, np.bool_), np.frombuffer(truncations, np.bool_))
        return (obs, np.frombuffer(rewards, np.float64), *flags, _unpack_infos(info, packer))


class OneReply:
    """One instance's result for EnvPool-style stepping: (index, obs or None, reward,
    terminated, truncated, info), numbers as Python numbers (the batch casts them anyway)."""

    @staticmethod
    def encode(result: Tuple[Any, ...], packer: infopack.InfoPacker) -> Tuple[Any, ...]:
        index, obs, reward, terminated, truncated, info = result
        if isinstance(reward, (int, float, np.number)):
            reward = float(reward)
        return index, obs, reward, bool(terminated), bool(truncated), _pack_infos(info, packer)

    @staticmethod
    def decode(reply: Tuple[Any, ...], packer: infopack.InfoPacker) -> Tuple[Any, ...]:
        return (*reply[:5], _unpack_infos(reply[5], packer))


# -- in the worker -------------------------------------------------------------------------


def _set_name(first: int) -> None:
    """Name the process after its first instance (`ps`, /proc/PID/comm: penv-worker-3)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, f"penv-worker-{first}".encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _detach_inherited(keep: Sequence[int]) -> None:
    """Point every inherited socket and batch memory except keep at /dev/null.

    dup2 rather than close: the fd numbers stay taken, so an inherited Python
    object that closes its fd later cannot close a file this worker opened.
    """
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in fds:
            if fd <= 2 or fd in keep or fd == null:
                continue
            try:
                if stat.S_ISSOCK(os.fstat(fd).st_mode) or _is_batch(fd):
                    os.dup2(null, fd)
            except OSError:
                pass
    finally:
        os.close(null)


def _is_batch(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:portal-env-batch")
    except OSError:
        return False


def failure(shard: Optional[Shard], exc: BaseException, first: int) -> tuple:
    """The ("error", index, kind, message, traceback) reply for exc raised in shard."""
    index = shard.current if shard is not None else first
    if isinstance(exc, InstanceError):
        return ("error", exc.index, exc.kind, exc.message, exc.trace)
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    trace = "".join(traceback.format_exception(kind, exc, exc.__traceback__))
    return ("error", index, name, str(exc), trace)


def instance_error(shard: Optional[Shard], exc: BaseException, first: int) -> InstanceError:
    """exc, raised in shard in this process, as the error a worker's failure reply becomes."""
    return InstanceError(*failure(shard, exc, first)[1:])


def _worker_main(
    conn: Connection,
    parent_pid: int,
    factory: EnvFactory,
    args: Sequence[Any],
    kwargs: Dict[str, Any],
    first: int,
    count: int,
    batch_fd: int,
) -> None:
    die_with_parent(parent_pid)  # not Linux: the idle check in _serve covers it
    _set_name(first)
    _detach_inherited([conn.fileno(), batch_fd])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    shard: Optional[Shard] = None
    try:
        shard = Shard(factory, args, kwargs, first, count)
        _put(conn, ("ok", shard.facts()))
    except Exception as exc:
        _put(conn, failure(shard, exc, first))
        return
    _serve(conn, parent_pid, shard)


def _put(conn: Connection, message: Any) -> None:
    # plain pickle: multiprocessing's own pickler is slower, and no message needs its reducers
    conn.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))


def _take(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())


class AgentMemory:
    """The agent's shared mapping, seen as this worker's rows of the batch in each ring slot."""

    def __init__(self, mapping: mmap.mmap, dtype: Any, shape: Tuple[int, ...], shard: Shard):
        self.mapping = mapping
        self.dtype, self.shape = np.dtype(dtype), tuple(shape)
        self.count = int(np.prod(shape, dtype=np.int64))
        self.lo, self.hi = shard.first, shard.first + len(shard.envs)

    def rows(self, offset: int) -> np.ndarray:
        """This worker's rows of the batch at offset (a new view; the shard keeps its
        per-instance rows by address)."""
        batch = np.frombuffer(self.mapping, self.dtype, self.count, offset)
        return batch.reshape(self.shape)[self.lo : self.hi]


def _adopt(conn: Connection, shard: Shard, args: Any) -> Optional[AgentMemory]:
    """Map the agent's memory (its descriptor follows on the pipe); reply whether it worked."""
    if args is None:  # another worker could not map it: nobody uses it
        _put(conn, ("ok", True))
        return None
    fd = reduction.recv_handle(conn)
    size, dtype, shape = args
    try:
        if os.fstat(fd).st_size != size:
            _put(conn, ("ok", False))
            return None
        mapping = mmap.mmap(fd, size)
    except OSError as exc:
        _put(conn, failure(shard, exc, shard.first))
        return None
    finally:
        os.close(fd)  # the mapping stays
    _put(conn, ("ok", True))
    return AgentMemory(mapping, dtype, shape, shard)


def _serve(conn: Connection, parent_pid: int, shard: Shard) -> None:
    infos = infopack.InfoPacker(many=True)  # this pipe's step infos (see StepReply)
    one_infos = infopack.InfoPacker(many=False)  # and its instances' infos (see OneReply)
    action_space = batch_space(shard.envs[0].action_space, len(shard.envs))
    memory: Optional[AgentMemory] = None  # where the server may have step observations go
    while True:
        while not conn.poll(_IDLE_CHECK_S):
            if os.getppid() != parent_pid:
                os._exit(1)
        try:
            op, args = _take(conn)
        except EOFError:
            return
        if op in ("step_each", "reset_each"):
            _run_each(conn, shard, op, args, one_infos)
            continue
        if op == "adopt_agent_memory":
            memory = _adopt(conn, shard, args)
            continue
        try:
            if op == "close":
                shard.close()
                _put(conn, ("ok", None))
                return
            if op == "step":  # (actions, offset of this step's batch in the agent's memory)
                actions, offset = args
                out = None if offset is None or memory is None else memory.rows(offset)
                result = shard.step(actions_of(actions, action_space), out)
                _put(conn, ("ok", StepReply.encode(result, infos)))
                continue
            _put(conn, ("ok", _run(shard, op, args)))
        except Exception as exc:
            _put(conn, failure(shard, exc, shard.first))


def _run_each(
    conn: Connection, shard: Shard, op: str, args: Any, packer: infopack.InfoPacker
) -> None:
    """Step (or reset) instances one by one, replying for each as soon as it is done."""
    items, options = args
    for index, value in items:
        try:
            if op == "step_each":
                result = shard.step_one(index, value)
            else:
                result = shard.reset_one(index, value, options)
            _put(conn, ("ok", OneReply.encode(result, packer)))
        except Exception as exc:
            _put(conn, failure(shard, exc, index))


def _run(shard: Shard, op: str, args: Any) -> Any:
    if op == "reset":
        return shard.reset(*args)
    if op == "attach":
        from .batchmem import SharedBatch

        fd, space, n = args
        try:
            if space is not None:
                batch = SharedBatch(space, n, fd)
                shard.out = batch.rows(shard.first, shard.first + len(shard.envs))
        finally:
            os.close(fd)  # the mapping stays; the descriptor is not needed any more
        return None
    return shard.each(op, *args)


# -- in the server -------------------------------------------------------------------------


class Worker:
    """The server's handle on one worker process and its shard of instances."""

    def __init__(
        self,
        context: Any,
        factory: EnvFactory,
        args: Sequence[Any],
        kwargs: Dict[str, Any],
        instances: range,
        batch_fd: int,
    ) -> None:
        self.instances = instances
        self.facts: Dict[str, Any] = {}
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_worker_main,
            args=(
                child,
                os.getpid(),
                factory,
                args,
                kwargs,
                instances.start,
                len(instances),
                batch_fd,
            ),
            daemon=True,
            name=f"portal-env-worker-{instances.start}",
        )
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork in a threaded process; see the module docstring.
            warnings.simplefilter("ignore", DeprecationWarning)
            self.process.start()
        child.close()
        self.dead = False
        self.infos = infopack.InfoPacker(many=True)  # this pipe's step infos (see StepReply)
        self.one_infos = infopack.InfoPacker(many=False)  # and its instances' (see OneReply)

    def describe(self) -> str:
        lo, hi = self.instances.start, self.instances.stop - 1
        what = f"env instance {lo}" if lo == hi else f"env instances {lo}-{hi}"
        return f"the worker process (pid {self.process.pid}) running {what}"

    def send(self, op: str, args: Any) -> None:
        if self.dead:
            raise self._died(op)
        try:
            _put(self.conn, (op, args))
        except (OSError, EOFError) as exc:
            raise self._died(op) from exc

    def send_fd(self, op: str, fd: int) -> None:
        """Pass a duplicate of descriptor fd (after a send(op, ...) that announces it)."""
        if self.dead:
            raise self._died(op)
        try:
            reduction.send_handle(self.conn, fd, self.process.pid)
        except (OSError, EOFError) as exc:
            raise self._died(op) from exc

    def receive(self, op: str, wait: bool = True) -> Any:
        """The reply to op; raises WorkerError if the worker died, InstanceError if it raised.

        With wait=False the caller knows a reply (or the end of the process) is there.
        """
        try:
            while wait and not self.conn.poll(_IDLE_CHECK_S):
                if not self.process.is_alive():
                    raise EOFError
            reply = _take(self.conn)
        except (OSError, EOFError) as exc:
            raise self._died(op) from exc
        if reply[0] == "ok":
            return reply[1]
        raise InstanceError(*reply[1:])

    def _died(self, op: str) -> WorkerError:
        self.dead = True
        self.process.join(0.5)
        code = self.process.exitcode
        how = (
            f"killed by {signal.Signals(-code).name}"
            if code is not None and code < 0
            else f"exit code {code}"
        )
        return WorkerError(
            f"{self.describe()} died ({how}) during '{op}'; this vector env cannot continue. "
            "Close it and make a new one (see the server's log for the env's own output)."
        )

    def close(self) -> None:
        """Ask the worker to close its envs; kill it if it does not finish in time."""
        if not self.dead and self.process.is_alive():
            try:
                _put(self.conn, ("close", None))
                if self.conn.poll(_CLOSE_WAIT_S):
                    _take(self.conn)
            except (OSError, EOFError):
                pass
        self.process.join(_CLOSE_WAIT_S)
        if self.process.is_alive():
            logger.warning("%s did not close in %ss; killing it", self.describe(), _CLOSE_WAIT_S)
            self.process.kill()
            self.process.join()
        self.conn.close()
        self.dead = True


def fork_context() -> Any:
    """The multiprocessing context workers start from (see the module docstring)."""
    if sys.platform == "win32":
        raise WorkerError("worker processes need fork, which Windows lacks; use num_workers=0")
    return multiprocessing.get_context("fork")


def start(
    factory: EnvFactory,
    args: Sequence[Any],
    kwargs: Dict[str, Any],
    shards: List[range],
    batch_fd: int,
) -> List[Worker]:
    """Start one worker per shard and wait until each has made its envs.

    Each inherits batch_fd, the memory the server later lays the batch over
    (its size is known only once an env says what its observations are).
    """
    context = fork_context()
    workers: List[Worker] = []
    try:
        for instances in shards:
            workers.append(Worker(context, factory, args, kwargs, instances, batch_fd))
        for worker in workers:
            worker.facts = worker.receive("make")
    except BaseException:
        for worker in workers:
            worker.close()
        raise
    return workers


class ReplySpin:
    """Polls the workers' pipes for a while before the server thread blocks on them.

    Used once the server thread has stepped its own shard: the workers' replies
    then usually come within tens of microseconds, and a thread that blocks
    costs a wake-up of about that much on a virtual machine. Adaptive, as
    wire.Channel's spin (spin.deadline).
    """

    def __init__(self, limit_us: float) -> None:
        self.limit_ns = int(limit_us * 1000)
        self.wait_ns = 0  # running average of how long the replies took to come

    def wait(self, workers: List[Worker]) -> None:
        until = spin.deadline(time.perf_counter_ns(), self.limit_ns, self.wait_ns)
        pending = [worker.conn for worker in workers] if until else []
        while pending and time.perf_counter_ns() < until:
            pending = [conn for conn in pending if not conn.poll()]

    def waited(self, start: int) -> None:
        self.wait_ns = (3 * self.wait_ns + time.perf_counter_ns() - start) // 4


def gather(
    workers: List[Worker],
    op: str,
    decode: Optional[Callable[[Worker, Any], Any]] = None,
    spinner: Optional[ReplySpin] = None,
) -> List[Any]:
    """Every worker's reply to op, in shard order; the first failure raises after all replied.

    decode(worker, reply) runs on each reply as it comes, failure or not, so a
    reply that teaches an info schema is always learnt (see StepReply). With a
    spinner, the pipes are polled for a while first.
    """
    start = time.perf_counter_ns()
    if spinner is not None:
        spinner.wait(workers)
    results, first_failure = [], None
    for worker in workers:
        try:
            reply = worker.receive(op)
            results.append(decode(worker, reply) if decode else reply)
        except (InstanceError, WorkerError) as exc:
            first_failure = first_failure or exc
            results.append(None)
    if spinner is not None:
        spinner.waited(start)
    if first_failure is not None:
        raise first_failure
    return results
