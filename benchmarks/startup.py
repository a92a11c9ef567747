"""Time from `portal-env start -d` to ready, with the venv runtime cold (built) and warm (cached).

Usage: python benchmarks/startup.py [--repeats 5] [--env examples/cartpole_env]

Each run is a fresh `portal-env start -p ENV bench -b venv -d` subprocess timed until it
returns (it returns once the server answers a ping), then `portal-env stop bench`.
- cold: a new, empty portal-env cache dir, so the venv is created and installed, and the
  portal_env package copied, before the server starts. uv's own download/wheel cache stays
  warm (as on any machine that has built once): this measures portal-env's work, not PyPI.
- warm: the same cache dir again: nothing is built.
Runs alternate cold/warm; the table shows the median and min-max of each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "portal_env.cli"]


def timed_start(env_dir: Path, env: Dict[str, str]) -> float:
    """Seconds from launching `start -d` until it reports ready; stops the portal after."""
    command = CLI + ["start", "-p", str(env_dir), "bench", "-b", "venv", "-d"]
    began = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - began
    subprocess.run(CLI + ["stop", "bench"], env=env, capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"start failed:\n{done.stderr}")
    return elapsed


def measure(env_dir: Path, repeats: int) -> Dict[str, List[float]]:
    """Cold and warm start times, alternating."""
    results: Dict[str, List[float]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory(prefix="portal-env-startup-") as tmp:
        env = dict(os.environ, PORTAL_ENV_STATE_DIR=str(Path(tmp) / "state"))
        for i in range(repeats):
            env["PORTAL_ENV_CACHE_DIR"] = str(Path(tmp) / f"cache-{i}")
            results["cold"].append(timed_start(env_dir, env))
            results["warm"].append(timed_start(env_dir, env))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--env", type=Path, default=ROOT / "examples" / "cartpole_env")
    args = parser.parse_args()
    results = measure(args.env.resolve(), args.repeats)
    print(f"portal-env start -d -> ready ({args.repeats} runs each, seconds)")
    print(f"{'runtime':<8} {'median':>7} {'min':>7} {'max':>7}")
    for name, times in results.items():
        print(f"{name:<8} {statistics.median(times):7.2f} {min(times):7.2f} {max(times):7.2f}")


if __name__ == "__main__":
    main()
