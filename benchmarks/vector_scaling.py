"""Vector envs across cores: make_vec with worker processes against gymnasium and EnvPool.

Usage: python benchmarks/vector_scaling.py [--quick] [--repeats R] [--only targets|scaling]
       [--groups pong8,sleep,...] [--plot benchmarks/vector_scaling.png]
       [--envpool-python PATH]

Two tables, each from one run of this script:

1. Targets (issue 24; ``--only targets``): Pong-v5 x8 and CartPole-v1 x8 as
   ``SyncVectorEnv``, ``AsyncVectorEnv`` and ``make_vec`` with its defaults, as a user
   calls it, beside the tuned rows (``num_workers=2``, ``num_workers=0``) and the
   ceiling: one process per core, each stepping its share of the envs as a
   ``SyncVectorEnv``, all at once and with no communication (what the cores can give).
   HalfCheetah-v5 x8 the same way, to check the default's choice (no target). An agent
   that sleeps 1 ms per batch (inference off the CPU) stepping Pong x8 synchronously
   versus with ``batch_size=4`` (``send``/``recv``), and that agent alone with no envs:
   its rate against the synchronous loop bounds the batch_size ratio (the agent waits
   1 ms per batch of 4 instead of per batch of 8). Single envs (CartPole, Pong,
   HalfCheetah-v5 when mujoco imports) in-process versus over a Unix socket, and, for
   Pong and HalfCheetah, with the agent and the server's thread for it pinned to one
   core and not spinning (an experiment: is a step faster on the agent's core?).
   It ends with the Markdown table of the targets that the README quotes.
2. Scaling: Pong-v5 x16 as ``make_vec`` with ``num_workers`` = 0..cores, beside
   ``SyncVectorEnv``, ``AsyncVectorEnv``, the ceiling, and EnvPool's own Pong-v5 x16 (its own
   preprocessing; run by a Python that has envpool, default
   ``~/.cache/portal-env-bench/vec-envpool/bin/python``, else n/a).

How a row is timed: every row is set up first and kept open; then repetitions
run interleaved (row A, row B, ..., row A, row B, ...), at least 7 of them, so
that a change in the machine's speed hits every row alike. A repetition is a
fixed number of calls, about ``repeat_s`` worth, fixed by a warm-up. Each row
reports the median and the range of its repetitions; each ratio is taken within
each repetition (row A's k-th against row B's k-th) and reported as the median
and range of those. This VM's speed moves by +-20 % from minute to minute: the
in-process Pong speed of every repetition is printed as the machine's speed
marker. Beside env-steps/s each row reports the CPU seconds that the agent, the
server and every worker (all descendants of this script) used per 1,000
env-steps, from /proc, over the same repetitions (median). Memory is the summed
PSS of the row's env-side processes (server and workers, AsyncVectorEnv's
workers, EnvPool's process) after its repetitions: the memory the row's envs
cost, shared pages split fairly. A row of make_vec defaults also says what the
server's cost model picked (num_workers, and the step and hand-off it measured).

Servers are this script with ``--serve`` on a Unix socket, one per row, each in
its own process group and always stopped (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
TOKEN = "vector-scaling-token"
SEED = 0
PONG, CARTPOLE, CHEETAH = "ALE/Pong-v5", "CartPole-v1", "HalfCheetah-v5"
SLEEP_S = 0.001  # an agent's inference per batch, off the CPU (an accelerator)
DEFAULTS = "make_vec (defaults)"
SLEEP_SYNC = "make_vec step + 1 ms sleep"
SLEEP_BATCH = "make_vec batch_size=4 + 1 ms sleep"
AGENT_ALONE = "the agent alone: batches of 4, no envs"
PINNED = "portal Unix, server on the agent's core"
DEFAULT_ENVPOOL_PYTHON = Path.home() / ".cache/portal-env-bench/vec-envpool/bin/python"
TICKS = os.sysconf("SC_CLK_TCK")
PIN_VAR = "VECTOR_SCALING_PIN"  # --serve: pin each connection's thread to this core

Step = Callable[[], int]  # one call; returns the env-steps it made
Made = Tuple[Step, List[int], str]  # (step, env-side pids, a note for the table)


@dataclass(frozen=True)
class Plan:
    warmup_s: float
    repeat_s: float
    repeats: int

    @classmethod
    def for_mode(cls, quick: bool, repeats: Optional[int] = None) -> Plan:
        plan = cls(0.3, 0.4, 3) if quick else cls(1.0, 1.5, 7)
        return plan if repeats is None else cls(plan.warmup_s, plan.repeat_s, repeats)


@dataclass
class Row:
    group: str
    name: str
    make: Callable[[ExitStack], Made]
    step: Optional[Step] = None
    pids: List[int] = field(default_factory=list)
    calls: int = 0
    rates: List[float] = field(default_factory=list)  # env-steps/s of each repetition
    cpus: List[float] = field(default_factory=list)  # CPU s per 1,000 env-steps, each
    memory_mb: Optional[float] = None
    reason: str = ""
    note: str = ""
    external: Optional[Callable[[Plan], Tuple[float, float, float]]] = None  # EnvPool
    affinity: Optional[set] = None  # the cores the agent runs on during this row

    @property
    def median(self) -> Optional[float]:
        return statistics.median(self.rates) if self.rates else None


# --- /proc accounting --------------------------------------------------------------------


def _children() -> Dict[int, List[int]]:
    tree: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            tree.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    return tree


def descendants(pid: int) -> List[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(tree.get(current, []))
    return out


def cpu_seconds(pids: List[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def pss_mb(pids: List[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


# --- servers -----------------------------------------------------------------------------


@contextmanager
def server(extra_env: Optional[Dict[str, str]] = None) -> Iterator[Tuple[str, int]]:
    """A fresh server on a Unix socket, in its own process group; (address, pid)."""
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready"
        env = dict(os.environ, PORTAL_ENV_READY_FILE=str(ready), **(extra_env or {}))
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        log = open(Path(tmp) / "log", "w+")
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--serve", "--socket", str(Path(tmp) / "s")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"server did not start:\n{log.read()[-2000:]}")
                time.sleep(0.05)
            yield ready.read_text().strip(), proc.pid
        finally:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
            proc.wait()
            log.close()


def serve(socket_path: str) -> None:
    """--serve: gymnasium.make with ALE registered, on socket_path."""
    import ale_py
    import gymnasium

    from portal_env import EnvSidePortal
    from portal_env.portal.screenbuf import ale_screen_into

    gymnasium.register_envs(ale_py)
    pin = os.environ.get(PIN_VAR)

    def make(*args: Any, **kwargs: Any) -> Any:  # as the built-in ale env serves them
        if pin:  # the experiment of issue 24: this connection's thread on the agent's core
            os.sched_setaffinity(0, {int(pin)})
        return ale_screen_into(gymnasium.make(*args, **kwargs))

    EnvSidePortal(env_factory=make, token=TOKEN, socket_path=socket_path).run()


# --- row makers --------------------------------------------------------------------------


def _vector_step(vec: Any, sleep: float = 0.0) -> Step:
    space = vec.action_space
    space.seed(SEED)
    vec.reset(seed=SEED)
    n = vec.num_envs

    def step() -> int:
        vec.step(space.sample())
        if sleep:
            time.sleep(sleep)  # the agent's inference, on an accelerator: the CPU is free
        return n

    return step


def local_vector(env_id: str, n: int, asynchronous: bool) -> Callable:
    def make(stack: ExitStack) -> Made:
        import ale_py
        import gymnasium

        gymnasium.register_envs(ale_py)
        fns = [lambda: gymnasium.make(env_id) for _ in range(n)]
        if asynchronous:
            vec = gymnasium.vector.AsyncVectorEnv(fns)
            pids = [p.pid for p in vec.processes]
        else:
            vec = gymnasium.vector.SyncVectorEnv(fns)
            pids = []
        stack.callback(vec.close)
        return _vector_step(vec), pids, ""

    return make


def portal_vector(env_id: str, n: int, sleep: float = 0.0, **options: Any) -> Callable:
    def make(stack: ExitStack) -> Made:
        from portal_env import make_vec

        address, pid = stack.enter_context(server())
        vec = make_vec("bench", n, [env_id], address=address, token=TOKEN, **options)
        stack.callback(vec.close)
        if options.get("batch_size", n) < n:
            step = _async_step(vec, sleep)
        else:
            step = _vector_step(vec, sleep)
        return step, descendants(pid), _sizing_note(vec, options)

    return make


def _sizing_note(vec: Any, options: Dict[str, Any]) -> str:
    """What the server's cost model picked for a row of defaults."""
    if options.get("num_workers") is not None or getattr(vec, "num_workers", None) is None:
        return ""
    sizing = getattr(vec, "sizing", {})
    if not sizing:
        return f"num_workers={vec.num_workers}"
    return (
        f"num_workers={vec.num_workers} (step {sizing['step_s'] * 1e6:,.0f} us, "
        f"hand-off {sizing['handoff_s'] * 1e6:,.0f} us)"
    )


