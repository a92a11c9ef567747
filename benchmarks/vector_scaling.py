"""Vector envs across cores: make_vec with worker processes against gymnasium and EnvPool.

Usage: python benchmarks/vector_scaling.py [--quick] [--plot benchmarks/vector_scaling.png]
       [--only targets|scaling] [--envpool-python PATH]

Two tables, each from one run of this script:

1. Targets (issue 13): Pong-v5 x8 and CartPole-v1 x8 as ``SyncVectorEnv``,
   ``AsyncVectorEnv`` and ``make_vec`` (default workers, and ``num_workers=0``),
   beside the ceiling: one process per core, each stepping its share of the envs as a
   ``SyncVectorEnv``, all at once and with no communication (what the cores can give);
   an agent that spends 1 ms of busy CPU per batch stepping Pong x8 synchronously
   versus with ``batch_size=4`` (``send``/``recv``), and the same with the agent
   sleeping 1 ms instead (inference on an accelerator); single envs (CartPole, Pong,
   HalfCheetah-v5 when mujoco imports) in-process versus over a Unix socket.
2. Scaling: Pong-v5 x16 as ``make_vec`` with ``num_workers`` = 0..cores, beside
   ``SyncVectorEnv``, ``AsyncVectorEnv``, the ceiling, and EnvPool's own Pong-v5 x16 (its own
   preprocessing; run by a Python that has envpool, default
   ``~/.cache/portal-env-bench/vec-envpool/bin/python``, else n/a).

How a row is timed: every row is set up first and kept open; then repetitions
run interleaved (row A, row B, ..., row A, row B, ...), so that a change in the
machine's load hits every row alike, and the best repetition of each row is
reported. A repetition is a fixed number of calls, about ``repeat_s`` worth,
fixed by a warm-up. Beside env-steps/s each row reports the CPU seconds that
the agent, the server and every worker (all descendants of this script) used
per 1,000 env-steps, from /proc, over the same repetition. Memory is the summed
PSS of the row's env-side processes (server and workers, AsyncVectorEnv's
workers, EnvPool's process) after its repetitions: the memory the row's envs
cost, shared pages split fairly.

"always spin" rows use the spin policy from before it checked for a spare core
(both sides poll up to PORTAL_ENV_SPIN_US whenever frames usually come that fast):
the CPU column shows what the check saves on a busy machine.

Servers are this script with ``--serve`` on a Unix socket, one per row, each in
its own process group and always stopped (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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
BUSY_S = 0.001  # the stand-in for an agent's inference per batch
BUSY_SYNC = "make_vec step + 1 ms"
DEFAULT_ENVPOOL_PYTHON = Path.home() / ".cache/portal-env-bench/vec-envpool/bin/python"
TICKS = os.sysconf("SC_CLK_TCK")

Step = Callable[[], int]  # one call; returns the env-steps it made


@dataclass(frozen=True)
class Plan:
    warmup_s: float
    repeat_s: float
    repeats: int

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        return cls(0.3, 0.4, 3) if quick else cls(1.0, 1.5, 5)


@dataclass
class Row:
    group: str
    name: str
    make: Callable[[ExitStack], Tuple[Step, List[int]]]  # (step, env-side pids)
    step: Optional[Step] = None
    pids: List[int] = field(default_factory=list)
    calls: int = 0
    best: Optional[Tuple[float, float]] = None  # (env-steps/s, CPU s per 1,000 env-steps)
    memory_mb: Optional[float] = None
    reason: str = ""
    external: Optional[Callable[[Plan], Tuple[float, float, float]]] = None  # EnvPool


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
def server(
    extra_env: Optional[Dict[str, str]] = None, always_spin: bool = False
) -> Iterator[Tuple[str, int]]:
    """A fresh server on a Unix socket, in its own process group; (address, pid)."""
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready"
        env = dict(os.environ, PORTAL_ENV_READY_FILE=str(ready), **(extra_env or {}))
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        log = open(Path(tmp) / "log", "w+")
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--serve", "--socket", str(Path(tmp) / "s")]
            + (["--always-spin"] if always_spin else []),
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


def serve(socket_path: str, always_spin: bool) -> None:
    """--serve: gymnasium.make with ALE registered, on socket_path."""
    import ale_py
    import gymnasium

    from portal_env import EnvSidePortal
    from portal_env.portal import spin
    from portal_env.portal.screenbuf import ale_screen_into

    if always_spin:  # the policy before spinning looked for a spare core
        spin.spare_core = lambda: True

    gymnasium.register_envs(ale_py)

    def make(*args: Any, **kwargs: Any) -> Any:  # as the built-in ale env serves them
        return ale_screen_into(gymnasium.make(*args, **kwargs))

    EnvSidePortal(env_factory=make, token=TOKEN, socket_path=socket_path).run()


# --- row makers --------------------------------------------------------------------------


def _busy(seconds: float) -> None:
    """The agent's own work per batch: a busy loop (CPU inference); negative: a sleep
    (inference on an accelerator, which leaves the CPU to the envs)."""
    if seconds < 0:
        time.sleep(-seconds)
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _vector_step(vec: Any, busy: float = 0.0) -> Step:
    space = vec.action_space
    space.seed(SEED)
    vec.reset(seed=SEED)
    n = vec.num_envs

    def step() -> int:
        vec.step(space.sample())
        if busy:
            _busy(busy)
        return n

    return step


def local_vector(env_id: str, n: int, asynchronous: bool) -> Callable:
    def make(stack: ExitStack) -> Tuple[Step, List[int]]:
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
        return _vector_step(vec), pids

    return make


def portal_vector(env_id: str, n: int, busy: float = 0.0, **options: Any) -> Callable:
    def make(stack: ExitStack) -> Tuple[Step, List[int]]:
        from portal_env import make_vec

        address, pid = stack.enter_context(server())
        vec = make_vec("bench", n, [env_id], address=address, token=TOKEN, **options)
        stack.callback(vec.close)
        if options.get("batch_size", n) < n:
            return _async_step(vec, busy), descendants(pid)
        return _vector_step(vec, busy), descendants(pid)

    return make


def _async_step(vec: Any, busy: float) -> Step:
    """EnvPool's loop: recv a batch, think, send its actions back."""
    space = vec.single_action_space
    space.seed(SEED)
    vec.async_reset(seed=SEED)

    def step() -> int:
        _, _, _, _, info = vec.recv()
        ids = info["env_id"]
        actions = [space.sample() for _ in ids]
        _busy(busy)
        vec.send(actions, ids)
        return len(ids)

    return step


