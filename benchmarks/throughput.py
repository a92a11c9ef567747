"""Step throughput of portal-env against in-process gymnasium and upstream portal-env 0.9.0.

Usage: python benchmarks/throughput.py [--quick] [--plot benchmarks/throughput.png]
Needs this project installed with its bench extra: pip install -e '.[bench]'.

What is measured, one row after another (never concurrently):

1. CartPole-v1, 1 env: in-process ``gymnasium.make``; portal-env over TCP loopback;
   portal-env over a Unix socket; gymnasium ``AsyncVectorEnv`` with 1 env; upstream
   portal-env 0.9.0.
2. ALE/Pong-v5, 1 env: in-process; portal-env TCP; portal-env Unix; upstream 0.9.0.
3. CartPole-v1, 8 envs: ``SyncVectorEnv(8)``; ``AsyncVectorEnv(8)``; portal-env ``make_vec``.
4. Import time of ``portal_env`` and of ``gymnasium``: the wall time of
   ``python -c 'import X'`` minus that of ``python -c pass``, each in a fresh subprocess,
   median of several interleaved runs.

How a step row is timed: the env is reset with a fixed seed and its action space seeded;
the loop samples an action, steps, and resets when an episode ends (vector envs reset
themselves). A time-boxed warm-up estimates the rate, which fixes the number of steps per
repeat (about ``repeat_s`` seconds' worth); that many steps are timed ``repeats`` times
and the median rate is reported, with the min-max spread. Vector rows count env-steps
(calls x num_envs).

Every server is a fresh subprocess per row, in its own process group, and is always
stopped (SIGTERM to the group, then SIGKILL). portal-env servers are this script run with
``--serve``. Upstream 0.9.0 runs in its own venv (created once under
``~/.cache/portal-env-bench/upstream-0.9.0``): its server is this script with
``--upstream-serve`` and its agent, which times its own loop and prints JSON, is this
script with ``--upstream-agent``, both run by the venv's python. Upstream's server is
``EnvSidePortal(gymnasium.make, port=P).start()`` (a ``portal.BatchServer``: a batcher
process on P in front of a server on a random port); its agent ``AgentSidePortal(name,
env_args=[env_id])`` connects to localhost at ``config.env_ports[name]`` (else 7000), so the
agent maps a name of its own to P. Upstream rows that cannot run are n/a with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

SCRIPT = Path(__file__).resolve()
TOKEN = "benchmark-token"
SEED = 0
CARTPOLE = "CartPole-v1"
PONG = "ALE/Pong-v5"
UPSTREAM_VERSION = "0.9.0"
UPSTREAM_ENV_NAME = "bench"  # an env name we map to the upstream server's port
VEC_ENVS = 8
SERVER_START_TIMEOUT_S = 60.0
AGENT_TIMEOUT_S = 600.0

Stepper = Callable[[], None]


@dataclass(frozen=True)
class Plan:
    """How long to warm up and to time each repeat, and how many repeats."""

    warmup_s: float
    repeat_s: float
    repeats: int
    import_runs: int

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        if quick:
            return cls(warmup_s=0.2, repeat_s=0.3, repeats=3, import_runs=3)
        return cls(warmup_s=1.0, repeat_s=2.0, repeats=5, import_runs=9)


@dataclass
class Row:
    """One measured configuration: its repeat results, or why it could not run."""

    group: str
    name: str
    unit: str
    runs: List[float] = field(default_factory=list)
    steps: int = 0  # env-steps timed per repeat (0 for import rows)
    reason: str = ""  # set when the row could not be measured

    @property
    def value(self) -> Optional[float]:
        return statistics.median(self.runs) if self.runs else None


@dataclass(frozen=True)
class Target:
    """A ratio the project aims for: value(numerator) / value(denominator) vs bound.

    Rows are named "group/variant"; at_least means ratio >= bound, else ratio <= bound.
    """

    numerator: str
    denominator: str
    bound: float
    at_least: bool = True


TARGETS = [
    Target("cp1/portal TCP", "cp1/in-process", 0.25),
    Target("cp1/portal Unix", "cp1/in-process", 0.25),
    Target("pong/portal TCP", "pong/in-process", 0.90),
    Target("pong/portal Unix", "pong/in-process", 0.90),
    Target("cp8/make_vec TCP", "cp8/AsyncVectorEnv", 2.0),
    Target("cp8/make_vec Unix", "cp8/AsyncVectorEnv", 2.0),
    Target("cp8/make_vec TCP", "cp8/SyncVectorEnv", 0.7),
    Target("cp8/make_vec Unix", "cp8/SyncVectorEnv", 0.7),
    Target("import/portal_env", "import/gymnasium", 1.5, at_least=False),
]

COMPARISONS = [  # informational ratios, no target: (numerator, denominator)
    ("cp1/portal TCP", "cp1/AsyncVectorEnv"),
    ("cp1/portal TCP", f"cp1/upstream {UPSTREAM_VERSION}"),
    ("pong/portal TCP", f"pong/upstream {UPSTREAM_VERSION}"),
]

GROUP_LABELS = {
    "cp1": "CartPole 1 env",
    "pong": "Pong 1 env",
    "cp8": "CartPole 8 envs",
    "import": "import",
}
GROUP_TITLES = {
    "cp1": "CartPole-v1, 1 env (steps/s)",
    "pong": "ALE/Pong-v5, 1 env (steps/s)",
    "cp8": "CartPole-v1, 8 envs (env-steps/s)",
    "import": "Import time (ms, lower is better)",
}


# --- timing -------------------------------------------------------------------------------


def time_stepper(step: Stepper, env_steps_per_call: int, plan: Plan) -> Tuple[List[float], int]:
    """Warm up, then time a fixed number of calls `plan.repeats` times; (rates, env-steps)."""
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < plan.warmup_s:
        step()
        calls += 1
    calls_per_repeat = max(20, round(calls / (time.perf_counter() - start) * plan.repeat_s))
    rates = []
    for _ in range(plan.repeats):
        start = time.perf_counter()
        for _ in range(calls_per_repeat):
            step()
        rates.append(calls_per_repeat * env_steps_per_call / (time.perf_counter() - start))
    return rates, calls_per_repeat * env_steps_per_call


def single_env_stepper(env: Any) -> Stepper:
    """Seeded random actions on a gymnasium.Env, resetting when an episode ends."""
    space = env.action_space  # read once: upstream 0.9.0 fetches it remotely on every access
    space.seed(SEED)
    env.reset(seed=SEED)

    def step() -> None:
        _, _, terminated, truncated, _ = env.step(space.sample())
        if terminated or truncated:
            env.reset()

    return step


def vector_env_stepper(vec: Any) -> Stepper:
    """Seeded random batched actions on a gymnasium VectorEnv (which autoresets)."""
    space = vec.action_space
    space.seed(SEED)
    vec.reset(seed=SEED)

    def step() -> None:
        vec.step(space.sample())

    return step


def measure_env(row: Row, env: Any, plan: Plan) -> None:
    """Time env (closed afterwards) into row; a VectorEnv call counts num_envs env-steps."""
    import gymnasium

    try:
        if isinstance(env, gymnasium.vector.VectorEnv):
            row.runs, row.steps = time_stepper(vector_env_stepper(env), env.num_envs, plan)
        else:
            row.runs, row.steps = time_stepper(single_env_stepper(env), 1, plan)
    finally:
        env.close()


# --- subprocesses ---------------------------------------------------------------------------


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group proc leads, wait, SIGKILL whatever is left."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _signal_group(proc.pid, 0):
        time.sleep(0.05)  # children of the leader (upstream's batcher) are exiting too
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


@contextmanager
def process_group(
    cmd: Sequence[str], log: IO[str], env: Optional[Dict[str, str]] = None
) -> Iterator[subprocess.Popen]:
    """Run cmd in a new process group, logging to log; always stopped on exit."""
    proc = subprocess.Popen(
        list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        yield proc
    finally:
        stop_group(proc)


def _tail(log: IO[str], lines: int = 15) -> str:
    log.flush()
    log.seek(0)
    return "".join(log.readlines()[-lines:]).strip()


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, log: IO[str], what: str) -> None:
    """Poll ready() until true; fail if proc exits or SERVER_START_TIMEOUT_S passes."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{what} not ready after {SERVER_START_TIMEOUT_S:.0f}s:\n{_tail(log)}"
            )
        time.sleep(0.05)


