"""Conda runtime (micromamba / mm backend) costs per installer: lock, cold build, warm start,
prefix size, for one lock, in one run.

Uses the local file:// test channel (tests/conda_channel.py; python, cloudpickle)
plus gymnasium, numpy and msgpack from PyPI, in a private cache and state dir.
The lock is made once (py-rattler solve + uv; no installer involved) and both
installers build from it: py-rattler, and the micromamba executable
($PORTAL_ENV_TEST_MICROMAMBA, $MAMBA_EXE or PATH; `.ci/run` builds one). Cold
build = a fresh cache (conda packages extracted again; pip wheels come from
uv's own cache); warm start = `portal-env start -d` with the prefix cached,
until the portal answers (what the CLI reports as ready).

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
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import installers  # noqa: E402
from tests.conda_channel import build_channel  # noqa: E402

CLI = [sys.executable, "-m", "portal_env.cli"]
_OUTSIDE = {k: v for k, v in os.environ.items() if k in ("HOME", "MAMBA_EXE")}


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
    if installers.micromamba() is None:
        raise SystemExit(f"no micromamba executable: set {installers.TEST_VAR} (see .ci/run)")
    work = Path(tempfile.mkdtemp(prefix="portal-env-bench-conda-"))
    os.environ["PORTAL_ENV_STATE_DIR"] = str(work / "state")
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
    lock = [timed("lock", "bench", "-p", str(env_dir)) for _ in range(repeat)]
    cold: Dict[str, List[float]] = {name: [] for name in installers.ALL}
    warm: Dict[str, List[float]] = {name: [] for name in installers.ALL}
    sizes: Dict[str, float] = {}
    # interleaved, so that load from other processes on the machine hits both alike
    for i in range(repeat):
        for name in installers.ALL:
            use(name, work, work / f"cache-{name}-{i}")
            cold[name].append(timed("build", "-e", "bench", "-p", str(env_dir), "-b", "mm"))
            if i == 0:  # as built, before a server writes bytecode into it
                (prefix,) = [
                    p for p in (work / f"cache-{name}-0" / "conda").iterdir() if p.is_dir()
                ]
                sizes[name] = size_of(prefix) / 2**20
    for _ in range(repeat):
        for name in installers.ALL:
            use(name, work, work / f"cache-{name}-0")
            warm[name].append(timed("start", "bench", "-p", str(env_dir), "-b", "mm", "-d"))
            timed("stop", "bench")
    rows: Dict[str, Dict[str, List[float]]] = {}
    for name in installers.ALL:
        rows[name] = {"lock": lock, "cold build (empty cache)": cold[name]}
        rows[name]["warm start -d to ready"] = warm[name]
    report(rows, sizes, repeat)


def use(name: str, work: Path, cache: Path) -> None:
    """Make the next portal-env commands install with installer name, caching in cache."""
    for key in ("PORTAL_ENV_CONDA_INSTALLER", "MAMBA_EXE", "MAMBA_ROOT_PREFIX", "HOME"):
        os.environ.pop(key, None)
    os.environ.update(_OUTSIDE)
    os.environ.update(installers.environment(name, work / "mamba-root"))
    os.environ["PORTAL_ENV_CACHE_DIR"] = str(cache)


def report(rows: Dict[str, Dict[str, List[float]]], sizes: Dict[str, float], repeat: int) -> None:
    rattler, mamba = installers.ALL
    print(f"one lock, both installers; median of {repeat} (min-max), seconds")
    print(f"{'step':28} {rattler:>20} {mamba:>20} {'mm/rattler':>11}")
    for step in rows[rattler]:
        a, b = rows[rattler][step], rows[mamba][step]
        cells = [f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})" for v in (a, b)]
        ratio = statistics.median(b) / statistics.median(a)
        print(f"{step:28} {cells[0]:>20} {cells[1]:>20} {ratio:>10.2f}x")
    a, b = sizes[rattler], sizes[mamba]
    print(f"{'prefix size on disk (MiB)':28} {a:>20.1f} {b:>20.1f} {b / a:>10.2f}x")
    print("(lock: py-rattler solve + uv pip compile, the same lock for both columns)")


if __name__ == "__main__":
    main()