def _async_step(vec: Any, sleep: float) -> Step:
    """EnvPool's loop: recv a batch, think, send its actions back."""
    space = vec.single_action_space
    space.seed(SEED)
    vec.async_reset(seed=SEED)

    def step() -> int:
        _, _, _, _, info = vec.recv()
        ids = info["env_id"]
        actions = [space.sample() for _ in ids]
        if sleep:
            time.sleep(sleep)
        vec.send(actions, ids)
        return len(ids)

    return step


def agent_alone(env_id: str, batch: int, sleep: float) -> Callable:
    """The sleeping agent's loop with no envs at all: what batch_size=batch can reach at
    best, whatever the envs and the portal do (the agent waits 1 ms per batch either way)."""

    def make(stack: ExitStack) -> Made:
        import ale_py
        import gymnasium

        gymnasium.register_envs(ale_py)
        space = gymnasium.make(env_id).action_space
        space.seed(SEED)

        def step() -> int:
            [space.sample() for _ in range(batch)]
            time.sleep(sleep)
            return batch

        return step, [], ""

    return make


def single(env_id: str, remote: bool, pin: Optional[int] = None) -> Callable:
    """One env in-process or over a Unix socket; with pin, the server's thread for it runs
    on that core, as the agent's does during the row (Row.affinity), and neither spins."""

    def make(stack: ExitStack) -> Made:
        import ale_py
        import gymnasium

        gymnasium.register_envs(ale_py)
        if remote:
            from portal_env import AgentSidePortal

            quiet = {PIN_VAR: str(pin), "PORTAL_ENV_SPIN_US": "0"} if pin is not None else {}
            address, pid = stack.enter_context(server(quiet))
            with patched_environ(quiet):
                env = AgentSidePortal("bench", [env_id], address=address, token=TOKEN)
            pids = [pid]
        else:
            env, pids = gymnasium.make(env_id), []
        stack.callback(env.close)
        space = env.action_space
        space.seed(SEED)
        env.reset(seed=SEED)

        def step() -> int:
            _, _, terminated, truncated, _ = env.step(space.sample())
            if terminated or truncated:
                env.reset()
            return 1

        return step, pids, ""

    return make