@contextmanager
def portal_server(unix: bool) -> Iterator[str]:
    """A fresh portal-env server subprocess (TCP on a free port, or a Unix socket); its address."""
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile("w+") as log:
        ready_file = Path(tmp) / "address"
        env = dict(os.environ, PORTAL_ENV_READY_FILE=str(ready_file))
        cmd = [sys.executable, str(SCRIPT), "--serve"]
        if unix:
            cmd += ["--socket", str(Path(tmp) / "portal.sock")]
        with process_group(cmd, log, env) as proc:
            wait_until(ready_file.exists, proc, log, "the portal-env server")
            yield ready_file.read_text().strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accepts_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


# --- rows -------------------------------------------------------------------------------------


def make_env(env_id: str) -> Any:
    import gymnasium

    return gymnasium.make(env_id)


def measure_portal(row: Row, env_id: str, unix: bool, plan: Plan) -> None:
    from portal_env import AgentSidePortal

    with portal_server(unix) as address:
        env = AgentSidePortal("custom", env_args=[env_id], address=address, token=TOKEN)
        measure_env(row, env, plan)


def measure_make_vec(row: Row, num_envs: int, unix: bool, plan: Plan) -> None:
    from portal_env import make_vec

    with portal_server(unix) as address:
        vec = make_vec("custom", num_envs, env_args=[CARTPOLE], address=address, token=TOKEN)
        measure_env(row, vec, plan)


