"""Docker backend costs: image build, warm start to ready, and step throughput host -> container.

Run: python benchmarks/docker_runtime.py [--repeat 5] [--seconds 2]
Needs a running Docker daemon and root (for the local base image; tests/dockerhost.py
makes it with debootstrap once and caches it).

The env is examples/cartpole_env's env_main.py with a Dockerfile.env that installs
gymnasium, numpy and msgpack from a wheelhouse over the local bookworm base image.
Rows (medians of --repeat runs, min-max in brackets):
- build: `portal-env build -b docker -f`, which runs every Dockerfile step again (no layer
  cache; pip installs from the wheelhouse);
- warm start: `portal-env start -d` until ready with the image cached, for docker and, on
  the same env, for the venv backend;
- CartPole steps/s: in-process; through the docker portal at the address the registry
  gives host agents (the container's address on portal_env_net, where the host sits on the
  bridge); through its published 127.0.0.1 port (relayed by docker-proxy); and through a
  venv portal (Unix socket), the same env served locally.
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

from tests import dockerhost  # noqa: E402

CLI = [sys.executable, "-m", "portal_env.cli"]


def timed(*args: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(CLI + list(args), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"portal-env {' '.join(args)} failed:\n{done.stderr}")
    return time.perf_counter() - started


def steps_per_second(make: Callable[[], object], seconds: float, repeat: int) -> List[float]:
    env = make()
    env.reset(seed=0)
    env.action_space.seed(0)
    rates = []
    for _ in range(repeat + 1):  # the first round warms up
        count, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()
            count += 1
        rates.append(count / (time.perf_counter() - began))
    env.close()
    return rates[1:]


def cell(values: List[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    client, base = dockerhost.client(), dockerhost.base_image()
    work = Path(tempfile.mkdtemp(prefix="portal-env-bench-docker-"))
    os.environ.update(PORTAL_ENV_STATE_DIR=str(work / "state"))
    os.environ.update(PORTAL_ENV_CACHE_DIR=str(work / "cache"))
    try:
        env_dir = make_env_dir(work)
        rows = run(client, base, env_dir, args.repeat, args.seconds)
    finally:
        subprocess.run(CLI + ["stop", "--all"], capture_output=True)
        for image in client.images.list("portal-env/bench"):
            client.images.remove(image.id, force=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"docker backend, CartPole-v1 ({args.repeat} runs each)")
    for name, value in rows.items():
        print(f"{name:<44} {value}")


def make_env_dir(work: Path) -> Path:
    example = ROOT / "examples" / "cartpole_env"
    env_dir = dockerhost.dockerfile_env(work / "env", (example / "env_main.py").read_text())
    for name in ("spec.yml", "spec.venv.lock.txt"):  # the venv backend's files, for its rows
        shutil.copy(example / name, env_dir)
    return env_dir


def run(client, base: str, env_dir: Path, repeat: int, seconds: float) -> Dict[str, str]:
    import gymnasium

    from portal_env import AgentSidePortal
    from portal_env.serving import registry

    docker = ["-p", str(env_dir), "-b", "docker", "--base-image", base]
    timed("build", "-e", "bench", *docker)  # first build: Docker's layer cache fills
    build = [timed("build", "-e", "bench", *docker, "-f") for _ in range(repeat)]
    warm: Dict[str, List[float]] = {"docker": [], "venv": []}
    timed("build", "-e", "bench", "-p", str(env_dir), "-b", "venv")
    for _ in range(repeat):
        for backend, extra in (("docker", docker), ("venv", ["-p", str(env_dir), "-b", "venv"])):
            warm[backend].append(timed("start", "bench", *extra, "-d"))
            timed("stop", "bench")
    rates = {"in-process": steps_per_second(lambda: gymnasium.make("CartPole-v1"), seconds, repeat)}
    timed("start", "bench", *docker, "-d")
    record = registry.get("bench")
    rates["docker portal (as registered: container address)"] = steps_per_second(
        lambda: AgentSidePortal("bench", ["CartPole-v1"]), seconds, repeat
    )
    container = client.containers.get("env_portal_bench")
    published = f"127.0.0.1:{container.ports['7000/tcp'][0]['HostPort']}"
    rates["docker portal (published port, docker-proxy)"] = steps_per_second(
        lambda: AgentSidePortal("bench", ["CartPole-v1"], address=published, token=record.token),
        seconds,
        repeat,
    )
    timed("stop", "bench")
    timed("start", "bench", "-p", str(env_dir), "-b", "venv", "-d")
    rates["venv portal (Unix socket)"] = steps_per_second(
        lambda: AgentSidePortal("bench", ["CartPole-v1"]), seconds, repeat
    )
    timed("stop", "bench")
    base_rate = statistics.median(rates["in-process"])
    rows = {"build -f, no layer cache (s)": cell(build, ".2f")}
    rows.update({f"warm start to ready, {k} (s)": cell(v, ".2f") for k, v in warm.items()})
    for name, values in rates.items():
        ratio = statistics.median(values) / base_rate
        rows[f"steps/s, {name}"] = f"{cell(values, ',.0f')}  {ratio:.2f}x in-process"
    return rows


if __name__ == "__main__":
    main()
