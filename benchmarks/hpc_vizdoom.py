"""The HPC flow of `portal-env start vizdoom -b mm`, timed per installer: lock through a
mirror, build, start, cold and warm, and start on an offline compute node.

conda-forge is served by a mirror in $CONDARC (the local file:// test channel,
tests/conda_channel.py, as `conda-forge`); ViZDoom and the serving deps are pip
packages from PyPI, installed by uv from its own cache after the first run (so "cold"
leaves out their download: ViZDoom unpacks to ~150 MB). Each repetition uses a fresh
state dir (the user lock goes there) and fresh runtime caches; both installers build
from the same lock, interleaved so that load from other processes hits both alike.

- lock (cold): `portal-env lock vizdoom -b mm` into a fresh state dir
- lock (warm): the same again (rewrites an identical lock)
- build (cold): `portal-env build -e vizdoom -b mm` into an empty runtime cache
- build (warm): the same with the prefix cached (nothing to do)
- start -d (warm): `portal-env start vizdoom -b mm -d` until ready, prefix cached
- start -d (offline): the same inside `unshare --net` (a compute node without network)

Run: python benchmarks/hpc_vizdoom.py [--repeat 3]   (needs root or user namespaces for
unshare, and the micromamba executable: $PORTAL_ENV_TEST_MICROMAMBA, as for the tests)
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
STEPS = (
    "lock (cold)",
    "lock (warm)",
    "build (cold)",
    "build (warm)",
    "start -d (warm)",
    "start -d (offline)",
)
_OUTSIDE = {k: v for k, v in os.environ.items() if k in ("HOME", "MAMBA_EXE")}


def timed(*args: str, prefix: List[str] = ()) -> float:
    started = time.perf_counter()
    done = subprocess.run([*prefix, *CLI, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr}")
    return time.perf_counter() - started


def use(installer: str, work: Path, state: Path, cache: Path) -> None:
    """The next commands install with installer, with this state dir and runtime cache."""
    for key in ("PORTAL_ENV_CONDA_INSTALLER", "MAMBA_EXE", "MAMBA_ROOT_PREFIX", "HOME"):
        os.environ.pop(key, None)
    os.environ.update(_OUTSIDE)
    os.environ.update(installers.environment(installer, work / "mamba-root"))
    os.environ.update(PORTAL_ENV_STATE_DIR=str(state), PORTAL_ENV_CACHE_DIR=str(cache))


def one_run(installer: str, work: Path, run: int) -> Dict[str, float]:
    state, cache = work / f"state-{installer}-{run}", work / f"cache-{installer}-{run}"
    use(installer, work, state, cache)
    times = {"lock (cold)": timed("lock", "vizdoom", "-b", "mm")}
    times["lock (warm)"] = timed("lock", "vizdoom", "-b", "mm")
    times["build (cold)"] = timed("build", "-e", "vizdoom", "-b", "mm")
    times["build (warm)"] = timed("build", "-e", "vizdoom", "-b", "mm")
    times["start -d (warm)"] = timed("start", "vizdoom", "-b", "mm", "-d")
    timed("stop", "vizdoom")
    times["start -d (offline)"] = timed(
        "start", "vizdoom", "-b", "mm", "-d", prefix=["unshare", "--net"]
    )
    timed("stop", "vizdoom")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if installers.micromamba() is None:
        raise SystemExit(f"no micromamba executable: set {installers.TEST_VAR} (see .ci/run)")
    work = Path(tempfile.mkdtemp(prefix="portal-env-bench-hpc-"))
    mirror = work / "mirror"
    mirror.mkdir()
    (mirror / "conda-forge").symlink_to(build_channel(work), target_is_directory=True)
    condarc = work / ".condarc"
    condarc.write_text(f"mirrored_channels:\n  conda-forge: [{mirror.as_uri()}/conda-forge]\n")
    os.environ["CONDARC"] = str(condarc)
    results: Dict[str, Dict[str, List[float]]] = {n: {s: [] for s in STEPS} for n in installers.ALL}
    try:
        for run in range(args.repeat):
            for installer in installers.ALL:
                for step, seconds in one_run(installer, work, run).items():
                    results[installer][step].append(seconds)
    finally:
        subprocess.run(CLI + ["stop", "--all"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    report(results, args.repeat)


def report(results: Dict[str, Dict[str, List[float]]], repeat: int) -> None:
    rattler, mamba = installers.ALL
    print(f"vizdoom -b mm through a file:// mirror; median of {repeat} (min-max), seconds")
    print(f"{'step':22} {rattler:>20} {mamba:>20} {'mm/rattler':>11}")
    for step in STEPS:
        a, b = results[rattler][step], results[mamba][step]
        cells = [f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})" for v in (a, b)]
        ratio = statistics.median(b) / statistics.median(a)
        print(f"{step:22} {cells[0]:>20} {cells[1]:>20} {ratio:>10.2f}x")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