def measure_gym_vector(row: Row, kind: str, num_envs: int, plan: Plan) -> None:
    import gymnasium

    vec_class = getattr(gymnasium.vector, kind)
    measure_env(row, vec_class([lambda: make_env(CARTPOLE)] * num_envs), plan)


def upstream_venv() -> Path:
    """The python of a cached venv holding upstream portal-env (created on first use)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    venv = cache / "portal-env-bench" / f"upstream-{UPSTREAM_VERSION}"
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if marker.exists():
        return python
    print(f"creating the upstream {UPSTREAM_VERSION} venv in {venv} (once)...", file=sys.stderr)
    packages = [f"portal-env=={UPSTREAM_VERSION}", "gymnasium", "ale-py"]
    for cmd in (
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", *packages],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr.strip()[-1500:]}")
    marker.touch()
    return python


def measure_upstream(row: Row, env_id: str, plan: Plan, quick: bool) -> None:
    """Upstream's server and agent, both in the upstream venv; the agent reports JSON."""
    python = str(upstream_venv())
    port = free_port()
    # without PYTHONPATH: a checkout of this project on it would shadow upstream's package
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    with tempfile.TemporaryFile("w+") as log:
        server = [python, str(SCRIPT), "--upstream-serve", "--port", str(port)]
        with process_group(server, log, env) as proc:
            wait_until(lambda: accepts_connections(port), proc, log, "the upstream server")
            agent = [python, str(SCRIPT), "--upstream-agent", env_id, "--port", str(port)]
            result = run_agent(agent + (["--quick"] if quick else []), env)
    row.runs, row.steps = result["runs"], result["steps"]