@contextmanager
def patched_environ(values: Dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def affinity(cores: Optional[set]) -> Iterator[None]:
    """This thread on cores for a while (None: as it is)."""
    if cores is None:
        yield
        return
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


def envpool_row(n: int, python: Path) -> Callable[[Plan], Tuple[float, float, float]]:
    """EnvPool's Pong-v5 xn in a subprocess of its own Python: (steps/s, CPU/1k, PSS MB)."""

    def run(plan: Plan) -> Tuple[float, float, float]:
        code = ENVPOOL_AGENT.format(n=n, seconds=plan.repeat_s)
        out = subprocess.run(
            [str(python), "-c", code], capture_output=True, text=True, timeout=600, check=True
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        return result["rate"], result["cpu_per_1000"], result["pss_mb"]

    return run


ENVPOOL_AGENT = """
import json, os, time
import numpy as np, envpool
env = envpool.make("Pong-v5", env_type="gymnasium", num_envs={n}, batch_size={n}, seed=0)
env.reset()
actions = np.zeros({n}, np.int32)
def cpu():
    t = os.times()
    return t.user + t.system
end = time.perf_counter() + 0.5
while time.perf_counter() < end:
    env.step(actions)
calls, start, c0 = 0, time.perf_counter(), cpu()
while time.perf_counter() - start < {seconds}:
    env.step(np.random.randint(0, 6, {n}).astype(np.int32))
    calls += 1
wall, used = time.perf_counter() - start, cpu() - c0
pss = sum(int(l.split()[1]) for l in open("/proc/self/smaps_rollup") if l.startswith("Pss:"))
print(json.dumps(dict(rate=calls * {n} / wall, cpu_per_1000=used / (calls * {n}) * 1000,
                      pss_mb=pss / 1024)))
"""


def parallel_ceiling(env_id: str, n: int, processes: int) -> Callable:
    """The most the cores give: `processes` processes, each stepping its share of n envs as a
    SyncVectorEnv, with no communication at all; (summed steps/s, CPU/1k, PSS MB)."""

    def run(plan: Plan) -> Tuple[float, float, float]:
        import multiprocessing

        context = multiprocessing.get_context("fork")
        start = context.Barrier(processes)
        results = context.Queue()
        shares = [n // processes + (1 if k < n % processes else 0) for k in range(processes)]
        children = [
            context.Process(target=_ceiling_child, args=(env_id, share, plan, start, results))
            for share in shares
        ]
        for child in children:
            child.start()
        try:
            reports = [results.get(timeout=120) for _ in children]
        finally:
            for child in children:
                child.join(10)
                if child.is_alive():
                    child.kill()
        steps = sum(r[0] for r in reports)
        cpu = sum(r[1] for r in reports)
        return steps / plan.repeat_s, cpu / steps * 1000, sum(r[2] for r in reports)

    return run


def _ceiling_child(env_id: str, n: int, plan: Plan, start: Any, results: Any) -> None:
    step, _, _ = local_vector(env_id, n, False)(ExitStack())
    end = time.perf_counter() + plan.warmup_s
    while time.perf_counter() < end:
        step()
    start.wait()
    steps, c0, end = 0, cpu_seconds([os.getpid()]), time.perf_counter() + plan.repeat_s
    while time.perf_counter() < end:
        steps += step()
    results.put((steps, cpu_seconds([os.getpid()]) - c0, pss_mb([os.getpid()])))


# --- timing ------------------------------------------------------------------------------


def open_row(row: Row, stack: ExitStack, plan: Plan) -> None:
    if row.external is not None or row.reason:
        return
    try:
        row.step, row.pids, row.note = row.make(stack)
        steps, start = 0, time.perf_counter()
        calls = 0
        with affinity(row.affinity):
            while time.perf_counter() - start < plan.warmup_s:
                steps += row.step()
                calls += 1
        row.calls = max(10, round(calls / (time.perf_counter() - start) * plan.repeat_s))
    except Exception as exc:  # reported in the table: a row that cannot run is n/a
        row.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}"
        row.step = None


def time_row(row: Row, plan: Plan) -> None:
    """One repetition of row: its rate and CPU go to row.rates and row.cpus."""
    if row.external is not None:
        try:
            rate, cpu, memory = row.external(plan)
        except (subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
            row.reason = f"{type(exc).__name__}: {str(exc)[:200]}"
            row.external = None
            row.rates.clear()
            return
        row.memory_mb = max(row.memory_mb or 0.0, memory)
        row.rates.append(rate)
        row.cpus.append(cpu)
        return
    if row.step is None:
        return
    everyone = descendants(os.getpid())
    with affinity(row.affinity):
        cpu0, start, steps = cpu_seconds(everyone), time.perf_counter(), 0
        for _ in range(row.calls):
            steps += row.step()
        wall = time.perf_counter() - start
    used = cpu_seconds(everyone) - cpu0
    row.rates.append(steps / wall)
    row.cpus.append(used / steps * 1000)
    if row.pids:
        row.memory_mb = max(row.memory_mb or 0.0, pss_mb(descendants_of_all(row.pids)))


def descendants_of_all(pids: List[int]) -> List[int]:
    out: List[int] = []
    for pid in pids:
        out.extend(descendants(pid))
    return sorted(set(out))


def run_rows(rows: List[Row], plan: Plan) -> None:
    with ExitStack() as stack:
        for row in rows:
            open_row(row, stack, plan)
        for _ in range(plan.repeats):
            for row in rows:
                time_row(row, plan)


# --- tables ------------------------------------------------------------------------------


def ceiling_row(group: str, env_id: str, n: int, cores: int) -> Row:
    row = Row(group, f"ceiling: {cores} processes, no communication", lambda stack: (None, [], ""))
    row.external = parallel_ceiling(env_id, n, cores)
    return row


def target_rows(cores: int) -> List[Row]:
    rows = [ceiling_row("pong8", PONG, 8, cores)]
    for group, env_id in (("pong8", PONG), ("cp8", CARTPOLE), ("cheetah8", CHEETAH)):
        rows.append(Row(group, "SyncVectorEnv", local_vector(env_id, 8, False)))
        if group != "cheetah8":  # HalfCheetah x8 only checks the default's choice
            rows.append(Row(group, "AsyncVectorEnv", local_vector(env_id, 8, True)))
        rows.append(Row(group, DEFAULTS, portal_vector(env_id, 8)))
        for k in (0, 2):  # tuned: 2 for Pong, 0 for CartPole
            name = f"make_vec num_workers={k}"
            rows.append(Row(group, name, portal_vector(env_id, 8, num_workers=k)))
    rows += [
        Row("sleep", SLEEP_SYNC, portal_vector(PONG, 8, sleep=SLEEP_S)),
        Row("sleep", SLEEP_BATCH, portal_vector(PONG, 8, sleep=SLEEP_S, batch_size=4)),
        Row("sleep", AGENT_ALONE, agent_alone(PONG, 4, SLEEP_S)),
    ]
    core = max(os.sched_getaffinity(0))
    for env_id, group in ((PONG, "pong1"), (CARTPOLE, "cp1"), (CHEETAH, "cheetah1")):
        rows.append(Row(group, "in-process", single(env_id, False)))
        rows.append(Row(group, "portal Unix", single(env_id, True)))
        if group != "cp1" and cores > 1:  # the affinity experiment (issue 24, item 4)
            pinned = Row(group, PINNED, single(env_id, True, pin=core))
            pinned.affinity = {core}
            rows.append(pinned)
    return rows


MARKER = ("pong1", "in-process")  # the machine's speed in each repetition

# (label for the README, group, numerator, denominator, at least)
TARGETS = [
    ("Pong ×8 `make_vec` defaults / `SyncVectorEnv`", "pong8", DEFAULTS, "SyncVectorEnv", 1.4),
    ("Pong ×8 `make_vec` defaults / `AsyncVectorEnv`", "pong8", DEFAULTS, "AsyncVectorEnv", 1.4),
    (
        "Pong ×8 `batch_size=4` / sync `make_vec`, agent sleeping 1 ms per batch",
        "sleep",
        SLEEP_BATCH,
        SLEEP_SYNC,
        1.3,
    ),
    ("CartPole ×8 `make_vec` defaults / `SyncVectorEnv`", "cp8", DEFAULTS, "SyncVectorEnv", 0.75),
    ("CartPole ×8 `make_vec` defaults / `AsyncVectorEnv`", "cp8", DEFAULTS, "AsyncVectorEnv", 4.0),
    ("single env Pong, Unix socket / in-process", "pong1", "portal Unix", "in-process", 0.90),
    (
        "single env HalfCheetah, Unix socket / in-process",
        "cheetah1",
        "portal Unix",
        "in-process",
        0.70,
    ),
    ("single env CartPole, Unix socket / in-process", "cp1", "portal Unix", "in-process", 0.25),
]

COMPARISONS = [  # informational ratios, no target
    ("pong8", DEFAULTS, "ceiling: {cores} processes, no communication"),
    ("pong8", "make_vec num_workers=2", "SyncVectorEnv"),
    ("pong8", "make_vec num_workers=0", "SyncVectorEnv"),
    ("cp8", "make_vec num_workers=0", "SyncVectorEnv"),
    ("cp8", "make_vec num_workers=2", "SyncVectorEnv"),
    ("cheetah8", DEFAULTS, "SyncVectorEnv"),
    ("cheetah8", "make_vec num_workers=0", "SyncVectorEnv"),
    ("cheetah8", "make_vec num_workers=2", "SyncVectorEnv"),
    # the bound of the batch_size target: the agent alone against the synchronous loop
    ("sleep", AGENT_ALONE, SLEEP_SYNC),
    ("sleep", SLEEP_BATCH, AGENT_ALONE),
    ("pong1", PINNED, "portal Unix"),
    ("cheetah1", PINNED, "portal Unix"),
]

TITLES = {
    "pong8": "ALE/Pong-v5 x8",
    "cp8": "CartPole-v1 x8",
    "cheetah8": "HalfCheetah-v5 x8 (does the default pick right?)",
    "sleep": "ALE/Pong-v5 x8, agent sleeps 1 ms per batch (inference off the CPU)",
    "pong1": "ALE/Pong-v5, 1 env",
    "cp1": "CartPole-v1, 1 env",
    "cheetah1": "HalfCheetah-v5, 1 env",
    "scale": "ALE/Pong-v5 x16: scaling with num_workers",
}


def scaling_rows(cores: int, envpool_python: Optional[Path]) -> List[Row]:
    rows = [
        Row("scale", "SyncVectorEnv", local_vector(PONG, 16, False)),
        Row("scale", "AsyncVectorEnv", local_vector(PONG, 16, True)),
    ]
    for k in range(0, cores + 1):
        rows.append(
            Row("scale", f"make_vec num_workers={k}", portal_vector(PONG, 16, num_workers=k))
        )
    rows.append(ceiling_row("scale", PONG, 16, cores))
    envpool = Row("scale", "EnvPool Pong-v5 (own preprocessing)", lambda stack: (None, [], ""))
    if envpool_python is not None and envpool_python.exists():
        envpool.external = envpool_row(16, envpool_python)
    else:
        envpool.reason = f"no Python with envpool at {envpool_python} (see --envpool-python)"
    rows.append(envpool)
    return rows


def find(rows: List[Row], group: str, name: str) -> Optional[Row]:
    for row in rows:
        if row.group == group and row.name == name and row.rates:
            return row
    return None


def value(rows: List[Row], group: str, name: str) -> Optional[float]:
    """The row's median env-steps/s, None if it did not run."""
    row = find(rows, group, name)
    return row.median if row else None


def ratios(rows: List[Row], group: str, num: str, den: str) -> List[float]:
    """num / den within each repetition in which both ran."""
    a, b = find(rows, group, num), find(rows, group, den)
    if a is None or b is None:
        return []
    return [x / y for x, y in zip(a.rates, b.rates)]


def spread(values: List[float], fmt: str = "{:.2f}") -> Tuple[str, str]:
    """(median, "low-high") of values, formatted."""
    return fmt.format(
        statistics.median(values)
    ), f"{fmt.format(min(values))}–{fmt.format(max(values))}"


def format_rows(rows: List[Row]) -> str:
    lines, group = [], None
    for row in rows:
        if row.group != group:
            group = row.group
            lines.append(f"\n{TITLES[group]}")
            lines.append(
                f"  {'variant':40} {'env-steps/s':>11} {'range':>17} {'CPU s/1k':>9} {'PSS MB':>7}"
            )
        if not row.rates:
            lines.append(f"  {row.name:40} {'n/a':>11}   {row.reason}")
            continue
        memory = f"{row.memory_mb:,.0f}" if row.memory_mb else "-"
        low, high = min(row.rates), max(row.rates)
        lines.append(
            f"  {row.name:40} {row.median:>11,.0f} {f'{low:,.0f}–{high:,.0f}':>17} "
            f"{statistics.median(row.cpus):>9.3f} {memory:>7}"
            + (f"  {row.note}" if row.note else "")
        )
    return "\n".join(lines)


def format_marker(rows: List[Row]) -> str:
    row = find(rows, *MARKER)
    if row is None:
        return "machine speed marker (in-process Pong): n/a"
    each = ", ".join(f"{rate:,.0f}" for rate in row.rates)
    median, span = spread(row.rates, "{:,.0f}")
    return (
        f"machine speed marker, in-process ALE/Pong-v5 steps/s: median {median}, range {span} "
        f"(each repetition: {each})"
    )


def format_targets(rows: List[Row], cores: int, plan: Plan) -> str:
    lines = [
        f"\nTargets: median and range of the ratio within each of {plan.repeats} interleaved "
        "repetitions"
    ]
    for label, group, num, den, goal in TARGETS:
        values = ratios(rows, group, num, den)
        if not values:
            lines.append(f"  {label:74} n/a")
            continue
        median, span = spread(values)
        verdict = "met" if statistics.median(values) >= goal else "MISSED"
        lines.append(f"  {label:74} {median:>5} ({span})  goal >= {goal:g}  {verdict}")
    lines.append("Comparisons (no goal)")
    for group, num, den in COMPARISONS:
        den = den.format(cores=cores)
        values = ratios(rows, group, num, den)
        median, span = spread(values) if values else ("n/a", "")
        lines.append(
            f"  {TITLES[group].split(' (')[0] + ': ' + num + ' / ' + den:74} {median:>5} ({span})"
        )
    return "\n".join(lines)


def markdown_targets(rows: List[Row], plan: Plan, load: Tuple[float, float]) -> str:
    """The targets as the README's Markdown table."""
    marker = find(rows, *MARKER)
    speed = spread(marker.rates, "{:,.0f}") if marker else ("n/a", "n/a")
    lines = [
        f"\nREADME table ({time.strftime('%Y-%m-%d', time.gmtime())}, {plan.repeats} interleaved "
        f"repetitions, load average {load[0]:.2f} before and {load[1]:.2f} after; in-process Pong "
        f"{speed[0]} steps/s, range {speed[1]}):",
        "",
        f"| measure | median | range over {plan.repeats} repetitions | goal |",
        "| --- | --- | --- | --- |",
    ]
    for label, group, num, den, goal in TARGETS:
        values = ratios(rows, group, num, den)
        median, span = spread(values) if values else ("n/a", "n/a")
        lines.append(f"| {label} | {median} | {span} | ≥ {goal:g} |")
    return "\n".join(lines)


def plot(rows: List[Row], path: Path, cores: int, load: Tuple[float, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = [r for r in rows if r.group == "scale"]
    ks = list(range(0, cores + 1))
    found = [find(scale, "scale", f"make_vec num_workers={k}") for k in ks]
    ys = [row.median if row else 0.0 for row in found]
    low = [y - min(row.rates) if row else 0.0 for y, row in zip(ys, found)]
    high = [max(row.rates) - y if row else 0.0 for y, row in zip(ys, found)]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.errorbar(ks, ys, yerr=[low, high], fmt="o-", capsize=3, label="make_vec (num_workers=k)")
    styles = {
        "SyncVectorEnv": (":", "gray"),
        "AsyncVectorEnv": ("--", "tab:orange"),
        "EnvPool Pong-v5 (own preprocessing)": ("-.", "tab:green"),
        f"ceiling: {cores} processes, no communication": ("-", "tab:red"),
    }
    for name, (style, color) in styles.items():
        y = value(scale, "scale", name)
        if y:
            ax.axhline(y, linestyle=style, color=color, label=name)
    ax.set_xticks(ks)
    ax.set_xlabel("num_workers (0, 1: the server thread steps all; k: it and k - 1 workers)")
    ax.set_ylabel("env-steps/s")
    ax.set_ylim(bottom=0)
    ax.set_title(
        f"ALE/Pong-v5 x16 on {cores} cores, median and range of interleaved repetitions\n"
        f"(1-min load average {load[0]:.1f} before, {load[1]:.1f} after)",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repetitions")
    parser.add_argument("--repeats", type=int, help="interleaved repetitions (default 7)")
    parser.add_argument("--plot", type=Path, help="write the scaling plot (PNG) here")
    parser.add_argument("--only", choices=["targets", "scaling"], help="one table only")
    parser.add_argument("--groups", help="only these tables of the targets (e.g. pong1,sleep)")
    parser.add_argument("--envpool-python", type=Path, default=DEFAULT_ENVPOOL_PYTHON)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.socket)
        return
    from portal_env.portal.vector.workers import available_cores

    plan, cores = Plan.for_mode(args.quick, args.repeats), available_cores()
    load_before = os.getloadavg()[0]
    print(
        f"vector scaling ({'quick' if args.quick else 'full'}: {plan.repeats} interleaved "
        f"repetitions of ~{plan.repeat_s:g}s, median and range; Python {sys.version.split()[0]}, "
        f"{cores} cores; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"load average before: {load_before:.2f})"
    )
    if args.only != "scaling":
        targets = target_rows(cores)
        if args.groups:
            targets = [row for row in targets if row.group in args.groups.split(",")]
        run_rows(targets, plan)
        print(format_rows(targets))
        print("\n" + format_marker(targets))
        print(format_targets(targets, cores, plan))
        print(markdown_targets(targets, plan, (load_before, os.getloadavg()[0])))
    if args.only != "targets":
        scale = scaling_rows(cores, args.envpool_python)
        run_rows(scale, plan)
        print(format_rows(scale))
        if args.plot:
            plot(scale, args.plot, cores, (load_before, os.getloadavg()[0]))
            print(f"\nplot written to {args.plot}")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
