"""Conda runtime (micromamba / mm backend) costs: lock, cold build, warm start, prefix size.

Uses the local file:// test channel (tests/conda_channel.py; python, cloudpickle)
plus gymnasium, numpy and msgpack from PyPI, in a private cache and state dir.
Cold build = a fresh cache (conda packages and pip wheels downloaded/extracted
again except what uv's own cache holds); warm start = `portal-env start -d` with
the prefix cached, until the portal answers (what the CLI reports as ready).

Run: python benchmarks/conda_runtime.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conda_channel import build_channel  # noqa: E402

CLI = [sys.executable, "-m", "portal_env.cli"]


def timed(*args: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(CLI + list(args), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr}")
    return time.perf_counter() - started


def size_of(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_symlink() and p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="portal-env-bench-conda-"))
    try:
        run(work, args.repeat)
    finally:
        subprocess.run(CLI + ["stop", "--all"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, repeat: int) -> None:
    channel = build_channel(work)
    env_dir = work / "env"
    env_dir.mkdir()
    shutil.copy(ROOT / "examples" / "cartpole_env" / "env_main.py", env_dir)
    (env_dir / "spec.yml").write_text(
        f"channels:\n  - {channel.as_uri()}\ndependencies:\n  - python=3.11\n"
        "  - cloudpickle\n  - pip:\n      - gymnasium\n      - numpy\n      - msgpack\n"
    )
    os.environ["PORTAL_ENV_STATE_DIR"] = str(work / "state")
    rows = []
    lock = [timed("lock", "bench", "-p", str(env_dir)) for _ in range(repeat)]
    rows.append(("lock (py-rattler solve + uv pip compile)", lock))
    cold, warm = [], []
    for i in range(repeat):
        os.environ["PORTAL_ENV_CACHE_DIR"] = str(work / f"cache-{i}")
        cold.append(timed("build", "-e", "bench", "-p", str(env_dir), "-b", "mm"))
    for _ in range(repeat):
        warm.append(timed("start", "bench", "-p", str(env_dir), "-b", "mm", "-d"))
        timed("stop", "bench")
    rows += [("cold build (empty cache)", cold), ("warm start -d to ready", warm)]
    prefix = next((work / "cache-0" / "conda").glob("*-*[!k]"))
    print(f"{'step':44} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, values in rows:
        print(f"{name:44} {statistics.median(values):9.2f} {min(values):7.2f} {max(values):7.2f}")
    print(f"{'prefix size on disk':44} {size_of(prefix) / 2**20:8.1f} MiB  ({prefix.name})")


if __name__ == "__main__":
    main()