def run_agent(cmd: List[str], env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Run an agent subprocess (own process group) and parse the JSON line it prints last."""
    with tempfile.TemporaryFile("w+") as log:
        with process_group(cmd, log, env) as proc:
            try:
                proc.wait(timeout=AGENT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"the upstream agent timed out:\n{_tail(log)}") from None
        log.seek(0)
        lines = [line for line in log.read().splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"the upstream agent failed ({proc.returncode}):\n{_tail(log)}")
        return json.loads(lines[-1])


def import_rows(plan: Plan) -> List[Row]:
    """Median wall time of `python -c 'import X'` minus that of `python -c pass`, in ms.

    Bytecode is cached in a private prefix (first round unrecorded), so both imports read
    .pyc files whatever PYTHONDONTWRITEBYTECODE says, without writing into the source tree.
    """
    statements = {
        "baseline": "pass",
        "gymnasium": "import gymnasium",
        "portal_env": "import portal_env",
    }
    times: Dict[str, List[float]] = {name: [] for name in statements}
    with tempfile.TemporaryDirectory() as pycache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = pycache
        for run in range(plan.import_runs + 1):
            for name, statement in statements.items():
                start = time.perf_counter()
                subprocess.run([sys.executable, "-c", statement], check=True, env=env)
                if run:
                    times[name].append((time.perf_counter() - start) * 1000)
    baseline = statistics.median(times.pop("baseline"))
    return [Row("import", name, "ms", [t - baseline for t in runs]) for name, runs in times.items()]


def measure_guarded(row: Row, fill: Callable[[Row], None]) -> Row:
    """fill(row); if it raises, row becomes n/a with the error as its reason."""
    print(f"measuring {row.group}/{row.name}...", file=sys.stderr, flush=True)
    try:
        fill(row)
    except Exception as exc:  # reported in the table as n/a
        row.runs, row.reason = [], f"{type(exc).__name__}: {exc}"
    return row


def measure_all(plan: Plan, quick: bool) -> List[Row]:
    """Every row, one after another."""
    import ale_py
    import gymnasium

    gymnasium.register_envs(ale_py)
    upstream = f"upstream {UPSTREAM_VERSION}"
    jobs: List[Tuple[Row, Callable[[Row], None]]] = [
        (Row("cp1", "in-process", "steps/s"), lambda r: measure_env(r, make_env(CARTPOLE), plan)),
        (Row("cp1", "portal TCP", "steps/s"), lambda r: measure_portal(r, CARTPOLE, False, plan)),
        (Row("cp1", "portal Unix", "steps/s"), lambda r: measure_portal(r, CARTPOLE, True, plan)),
        (
            Row("cp1", "AsyncVectorEnv", "steps/s"),
            lambda r: measure_gym_vector(r, "AsyncVectorEnv", 1, plan),
        ),
        (Row("cp1", upstream, "steps/s"), lambda r: measure_upstream(r, CARTPOLE, plan, quick)),
        (Row("pong", "in-process", "steps/s"), lambda r: measure_env(r, make_env(PONG), plan)),
        (Row("pong", "portal TCP", "steps/s"), lambda r: measure_portal(r, PONG, False, plan)),
        (Row("pong", "portal Unix", "steps/s"), lambda r: measure_portal(r, PONG, True, plan)),
        (Row("pong", upstream, "steps/s"), lambda r: measure_upstream(r, PONG, plan, quick)),
        (
            Row("cp8", "SyncVectorEnv", "env-steps/s"),
            lambda r: measure_gym_vector(r, "SyncVectorEnv", VEC_ENVS, plan),
        ),
        (
            Row("cp8", "AsyncVectorEnv", "env-steps/s"),
            lambda r: measure_gym_vector(r, "AsyncVectorEnv", VEC_ENVS, plan),
        ),
        (
            Row("cp8", "make_vec TCP", "env-steps/s"),
            lambda r: measure_make_vec(r, VEC_ENVS, False, plan),
        ),
        (
            Row("cp8", "make_vec Unix", "env-steps/s"),
            lambda r: measure_make_vec(r, VEC_ENVS, True, plan),
        ),
    ]
    rows = [measure_guarded(row, fill) for row, fill in jobs]
    print("measuring import times...", file=sys.stderr, flush=True)
    return rows + import_rows(plan)


# --- report -----------------------------------------------------------------------------------


def _lookup(rows: List[Row], key: str) -> Optional[float]:
    group, name = key.split("/", 1)
    return next((r.value for r in rows if r.group == group and r.name == name), None)


def _ratio(rows: List[Row], numerator: str, denominator: str) -> Optional[float]:
    top, bottom = _lookup(rows, numerator), _lookup(rows, denominator)
    return None if top is None or not bottom else top / bottom


def _format_value(value: float) -> str:
    return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"


def _summary(reason: str, width: int = 110) -> str:
    """The first and last lines of a multi-line error, shortened to width."""
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return text if len(text) <= width else text[: width - 3] + "..."


def format_table(rows: List[Row]) -> str:
    """The rows as an aligned plain-text table, a title line per group."""
    header = ("variant", "median", "unit", "min-max", "steps/repeat x repeats")
    lines = []
    widths = [18, 10, 13, 22, 22]
    for group, title in GROUP_TITLES.items():
        lines.append(f"\n{title}")
        lines.append("  " + "".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
        for row in (r for r in rows if r.group == group):
            if row.value is None:
                lines.append(f"  {row.name.ljust(widths[0])}n/a  ({_summary(row.reason)})")
                continue
            spread = f"{_format_value(min(row.runs))} - {_format_value(max(row.runs))}"
            size = f"{row.steps:,} x {len(row.runs)}" if row.steps else f"{len(row.runs)} runs"
            cells = (row.name, _format_value(row.value), row.unit, spread, size)
            lines.append("  " + "".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    return "\n".join(lines)


def _ratio_label(numerator: str, denominator: str) -> str:
    group, top = numerator.split("/", 1)
    return f"{GROUP_LABELS[group]}: {top} / {denominator.split('/', 1)[1]}"


def format_targets(rows: List[Row]) -> str:
    """One PASS/MISS line per target, then the informational comparisons."""
    lines = ["\nTargets"]
    for target in TARGETS:
        ratio = _ratio(rows, target.numerator, target.denominator)
        sign = ">=" if target.at_least else "<="
        if ratio is None:
            verdict, shown = "n/a", "n/a"
        else:
            ok = ratio >= target.bound if target.at_least else ratio <= target.bound
            verdict, shown = ("PASS" if ok else "MISS"), f"{ratio:.2f}"
        label = _ratio_label(target.numerator, target.denominator)
        goal = f"(target {sign} {target.bound:g})"
        lines.append(f"  {label:<52} {shown:>6}  {goal:<16} {verdict}")
    lines.append("\nComparisons")
    for numerator, denominator in COMPARISONS:
        ratio = _ratio(rows, numerator, denominator)
        shown = "n/a" if ratio is None else f"{ratio:.1f}x"
        lines.append(f"  {_ratio_label(numerator, denominator):<52} {shown:>6}")
    return "\n".join(lines)


def failure_details(rows: List[Row]) -> str:
    """The full reasons of rows that could not be measured (empty if none)."""
    failed = [r for r in rows if r.reason]
    return "\n".join(f"\n{r.group}/{r.name} n/a:\n{r.reason}" for r in failed)


def plot(rows: List[Row], path: Path) -> None:
    """A bar chart per group, written to path as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    for ax, (group, title) in zip(axes.flat, GROUP_TITLES.items()):
        group_rows = [r for r in rows if r.group == group]
        values = [r.value or 0.0 for r in group_rows]
        bars = ax.barh([r.name for r in group_rows], values, color="tab:blue")
        ax.bar_label(
            bars,
            [_format_value(r.value) if r.value else "n/a" for r in group_rows],
            padding=3,
            fontsize=9,
        )
        ax.invert_yaxis()
        ax.set_title(title)
        ax.set_xlim(0, max(values, default=1.0) * 1.25 or 1.0)
    fig.suptitle("portal-env throughput (median of repeats)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- subprocess modes -------------------------------------------------------------------------


def serve(socket_path: Optional[str]) -> None:
    """--serve: a portal-env server for gymnasium.make with ALE registered."""
    import ale_py
    import gymnasium

    from portal_env import EnvSidePortal

    gymnasium.register_envs(ale_py)
    EnvSidePortal(env_factory=gymnasium.make, port=0, token=TOKEN, socket_path=socket_path).run()


def upstream_serve(port: int) -> None:
    """--upstream-serve (in the upstream venv): upstream's EnvSidePortal on port."""
    import ale_py
    import gymnasium

    from portal_env import EnvSidePortal

    gymnasium.register_envs(ale_py)
    EnvSidePortal(env_factory=gymnasium.make, port=port).start()


def upstream_agent(env_id: str, port: int, plan: Plan) -> None:
    """--upstream-agent (in the upstream venv): time upstream's AgentSidePortal, print JSON."""
    from portal_env import AgentSidePortal
    from portal_env.config import config

    config.env_ports[UPSTREAM_ENV_NAME] = port  # upstream agents look up the port by env name
    env = AgentSidePortal(UPSTREAM_ENV_NAME, env_args=[env_id])
    runs, steps = time_stepper(single_env_stepper(env), 1, plan)
    env.close()
    print(json.dumps({"runs": runs, "steps": steps}), flush=True)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats")
    parser.add_argument("--plot", type=Path, help="write a PNG bar plot here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    parser.add_argument("--upstream-serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--upstream-agent", metavar="ENV_ID", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    plan = Plan.for_mode(args.quick)

    if args.serve:
        serve(args.socket)
    elif args.upstream_serve:
        upstream_serve(args.port)
    elif args.upstream_agent:
        upstream_agent(args.upstream_agent, args.port, plan)
    else:
        rows = measure_all(plan, args.quick)
        mode = "quick" if args.quick else "full"
        print(
            f"portal-env throughput ({mode}: {plan.repeats} repeats of ~{plan.repeat_s:g}s, "
            f"median; Python {sys.version.split()[0]}, {os.cpu_count()} cores)"
        )
        print(format_table(rows))
        print(format_targets(rows))
        details = failure_details(rows)
        if details:
            print(details, file=sys.stderr)
        if args.plot:
            plot(rows, args.plot)
            print(f"\nplot written to {args.plot}")


if __name__ == "__main__":
    main()
