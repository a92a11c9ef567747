"""Step throughput of each built-in env: in-process vs through a portal (1 env, -b venv).

Usage: python benchmarks/builtin_throughput.py [--steps 3000] [--repeats 3] [--only ale,mujoco]

For each built-in that runs here, the venv runtime is built (or taken from the
cache), then the same seeded random actions are stepped:
- in-process: this script's --in-process mode, run by the runtime's own Python
  (the same timing loop as the portal side). It loads the env's env_main.py (its
  registrations and settings, not its server) and makes the env with the entry
  point's factory, so the agent's environment needs none of the env's packages;
- portal: the server started by a Supervisor in this process, an AgentSidePortal
  connected to it on the same host (a Unix socket).
Resets at episode ends are included in both. The table shows the best of the
repeats, in microseconds per step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, List

CASES = {
    "ale": ("ALE/Pong-v5", {}),
    "mujoco": ("HalfCheetah-v5", {}),
    "vizdoom": ("VizdoomBasic-v1", {}),
    "retro": ("Airstriker-Genesis-v0", {}),
    "flappy-bird": ("FlappyBird-v0", {}),
}


@dataclass
class Row:
    name: str
    env_id: str
    in_process: float = float("nan")
    portal: float = float("nan")


def runtime_of(name: str) -> Any:
    """The built venv runtime of built-in name (built now if it is not cached)."""
    from portal_env import runtimes
    from portal_env.runtimes import catalog

    source = catalog.find(name)
    return runtimes.get("venv").ensure(source, force=False, reporter=runtimes.LogReporter())


def in_process(runtime: Any, env_id: str, kwargs: Dict, steps: int, repeats: int) -> float:
    """Microseconds per step with the env in the runtime's own Python process."""
    command = [str(runtime.python), __file__, "--in-process", str(runtime.source.main), env_id]
    command += [json.dumps(kwargs), str(steps), str(repeats)]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=runtime.source.work_dir,  # as the server runs: env libraries write files there
        env=runtime.environment({}),
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"in-process run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["us_per_step"]


def through_portal(runtime: Any, env_id: str, kwargs: Dict, steps: int, repeats: int) -> float:
    """Microseconds per step through an AgentSidePortal to a locally served env."""
    from portal_env import AgentSidePortal
    from portal_env.serving import supervisor

    name = f"bench-{runtime.source.name}"
    with supervisor.Supervisor(name, runtime, runtime.source.env_dir) as sup:
        record = sup.start()
        env = AgentSidePortal(name, [env_id], kwargs, address=record.address, token=record.token)
        with env:
            return _time_steps(env, steps, repeats) * 1e6


def _time_steps(env: Any, steps: int, repeats: int) -> float:
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(steps)]
    best = float("inf")
    for _ in range(repeats):
        env.reset(seed=0)
        began = time.perf_counter()
        for action in actions:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
        best = min(best, (time.perf_counter() - began) / len(actions))
    return best


def in_process_main(main_path: str, env_id: str, kwargs: str, steps: str, repeats: str) -> None:
    """The --in-process mode, run by the runtime's own Python: time the env, print JSON."""
    import runpy

    import gymnasium

    namespace = runpy.run_path(main_path, run_name="portal_env_benchmark")  # registers, no server
    factory = namespace.get("make", gymnasium.make)  # retro's entry point defines make()
    env = factory(env_id, **json.loads(kwargs))
    us_per_step = _time_steps(env, int(steps), int(repeats)) * 1e6
    env.close()
    print(json.dumps({"us_per_step": us_per_step}))


def measure(name: str, steps: int, repeats: int) -> Row:
    env_id, kwargs = CASES[name]
    row = Row(name, env_id)
    runtime = runtime_of(name)
    row.in_process = in_process(runtime, env_id, kwargs, steps, repeats)
    row.portal = through_portal(runtime, env_id, kwargs, steps, repeats)
    return row


def table(rows: List[Row]) -> List[str]:
    header = ("env", "env id", "in-process µs/step", "portal µs/step", "overhead µs", "ratio")
    lines = [header, tuple("---" for _ in header)]
    for r in rows:
        overhead = r.portal - r.in_process
        lines.append(
            (
                r.name,
                r.env_id,
                f"{r.in_process:,.0f}",
                f"{r.portal:,.0f}",
                f"{overhead:+,.0f}",
                f"{r.portal / r.in_process:.2f}x",
            )
        )
    return ["| " + " | ".join(cells) + " |" for cells in lines]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="steps per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; the best counts")
    parser.add_argument("--only", default=",".join(CASES), help="comma-separated env names")
    return parser.parse_args()


def main() -> None:
    args = parse()
    rows = []
    with tempfile.TemporaryDirectory(prefix="portal-env-bench-") as state:
        os.environ.setdefault("PORTAL_ENV_STATE_DIR", state)
        for name in args.only.split(","):
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            rows.append(measure(name, args.steps, args.repeats))
    print(f"{os.cpu_count()} CPUs, {args.steps} steps x {args.repeats} repeats (best), 1 env")
    for line in table(rows):
        print(line)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--in-process"]:
        in_process_main(*sys.argv[2:])
    else:
        main()
