"""Start times of one env as an image run by ch-run (`-b ch`: a SquashFS file, or a
directory) against the same env as a conda prefix (`-b mm`), cold and warm, in one run.

The env is CartPole (the example's env_main.py) locked against the tests' local file://
conda channel, whose python is Debian's /usr/bin/python3.11, plus gymnasium, numpy and
msgpack from PyPI; the images are built over the Docker tests' debootstrap bookworm
rootfs (tests/dockerhost.py; made once with root, cached). Everything else is private to
the run (cache, state, package caches start empty).

- cold: `portal-env start -d` to ready with an empty portal-env cache: it builds the
  runtime first (mm: install the prefix; ch: install the same prefix for the image's
  path, write the image archive, unpack it, pack the SquashFS file). uv's own cache of
  pip wheels stays warm, as on any machine that built something before.
- warm: `start -d` to ready with the runtime cached, then `stop`.
Repeats are interleaved so that load from other processes hits every runtime alike.

Run (root, Charliecloud installed): python benchmarks/image_startup.py [--repeat 3]
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
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import dockerhost  # noqa: E402
from tests.conda_channel import build_channel, locked_cartpole  # noqa: E402

CLI = [sys.executable, "-m", "portal_env.cli"]
NAME = "benchcart"
# (label, backend, extra options, $PORTAL_ENV_CH_IMAGE)
RUNTIMES: List[Tuple[str, str, List[str], str]] = [
    ("mm (conda prefix)", "mm", [], ""),
    ("ch, SquashFS file", "ch", ["--base-image"], "squash"),
    ("ch, directory", "ch", ["--base-image"], "dir"),
]


def timed(*args: str, env: Dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(CLI + list(args), capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"portal-env {' '.join(args)} failed:\n{done.stderr}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("ch-run") is None:
        raise SystemExit("Charliecloud's ch-run is not installed (apt install charliecloud)")
    work = Path(tempfile.mkdtemp(prefix="portal-env-bench-image-"))
    try:
        run(work, args.repeat)
    finally:
        env = dict(os.environ, PORTAL_ENV_STATE_DIR=str(work / "state"))
        subprocess.run(CLI + ["stop", "--all"], capture_output=True, env=env)
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, repeat: int) -> None:
    rootfs = dockerhost.rootfs_tar()
    channel = build_channel(work, python="/usr/bin/python3.11")
    env_dir = locked_cartpole(work / NAME, channel, python="3.11")
    cold: Dict[str, List[float]] = {label: [] for label, *_ in RUNTIMES}
    warm: Dict[str, List[float]] = {label: [] for label, *_ in RUNTIMES}
    for i in range(repeat):
        for label, backend, options, form in RUNTIMES:
            env = environment(work, f"{backend}-{form}-{i}", form)
            args = start_args(env_dir, backend, options, rootfs)
            cold[label].append(timed(*args, env=env))
            timed("stop", NAME, env=env)
    for _ in range(repeat):
        for label, backend, options, form in RUNTIMES:
            env = environment(work, f"{backend}-{form}-0", form)
            warm[label].append(timed(*start_args(env_dir, backend, options, rootfs), env=env))
            timed("stop", NAME, env=env)
    report(work, cold, warm, repeat)


def environment(work: Path, cache: str, form: str) -> Dict[str, str]:
    env = dict(os.environ, PORTAL_ENV_STATE_DIR=str(work / "state"))
    env.update(PORTAL_ENV_CACHE_DIR=str(work / f"cache-{cache}"), PORTAL_ENV_CH_IMAGE=form or "")
    return env


def start_args(env_dir: Path, backend: str, options: List[str], rootfs: Path) -> List[str]:
    args = ["start", NAME, "-p", str(env_dir), "-b", backend, "-d"]
    return args + ([options[0], str(rootfs)] if options else [])


def files_and_bytes(path: Path) -> Tuple[int, int]:
    if path.is_file():
        return 1, path.stat().st_size
    files = [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    return len(files), sum(p.stat().st_size for p in files)


def report(work: Path, cold: Dict[str, List[float]], warm: Dict[str, List[float]], n: int):
    base = RUNTIMES[0][0]
    print(f"`start -d` to ready, seconds: median of {n} (min-max), and the ratio to {base}")
    print(f"{'runtime':20} {'cold':>20} {'ratio':>7} {'warm':>20} {'ratio':>7}")
    for label, *_ in RUNTIMES:
        cells = []
        for table in (cold, warm):
            values = table[label]
            cells.append(f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
            cells.append(f"{statistics.median(values) / statistics.median(table[base]):.2f}x")
        print(f"{label:20} {cells[0]:>20} {cells[1]:>7} {cells[2]:>20} {cells[3]:>7}")
    print("\nwhat a start reads, as built (files, MiB)")
    prefix = next((work / "cache-mm--0" / "conda").glob("*/bin"), None)
    where = {base: prefix.parent if prefix else None}
    for label, _, _, form in RUNTIMES[1:]:
        built = [p for p in (work / f"cache-ch-{form}-0" / "charliecloud").iterdir() if p.is_dir()]
        where[label] = built[0] / ("image.sqfs" if form == "squash" else "image")
    for label, path in where.items():
        if path is not None:
            count, size = files_and_bytes(path)
            print(f"{label:20} {count:>8} files {size / 2**20:>8.1f} MiB  {path.name}")
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"\nload average at the end: {load} ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
