"""One vector env over servers on 2 Slurm nodes vs one server; compute-node start time.

What it does, all in one run on this machine:
1. "login node": builds the venv runtimes of examples/cartpole_env (`cartpole`) and the
   built-in `ale` into one cache (the shared cache of a cluster).
2. starts a real two-node Slurm cluster (tests/slurmcluster.py: two slurmd on 127.0.0.1)
   and submits one job over both nodes: `srun --ntasks-per-node=1 portal-env start NAME
   --host 127.0.0.1` for each env, and the learner on the first node, which times
   make_vec(NAME, num_envs=N) steps over the server of n1 alone (addresses=[...]) and over
   the servers of both nodes (found in the job's registry), alternating, best of R.
3. "compute node without network": times `portal-env start NAME` to ready inside
   `unshare --net` (no interface but loopback) from the cache built in 1, venv and mm (mm
   from the local test conda channel of tests/conda_channel.py), median of R: in the
   foreground until its ready line (how srun runs it in a job) and with -d.

Both "nodes" share this machine's 2 cores, so the 2-server figure shows the protocol's
overhead and what concurrency buys on 2 cores, not what 2 real machines would give.

Run: python benchmarks/multinode.py [--repeats 3] [--cartpole-envs 16] [--pong-envs 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.slurmcluster import SlurmCluster  # noqa: E402

CLI = [sys.executable, "-m", "portal_env.cli"]
EXAMPLE = ROOT / "examples" / "cartpole_env"

LEARNER = """
import json, os, sys, time
from portal_env.portal.vector import multiserver
from portal_env.serving import registry

CASES = json.loads(os.environ["CASES"])
REPEATS = int(os.environ["REPEATS"])

def wait_servers(name):
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        found = registry.lookup_all(name)
        if len(found) >= 2:
            return found
        time.sleep(0.1)
    sys.exit(f"no 2 servers of {name} registered")

def steps_per_s(vec, steps):
    vec.reset(seed=0)
    actions = [vec.action_space.sample() for _ in range(64)]
    for i in range(20):  # warm up
        vec.step(actions[i % 64])
    began = time.perf_counter()
    for i in range(steps):
        vec.step(actions[i % 64])
    return steps * vec.num_envs / (time.perf_counter() - began)

rows = []
for name, env_id, num_envs, steps in CASES:
    found = wait_servers(name)
    one = multiserver.make_vec(name, num_envs, [env_id], addresses=[found[0].address])
    both = multiserver.make_vec(name, num_envs, [env_id])
    one.action_space.seed(0)
    both.action_space.seed(0)
    best = {"one": 0.0, "both": 0.0}
    for _ in range(REPEATS):  # alternating, so drift hits both alike
        best["one"] = max(best["one"], steps_per_s(one, steps))
        best["both"] = max(best["both"], steps_per_s(both, steps))
    rows.append(dict(env=env_id, num_envs=num_envs, nodes=[e.node for e in both.endpoints],
                     one=best["one"], both=best["both"]))
    one.close()
    both.close()
json.dump(rows, open(os.environ["RESULT"], "w"))
"""

JOB = """#!/bin/bash
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --output={out}
set -euo pipefail
export PORTAL_ENV_REGISTRY_DIR="{work}/jobs/job-$SLURM_JOB_ID/registry"
for name in {names}; do
    path=""
    [ "$name" = cartpole ] && path="-p {example}"
    srun --overlap --nodes=2 --ntasks-per-node=1 bash -c \\
        "export PORTAL_ENV_RUNTIME_DIR={run}/\\$SLURMD_NODENAME;
         exec {python} -m portal_env.cli start $name $path -b venv --host 127.0.0.1" &