def single(env_id: str, remote: bool, always_spin: bool = False) -> Callable:
    def make(stack: ExitStack) -> Tuple[Step, List[int]]:
        import ale_py
        import gymnasium

        gymnasium.register_envs(ale_py)
        if remote:
            from portal_env import AgentSidePortal

            address, pid = stack.enter_context(server(always_spin=always_spin))
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

        if not always_spin:
            return step, pids
        from portal_env.portal import spin

        def spinning_step() -> int:
            adaptive, spin.spare_core = spin.spare_core, lambda: True
            try:
                return step()
            finally:
                spin.spare_core = adaptive

        return spinning_step, pids

    return make


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
    step, _ = local_vector(env_id, n, False)(ExitStack())
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
    if row.external is not None:
        return
    try:
        row.step, row.pids = row.make(stack)
        steps, start = 0, time.perf_counter()
        calls = 0
        while time.perf_counter() - start < plan.warmup_s:
            steps += row.step()
            calls += 1
        row.calls = max(10, round(calls / (time.perf_counter() - start) * plan.repeat_s))
    except Exception as exc:  # reported in the table: a row that cannot run is n/a
        row.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}"
        row.step = None


def time_row(row: Row, plan: Plan) -> None:
    if row.external is not None:
        try:
            rate, cpu, memory = row.external(plan)
        except (subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
            row.reason = f"{type(exc).__name__}: {str(exc)[:200]}"
            row.external = None
            return
        row.memory_mb = max(row.memory_mb or 0.0, memory)
        if row.best is None or rate > row.best[0]:
            row.best = (rate, cpu)
        return
    if row.step is None:
        return
    everyone = descendants(os.getpid())
    cpu0, start, steps = cpu_seconds(everyone), time.perf_counter(), 0
    for _ in range(row.calls):
        steps += row.step()
    wall = time.perf_counter() - start
    used = cpu_seconds(everyone) - cpu0
    rate = steps / wall
    if row.best is None or rate > row.best[0]:
        row.best = (rate, used / steps * 1000)
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
    row = Row(group, f"ceiling: {cores} processes, no communication", lambda stack: (None, []))
    row.external = parallel_ceiling(env_id, n, cores)
    return row


def target_rows(cores: int) -> List[Row]:
    rows = [
        ceiling_row("pong8", PONG, 8, cores),
        Row("pong8", "SyncVectorEnv", local_vector(PONG, 8, False)),
        Row("pong8", "AsyncVectorEnv", local_vector(PONG, 8, True)),
        Row("pong8", "make_vec", portal_vector(PONG, 8)),
        Row("pong8", "make_vec num_workers=0", portal_vector(PONG, 8, num_workers=0)),
        Row("busy", BUSY_SYNC, portal_vector(PONG, 8, busy=BUSY_S)),
        Row(
            "busy",
            "make_vec batch_size=4 + 1 ms",
            portal_vector(PONG, 8, busy=BUSY_S, batch_size=4),
        ),
        Row("sleep", "make_vec step + 1 ms", portal_vector(PONG, 8, busy=-BUSY_S)),
        Row(
            "sleep",
            "make_vec batch_size=4 + 1 ms",
            portal_vector(PONG, 8, busy=-BUSY_S, batch_size=4),
        ),
        Row("cp8", "SyncVectorEnv", local_vector(CARTPOLE, 8, False)),
        Row("cp8", "AsyncVectorEnv", local_vector(CARTPOLE, 8, True)),
        Row("cp8", "make_vec", portal_vector(CARTPOLE, 8)),
        Row("cp8", "make_vec num_workers=0", portal_vector(CARTPOLE, 8, num_workers=0)),
    ]
    for env_id, group in ((CARTPOLE, "cp1"), (PONG, "pong1"), (CHEETAH, "cheetah1")):
        rows.append(Row(group, "in-process", single(env_id, False)))
        rows.append(Row(group, "portal Unix", single(env_id, True)))
        rows.append(Row(group, "portal Unix, always spin", single(env_id, True, True)))
    return rows


TARGETS = [  # (group, numerator, denominator, at least)
    ("pong8", "make_vec", "SyncVectorEnv", 1.5),
    ("pong8", "make_vec", "AsyncVectorEnv", 1.5),
    ("busy", "make_vec batch_size=4 + 1 ms", BUSY_SYNC, 1.3),
    ("cp8", "make_vec", "AsyncVectorEnv", 4.0),
    ("cp8", "make_vec", "SyncVectorEnv", 0.7),
    ("pong1", "portal Unix", "in-process", 0.90),
    ("cheetah1", "portal Unix", "in-process", 0.70),
    ("cp1", "portal Unix", "in-process", 0.25),
]

COMPARISONS = [  # informational ratios, no target
    ("pong8", "make_vec", "ceiling: {cores} processes, no communication"),
    ("sleep", "make_vec batch_size=4 + 1 ms", "make_vec step + 1 ms"),
    ("pong8", "make_vec num_workers=0", "SyncVectorEnv"),
    ("cp8", "make_vec num_workers=0", "SyncVectorEnv"),
    ("cp8", "make_vec num_workers=0", "AsyncVectorEnv"),
]

TITLES = {
    "pong8": "ALE/Pong-v5 x8",
    "busy": "ALE/Pong-v5 x8, agent busy 1 ms per batch",
    "sleep": "ALE/Pong-v5 x8, agent sleeps 1 ms per batch (inference off the CPU)",
    "cp8": "CartPole-v1 x8",
    "cp1": "CartPole-v1, 1 env",
    "pong1": "ALE/Pong-v5, 1 env",
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
    envpool = Row("scale", "EnvPool Pong-v5 (own preprocessing)", lambda stack: (None, []))
    if envpool_python is not None and envpool_python.exists():
        envpool.external = envpool_row(16, envpool_python)
    else:
        envpool.reason = f"no Python with envpool at {envpool_python} (see --envpool-python)"
    rows.append(envpool)
    return rows


def value(rows: List[Row], group: str, name: str) -> Optional[float]:
    for row in rows:
        if row.group == group and row.name == name and row.best:
            return row.best[0]
    return None


def format_rows(rows: List[Row]) -> str:
    lines, group = [], None
    for row in rows:
        if row.group != group:
            group = row.group
            lines.append(f"\n{TITLES[group]}")
            lines.append(
                f"  {'variant':38} {'env-steps/s':>12} {'CPU s/1k steps':>15} {'PSS MB':>8}"
            )
        if row.best is None:
            lines.append(f"  {row.name:38} {'n/a':>12}   {row.reason}")
            continue
        memory = f"{row.memory_mb:,.0f}" if row.memory_mb else "-"
        lines.append(f"  {row.name:38} {row.best[0]:>12,.0f} {row.best[1]:>15.3f} {memory:>8}")
    return "\n".join(lines)


def format_targets(rows: List[Row], cores: int) -> str:
    lines = ["\nTargets (best of interleaved repetitions, ratios from this run)"]
    for group, num, den, bound in TARGETS:
        a, b = value(rows, group, num), value(rows, group, den)
        label = f"{TITLES[group]}: {num} / {den}"
        if a is None or b is None:
            lines.append(f"  {label:70} n/a")
            continue
        verdict = "PASS" if a / b >= bound else "MISS"
        lines.append(f"  {label:70} {a / b:5.2f}  (target >= {bound:g}) {verdict}")
    lines.append(busy_bound(rows, cores))
    lines.append("Comparisons (no target)")
    for group, num, den in COMPARISONS:
        den = den.format(cores=cores)
        a, b = value(rows, group, num), value(rows, group, den)
        ratio = f"{a / b:5.2f}" if a and b else "  n/a"
        lines.append(f"  {TITLES[group] + ': ' + num + ' / ' + den:70} {ratio}")
    return "\n".join(lines)


def busy_bound(rows: List[Row], cores: int) -> str:
    """The most batch_size=4 can give over the synchronous loop on these cores, whatever
    the scheduling: every core busy all the time with the agent's 1 ms per batch of 4 and the
    envs' own steps (CPU per step from SyncVectorEnv), and never faster than the agent's
    one batch per 1 ms."""
    sync, stepped = value(rows, "pong8", "SyncVectorEnv"), value(rows, "busy", BUSY_SYNC)
    if not (sync and stepped):
        return "  bound for the busy-agent target: n/a"
    batch = 4
    best = min(cores / (BUSY_S / batch + 1 / sync), batch / BUSY_S)
    return (
        f"  bound for the busy-agent target on {cores} cores, with no overhead at all: "
        f"{best:,.0f} env-steps/s, {best / stepped:.2f}x the synchronous loop"
    )


def plot(rows: List[Row], path: Path, cores: int, load: Tuple[float, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = [r for r in rows if r.group == "scale"]
    ks = list(range(0, cores + 1))
    ys = [value(scale, "scale", f"make_vec num_workers={k}") for k in ks]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(ks, [y or 0 for y in ys], "o-", label="make_vec (num_workers=k)")
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
        f"ALE/Pong-v5 x16 on {cores} cores, best of interleaved repetitions\n"
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
    parser.add_argument("--plot", type=Path, help="write the scaling plot (PNG) here")
    parser.add_argument("--only", choices=["targets", "scaling"], help="one table only")
    parser.add_argument("--envpool-python", type=Path, default=DEFAULT_ENVPOOL_PYTHON)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    parser.add_argument("--always-spin", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.socket, args.always_spin)
        return
    from portal_env.portal.vector.workers import available_cores

    plan, cores = Plan.for_mode(args.quick), available_cores()
    print(
        f"vector scaling ({'quick' if args.quick else 'full'}: best of {plan.repeats} interleaved "
        f"repetitions of ~{plan.repeat_s:g}s; Python {sys.version.split()[0]}, {cores} cores; "
        f"load average before: {os.getloadavg()[0]:.2f})"
    )
    rows: List[Row] = []
    load_before = os.getloadavg()[0]
    if args.only != "scaling":
        targets = target_rows(cores)
        run_rows(targets, plan)
        rows += targets
        print(format_rows(targets))
        print(format_targets(targets, cores))
    if args.only != "targets":
        scale = scaling_rows(cores, args.envpool_python)
        run_rows(scale, plan)
        rows += scale
        print(format_rows(scale))
        if args.plot:
            plot(scale, args.plot, cores, (load_before, os.getloadavg()[0]))
            print(f"\nplot written to {args.plot}")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
