"""The small server of old runtimes against the main server: steps/s, ratios in one run.

Run: python benchmarks/ancient.py [--rounds 7] [--seconds 1.5] [--docker]

1. Same env (gymnasium's CartPole-v1), same Python (this one), over a Unix socket: the
   main server (fast step frames) against the small server (`portal_env.legacy`, general
   frames only). Target: the small server >= 0.6x the main server's steps/s.
2. With --docker (a Docker daemon and root; tests/dockerhost.py makes the base images
   once): CartPole-v1 of gym 0.15.7 on Python 2.7 in a bullseye container
   (examples/ancient_cartpole) against gymnasium's CartPole-v1 on the main server in a
   bookworm container, each through the container's address on portal_env_net.

Rounds alternate between the two servers, so that load from other processes on a
shared machine falls on both alike; the ratio is the median of per-round ratios.
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
from typing import Callable, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLI = [sys.executable, "-m", "portal_env.cli"]
MAIN_SERVER = ROOT / "tests" / "serve_test_envs.py"
SMALL_SERVER = ROOT / "tests" / "serve_legacy.py"


def rate(env, seconds: float) -> float:
    """CartPole steps per second, alternating actions, resetting at episode ends."""
    env.reset(seed=0)
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        _, _, terminated, truncated, _ = env.step(count % 2)
        if terminated or truncated:
            env.reset()
        count += 1
    return count / (time.perf_counter() - began)


def _rounds(envs: Dict[str, object], rounds: int, seconds: float) -> Dict[str, List[float]]:
    out: Dict[str, List[float]] = {name: [] for name in envs}
    for _ in range(rounds):
        for name, env in envs.items():
            out[name].append(rate(env, seconds))
    return out


def table(title: str, rates: Dict[str, List[float]], baseline: str) -> None:
    print(title)
    for name, values in rates.items():
        ratios = [v / b for v, b in zip(values, rates[baseline])]
        print(
            f"  {name:<52} {statistics.median(values):>8,.0f} steps/s "
            f"[{min(values):,.0f}-{max(values):,.0f}]  {statistics.median(ratios):.2f}x"
        )


def same_python(rounds: int, seconds: float, work: Path) -> None:
    from portal_env import AgentSidePortal
    from tests.conftest import start_server

    handles = {}
    try:
        for name, script in (("main", MAIN_SERVER), ("small", SMALL_SERVER)):
            socket_path = str(work / f"{name}.sock")
            handles[name] = start_server(work, {"PORTAL_ENV_SOCKET": socket_path}, script=script)
        makers = {
            f"{name} server, Python {sys.version.split()[0]}, Unix socket": (
                lambda h=handle: AgentSidePortal("bench", ["CartPole-v1"], **h.kwargs())
            )
            for name, handle in handles.items()
        }
        rates = _measure(makers, rounds, seconds)
    finally:
        for handle in handles.values():
            handle.stop()
    table("1. CartPole-v1 (gymnasium), same Python, Unix socket", rates, next(iter(rates)))


def _measure(makers: Dict[str, Callable[[], object]], rounds: int, seconds: float) -> Dict:
    envs = {name: make() for name, make in makers.items()}
    try:
        for env in envs.values():
            rate(env, seconds / 3)  # warm-up
        return _rounds(envs, rounds, seconds)
    finally:
        for env in envs.values():
            env.close()


def containers(rounds: int, seconds: float, work: Path) -> None:
    from portal_env import AgentSidePortal
    from tests import dockerhost

    client = dockerhost.client()
    main_dir = dockerhost.dockerfile_env(
        work / "main", (ROOT / "examples" / "cartpole_env" / "env_main.py").read_text()
    )
    ancient_dir = dockerhost.ancient_env(work / "ancient")
    portals = {
        "benchmain": ["-p", str(main_dir), "--base-image", dockerhost.base_image()],
        "benchancient": ["-p", str(ancient_dir), "--base-image", dockerhost.bullseye_image()],
    }
    try:
        for name, args in portals.items():
            done = subprocess.run(
                CLI + ["start", name, "-b", "docker", "-d", *args], capture_output=True, text=True
            )
            if done.returncode != 0:
                raise SystemExit(f"portal-env start {name} failed:\n{done.stderr}")
        rates = _measure(
            {
                "main server, Python 3.11 (bookworm container)": lambda: AgentSidePortal(
                    "benchmain", ["CartPole-v1"]
                ),
                "small server, Python 2.7, gym 0.15.7 (bullseye)": lambda: AgentSidePortal(
                    "benchancient", ["CartPole-v1"]
                ),
            },
            rounds,
            seconds,
        )
    finally:
        for name in portals:
            subprocess.run(CLI + ["stop", name], capture_output=True)
        for repository in ("portal-env/benchmain", "portal-env/benchancient"):
            for image in client.images.list(repository):
                client.images.remove(image.id, force=True)
    table("2. CartPole-v1 in containers (agent on this host)", rates, next(iter(rates)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--docker", action="store_true", help="also the container comparison")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="portal-env-bench-ancient-"))
    os.environ.update(PORTAL_ENV_STATE_DIR=str(work / "state"))
    os.environ.update(PORTAL_ENV_CACHE_DIR=str(work / "cache"))
    try:
        same_python(args.rounds, args.seconds, work)
        if args.docker:
            containers(args.rounds, args.seconds, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
