"""The whole job inside one container (run there by tests/test_whole_job.py; copied into the
job image by tests/jobimage.py): portal-env start -b venv and -b mm, agents by name, ps,
logs, large observations through a small /dev/shm, -b docker without a daemon, stop; then
checks that nothing is left. Prints a JSON report; exits 1 with the reason on a failure.

Usage: python whole_job.py [--no-docker-check]
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List

import gymnasium
import numpy as np

from portal_env import AgentSidePortal, config

ROOT = "/opt/portal-test"
REPORT: Dict[str, Any] = {}


class Failed(Exception):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise Failed(what)


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    started = time.monotonic()
    done = subprocess.run(["portal-env", *args], capture_output=True, text=True, timeout=timeout)
    done.seconds = time.monotonic() - started  # type: ignore[attr-defined]
    return done


def trajectory(env: gymnasium.Env, steps: int = 40) -> List[Any]:
    obs, _ = env.reset(seed=11)
    out = [obs]
    for t in range(steps):
        obs, reward, terminated, truncated, _ = env.step(t % 2)
        out += [obs, reward, terminated, truncated]
        if terminated or truncated:
            out.append(env.reset()[0])
    return out


def same(a: List[Any], b: List[Any]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def serve_and_step(name: str, backend: str) -> None:
    done = cli("start", name, "-p", f"{ROOT}/{name}", "-b", backend, "-d")
    check(done.returncode == 0, f"start {name} -b {backend}: {done.stderr}")
    REPORT[f"start -b {backend} -d (cold), s"] = round(done.seconds, 2)
    with AgentSidePortal(name, ["CartPole-v1"]) as env:  # by name, from the registry
        check(same(trajectory(env), trajectory(gymnasium.make("CartPole-v1"))), f"{name} steps")


def big_observations() -> None:
    """Two agents at once on 16 MB observations: each asks for 48 MB of shared memory (a
    ring of three); a 64 MB /dev/shm holds one of them, the other goes through the socket."""
    done = cli("start", "bigobs", "-p", f"{ROOT}/bigobs", "-b", "venv", "-d")
    check(done.returncode == 0, f"start bigobs: {done.stderr}")
    spec = importlib.util.spec_from_file_location("bigobs", f"{ROOT}/bigobs/env_main.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))  # registers Big-v0
    results: Dict[int, Any] = {}
    both = threading.Barrier(2, timeout=300)  # both envs hold their memory at once

    def agent(seed: int) -> None:
        try:
            with AgentSidePortal("bigobs", ["Big-v0"]) as env:
                both.wait()
                local = gymnasium.make("Big-v0")
                ok = np.array_equal(env.reset(seed=seed)[0], local.reset(seed=seed)[0])
                for action in (0, 1, 0, 1):
                    ok = ok and np.array_equal(env.step(action)[0], local.step(action)[0])
                results[seed] = (ok, env._client.layout.shm is not None)
        except Exception as exc:  # reported below, with its type
            results[seed] = (False, f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=agent, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    check(all(ok for ok, _ in results.values()) and len(results) == 2, f"big obs: {results}")
    REPORT["big observations: agents using shared memory"] = sum(
        s is True for _, s in results.values()
    )


def docker_without_a_daemon() -> None:
    done = cli("start", "dockercart", "-p", f"{ROOT}/cart", "-b", "docker", "-d", timeout=120)
    check(done.returncode == 1, f"-b docker exit code {done.returncode}: {done.stderr}")
    REPORT["-b docker error"] = done.stderr.strip()
    REPORT["-b docker failed after, s"] = round(done.seconds, 2)


def processes_left() -> Dict[str, List[str]]:
    """This user's processes other than this one and its ancestors: running, and zombies."""
    mine, ancestors = os.getuid(), set()
    pid = os.getpid()
    while pid > 1:
        ancestors.add(pid)
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
    left: Dict[str, List[str]] = {"running": [], "zombies": []}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in ancestors or entry == "1":
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if int(status["Uid"].split()[0]) != mine:  # under ch-run, the host's are visible
            continue
        if status["State"].split()[0] == "Z":
            parent = status["PPid"].strip()
            left["zombies"].append(f"{entry} {status['Name'].strip()} (parent {parent})")
        else:
            left["running"].append(f"{entry} {command}")
    return left


def main(docker_check: bool) -> None:
    REPORT["uid"] = os.getuid()
    REPORT["state dir"] = str(config.state_dir())
    REPORT["cache dir"] = str(config.cache_dir())
    REPORT["socket dir"] = str(config.socket_dir())
    serve_and_step("cart", "venv")
    serve_and_step("condacart", "mm")
    ps = cli("ps")
    check(ps.returncode == 0 and "cart" in ps.stdout and "condacart" in ps.stdout, ps.stdout)
    REPORT["ps"] = ps.stdout.splitlines()
    logs = cli("logs", "condacart")
    check("portal-env serving on unix:" in logs.stdout, f"logs: {logs.stdout}{logs.stderr}")
    big_observations()
    if docker_check:
        docker_without_a_daemon()
    stopped = cli("stop", "--all")
    check(stopped.returncode == 0, f"stop --all: {stopped.stderr}")
    REPORT["stopped"] = stopped.stdout.split()
    deadline = time.monotonic() + 15  # exited supervisors wait for their new parent to reap
    while any(processes_left().values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    REPORT["left"] = processes_left()
    sockets = os.listdir(config.socket_dir())
    REPORT["sockets left"] = [name for name in sockets if name.endswith(".sock")]


if __name__ == "__main__":
    try:
        main(docker_check="--no-docker-check" not in sys.argv)
    except Failed as failure:
        print(json.dumps(REPORT, indent=1))
        print(f"FAILED: {failure}", file=sys.stderr)
        for name in ("cart", "condacart", "bigobs"):
            print(cli("logs", name).stdout[-3000:], file=sys.stderr)
        cli("stop", "--all")
        sys.exit(1)
    print(json.dumps(REPORT, indent=1))