done
cd {root} && {python} {learner}
"""


def cli(*args: str, env: Dict[str, str], prefix: List[str] = ()) -> float:
    began = time.perf_counter()
    done = subprocess.run(list(prefix) + CLI + list(args), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"portal-env {' '.join(args)} failed:\n{done.stderr}")
    return time.perf_counter() - began


def vector_table(work: Path, env: Dict[str, str], args: argparse.Namespace) -> List[dict]:
    cases = [
        ["cartpole", "CartPole-v1", args.cartpole_envs, args.cartpole_steps],
        ["ale", "ALE/Pong-v5", args.pong_envs, args.pong_steps],
    ]
    cluster = SlurmCluster(work / "slurm")
    cluster.start()
    try:
        learner = work / "learner.py"
        learner.write_text(LEARNER)
        result, out = work / "result.json", work / "job.out"
        script = work / "job.sh"
        script.write_text(
            JOB.format(
                out=out,
                work=work,
                names="cartpole ale",
                example=EXAMPLE,
                run=work / "run",
                python=sys.executable,
                root=ROOT,
                learner=learner,
            )  # fmt: skip
        )
        job_env = dict(env, CASES=json.dumps(cases), REPEATS=str(args.repeats))
        job_env.update(RESULT=str(result), **cluster.env())
        done = cluster.run(["sbatch", "--parsable", str(script)], env=job_env)
        if done.returncode != 0:
            raise SystemExit(f"sbatch failed: {done.stderr}")
        job_id = done.stdout.strip()
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            if not cluster.run(["squeue", "-h", "-j", job_id]).stdout.strip():
                break
            time.sleep(0.5)
        if not result.exists():
            raise SystemExit(f"the job wrote no result; its output:\n{out.read_text()}")
        return json.loads(result.read_text())
    finally:
        cluster.stop()


def offline_starts(work: Path, env: Dict[str, str], repeats: int) -> Dict[str, List[float]]:
    from tests.conda_channel import build_channel

    channel = build_channel(work / "channel")
    conda_env = work / "conda-env"
    conda_env.mkdir()
    shutil.copy(EXAMPLE / "env_main.py", conda_env)
    (conda_env / "spec.yml").write_text(
        f"channels:\n  - {channel.as_uri()}\ndependencies:\n  - python=3.11\n"
        "  - cloudpickle\n  - pip:\n      - gymnasium\n      - numpy\n      - msgpack\n"
    )
    cli("lock", "condacart", "-p", str(conda_env), env=env)  # login node: lock, build
    cli("build", "-e", "condacart", "-p", str(conda_env), "-b", "mm", env=env)
    offline = ["unshare", "--net"]
    times: Dict[str, List[float]] = {}
    for _ in range(repeats):
        for backend, name, path in (("venv", "cartpole", EXAMPLE), ("mm", "condacart", conda_env)):
            start = ["start", name, "-p", str(path), "-b", backend]
            key = f"{backend}, foreground (srun's way)"
            times.setdefault(key, []).append(foreground_start(offline + CLI + start, env))
            key = f"{backend}, start -d"
            times.setdefault(key, []).append(cli(*start, "-d", env=env, prefix=offline))
            cli("stop", name, env=env)
    return times


def foreground_start(command: List[str], env: Dict[str, str]) -> float:
    """Seconds until a foreground `start` prints its ready line; then SIGTERM, as Slurm does."""
    began = time.perf_counter()
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )  # fmt: skip
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - began
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(60)
    if "ready at" not in line:
        raise SystemExit(f"{' '.join(command)} did not get ready: {line!r}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cartpole-envs", type=int, default=16)
    parser.add_argument("--cartpole-steps", type=int, default=2000)
    parser.add_argument("--pong-envs", type=int, default=8)
    parser.add_argument("--pong-steps", type=int, default=150)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pe-mn-"))  # short: node-local sockets live below
    env = dict(os.environ, PORTAL_ENV_STATE_DIR=str(work / "state"))
    env.setdefault("PORTAL_ENV_CACHE_DIR", str(work / "cache"))
    try:
        cli("build", "-e", "cartpole", "-p", str(EXAMPLE), "-b", "venv", env=env)
        cli("build", "-e", "ale", "-b", "venv", env=env)
        rows = vector_table(work, env, args)
        starts = offline_starts(work, env, args.repeats)
    finally:
        subprocess.run(CLI + ["stop", "--all"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print("make_vec steps/s (env steps), servers on Slurm nodes n1, n2; best of", args.repeats)
    print(f"{'env':<14} {'num_envs':>8} {'1 server':>10} {'2 servers':>10} {'2/1':>6}")
    for row in rows:
        ratio = row["both"] / row["one"]
        print(
            f"{row['env']:<14} {row['num_envs']:>8} {row['one']:>10,.0f} "
            f"{row['both']:>10,.0f} {ratio:>6.2f}"
        )
    print(f"\ncompute node (unshare --net): start -d to ready from the cache, {args.repeats} runs")
    print(f"{'start':<32} {'median s':>9} {'min s':>7} {'max s':>7}")
    for what, values in starts.items():
        print(f"{what:<32} {statistics.median(values):9.2f} {min(values):7.2f} {max(values):7.2f}")


if __name__ == "__main__":
    main()
