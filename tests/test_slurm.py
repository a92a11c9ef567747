"""portal-env on a real two-node Slurm cluster (tests/slurmcluster.py): a server per node
from one shared cache, one vector env over both, scancel, a killed server, two nodes
building one runtime at once.

The two "nodes" are two slurmd daemons on this machine. What makes them nodes for
portal-env: each job task sees its own $SLURMD_NODENAME (its records' node) and gets its
own node-local runtime dir (sockets) below RUN_BASE, while the cache, the state dir (as a
shared home would be) and the job's registry dir are shared by both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from . import test_conda
from .conftest import pid_alive, wait_gone
from .slurmcluster import SlurmCluster

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]

# the conda tests' local channel and locked CartPole env (fixtures)
channel, locked_template, env_dir = (
    test_conda.channel,
    test_conda.locked_template,
    test_conda.env_dir,
)

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@pytest.fixture
def job(slurm: SlurmCluster, tmp_path: Path, cartpole_dir: Path) -> Iterator[Job]:
    handle = Job(slurm, tmp_path, cartpole_dir)
    yield handle
    handle.cleanup()


class Job:
    """One sbatch job's files: the script, the shared dirs, the node-local run dirs."""

    def __init__(self, slurm: SlurmCluster, tmp: Path, env_dir: Path) -> None:
        self.slurm = slurm
        self.tmp = tmp
        self.env_dir = env_dir
        self.job_base = tmp / "jobs"  # the job-scoped registry goes below (shared)
        # node-local sockets: short, like /tmp or $XDG_RUNTIME_DIR on a real node
        self.run_base = Path(tempfile.mkdtemp(prefix="pe-slurm-"))
        self.out = tmp / "job.out"
        self.result = tmp / "result.json"
        self.job_id = ""

    def env(self, **extra: str) -> Dict[str, str]:
        env = dict(os.environ, **self.slurm.env())
        # the learner scripts import the tests' helpers (tests.test_agent) from this checkout
        path = [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(path)
        env.update(JOB_BASE=str(self.job_base), RUN_BASE=str(self.run_base))
        env.update(ENV_DIR=str(self.env_dir), RESULT=str(self.result), PYTHON=PYTHON)
        env.update(extra)
        return env

    def submit(self, body: str, nodes: int = 2, **extra: str) -> str:
        script = self.tmp / "job.sh"
        script.write_text(PREAMBLE.format(nodes=nodes, out=self.out) + textwrap.dedent(body))
        done = self.slurm.run(["sbatch", "--parsable", str(script)], env=self.env(**extra))
        assert done.returncode == 0, done.stderr
        self.job_id = done.stdout.strip().split(";")[0]
        return self.job_id

    def running(self) -> bool:
        done = self.slurm.run(["squeue", "-h", "-j", self.job_id, "-o", "%T"])
        return bool(done.stdout.strip())

    def wait(self, seconds: float = 240) -> str:
        deadline = time.monotonic() + seconds
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not self.running(), f"job {self.job_id} still running:\n{self.output()}"
        return self.output()

    def output(self) -> str:
        return self.out.read_text() if self.out.exists() else "(no output yet)"

    def registry_dir(self) -> Path:
        return self.job_base / f"job-{self.job_id}" / "registry"

    def records(self) -> List[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.registry_dir().glob("*.json"))]

    def wait_records(self, count: int, seconds: float = 120) -> List[dict]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready = [r for r in self.records() if r["state"] == "ready"]
            if len(ready) >= count:
                return ready
            assert self.running(), f"job ended early:\n{self.output()}"
            time.sleep(0.1)
        raise AssertionError(f"no {count} ready records in time:\n{self.output()}")

    def sockets(self) -> List[Path]:
        return sorted(self.run_base.glob("*/*.sock"))

    def cleanup(self) -> None:
        if self.job_id and self.running():
            self.slurm.run(["scancel", self.job_id])
        shutil.rmtree(self.run_base, ignore_errors=True)


PREAMBLE = """#!/bin/bash
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --output={out}
#SBATCH --time=10
set -euo pipefail
export PORTAL_ENV_REGISTRY_DIR="$JOB_BASE/job-$SLURM_JOB_ID/registry"
"""

# One server per node (foreground supervisor, one srun task per node); its node-local
# runtime dir is named after the node, as $TMPDIR or $XDG_RUNTIME_DIR would be.
SERVERS = """
srun --nodes=$SLURM_JOB_NUM_NODES --ntasks-per-node=1 --label bash -c \\
    'export PORTAL_ENV_RUNTIME_DIR=$RUN_BASE/$SLURMD_NODENAME;
     exec $PYTHON -m portal_env.cli start mycart -p $ENV_DIR -b ${{BACKEND:-venv}} {host}' &
"""

LEARNER = """
import json, os, sys, time
import numpy as np
from gymnasium.vector import SyncVectorEnv
import gymnasium
from portal_env.portal.vector import multiserver
from portal_env.serving import registry
from tests.test_agent import assert_identical

def wait_servers(n):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = registry.lookup_all("mycart")
        if len(found) >= n:
            return found
        time.sleep(0.1)
    sys.exit("servers not ready")

def trajectory(vec, seed, steps):
    vec.action_space.seed(seed)
    out = [vec.reset(seed=seed)]
    for _ in range(steps):
        out.append(vec.step(vec.action_space.sample()))
    return out
"""


def _learner(tmp: Path, body: str) -> Path:
    path = tmp / "learner.py"
    path.write_text(LEARNER + textwrap.dedent(body))
    return path


def _gone(record: dict) -> bool:
    return wait_gone(record["supervisor_pid"], 20) and wait_gone(record["server_pid"], 20)


def test_cluster_runs_jobs_on_both_nodes(slurm: SlurmCluster):
    done = slurm.run(["srun", "-N2", "--ntasks-per-node=1", "printenv", "SLURMD_NODENAME"])
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == ["n1", "n2"]


def test_job_learner_steps_one_vector_env_over_servers_on_both_nodes(job: Job):
    subprocess.run(  # on the login node, with network: build into the shared cache
        [PYTHON, "-m", "portal_env.cli", "build", "-e", "mycart", "-p", str(job.env_dir)]
        + ["-b", "venv"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    learner = _learner(
        job.tmp,
        """
        # as in the README's job: wait for a server on each of the job's nodes
        nodes = int(os.environ["SLURM_JOB_NUM_NODES"])
        vec = multiserver.make_vec("mycart", 8, ["CartPole-v1"], min_servers=nodes, timeout=120)
        servers = registry.lookup_all("mycart")
        local = SyncVectorEnv([lambda: gymnasium.make("CartPole-v1") for _ in range(8)])
        got, expected = trajectory(vec, 3, 300), trajectory(local, 3, 300)
        assert_identical(got, expected)
        result = dict(
            nodes=[e.node for e in vec.endpoints], sizes=vec.sizes,
            learner=os.environ["SLURMD_NODENAME"], records=[r.__dict__ for r in servers],
            identical=True,
            resets=int(sum(s[2].sum() + s[3].sum() for s in expected[1:])),
        )
        vec.close()
        json.dump(result, open(os.environ["RESULT"], "w"))
        """,
    )
    job.submit(SERVERS.format(host="--host 127.0.0.1") + f"cd {ROOT} && $PYTHON {learner}\n")
    output = job.wait()  # the end of the job SIGTERMs the servers
    result = json.loads(job.result.read_text())
    assert result["identical"] and result["resets"] > 0, output
    assert result["nodes"] == ["n1", "n2"] and result["sizes"] == [4, 4]
    assert result["learner"] == "n1"  # the batch script runs on the job's first node
    for record in result["records"]:
        assert record["address"].startswith("127.0.0.1:")  # --host: TCP, a free port
        assert _gone(record), output
    assert job.records() == [], "a record outlived its job"
    assert job.sockets() == []


def test_scancel_leaves_no_server_socket_or_record(job: Job):
    job.submit(SERVERS.format(host="") + "wait\n")
    records = job.wait_records(2)
    assert sorted(r["node"] for r in records) == ["n1", "n2"]
    for record in records:  # each node's Unix socket in its own node-local dir
        path = record["address"][len("unix:") :]
        assert path.startswith(f"{job.run_base}/{record['node']}/") and Path(path).exists()
        assert pid_alive(record["server_pid"])
    assert job.slurm.run(["scancel", job.job_id]).returncode == 0
    job.wait(60)
    for record in records:
        assert _gone(record), job.output()
    assert job.sockets() == [] and job.records() == []
    assert not list(job.run_base.glob("*/.*.ready"))


def test_killed_server_restarts_on_its_node_and_the_lost_step_is_not_replayed(job: Job):
    learner = _learner(
        job.tmp,
        """
        from portal_env.errors import PortalConnectionError
        servers = wait_servers(2)
        vec = multiserver.make_vec("mycart", num_envs=4, env_args=["CartPole-v1"])
        vec.reset(seed=0)
        for _ in range(5):
            vec.step(vec.action_space.sample())
        (n2,) = [r for r in servers if r.node == "n2"]
        os.kill(n2.server_pid, 9)
        errors = []
        for _ in range(2):  # the lost step, then any step until reset: never resent
            try:
                vec.step(vec.action_space.sample())
            except PortalConnectionError as exc:
                errors.append(str(exc))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            again = [r for r in registry.lookup_all("mycart") if r.node == "n2"]
            if again and again[0].restarts >= 1:
                break
            time.sleep(0.1)
        # reset reconnects; from there the run equals a fresh SyncVectorEnv's step for step,
        # so nothing of the lost step was resent to the restarted server
        local = SyncVectorEnv([lambda: gymnasium.make("CartPole-v1") for _ in range(4)])
        assert_identical(trajectory(vec, 0, 60), trajectory(local, 0, 60))
        json.dump(dict(errors=errors, before=n2.__dict__, after=again[0].__dict__,
                       records=[r.__dict__ for r in registry.lookup_all("mycart")]),
                  open(os.environ["RESULT"], "w"))
        vec.close()
        """,
    )
    job.submit(SERVERS.format(host="--host 127.0.0.1") + f"cd {ROOT} && $PYTHON {learner}\nwait\n")
    deadline = time.monotonic() + 240
    while not job.result.exists() and time.monotonic() < deadline and job.running():
        time.sleep(0.2)
    assert job.result.exists(), job.output()
    result = json.loads(job.result.read_text())
    assert len(result["errors"]) == 2
    assert "(node n2), envs 2-3" in result["errors"][0] and "not resent" in result["errors"][0]
    before, after = result["before"], result["after"]
    assert after["node"] == "n2" and after["restarts"] == 1
    assert after["supervisor_pid"] == before["supervisor_pid"]  # restarted there, by its own
    assert after["server_pid"] != before["server_pid"]
    job.slurm.run(["scancel", job.job_id])
    job.wait(60)
    for record in result["records"]:
        assert _gone(record), job.output()
    assert job.records() == []


def test_two_nodes_start_one_env_at_once_on_an_empty_shared_cache(job: Job, tmp_path: Path):
    cache = tmp_path / "empty-shared-cache"
    job.submit(SERVERS.format(host="--host 127.0.0.1") + "wait\n", PORTAL_ENV_CACHE_DIR=str(cache))
    records = job.wait_records(2, seconds=300)
    assert sorted(r["node"] for r in records) == ["n1", "n2"]
    assert len(list((cache / "venv").glob("*/.portal-env-complete"))) == 1
    job.slurm.run(["scancel", job.job_id])
    output = job.wait(60)
    assert output.count("built the venv for mycart") == 1, output  # one built, one waited
    assert job.records() == []


@pytest.mark.conda
def test_job_serves_mm_offline_from_the_shared_cache_on_both_nodes(
    slurm: SlurmCluster, tmp_path: Path, env_dir: Path
):
    built = subprocess.run(  # login node: the prefix from the local conda channel
        [PYTHON, "-m", "portal_env.cli", "build", "-e", "mycart", "-p", str(env_dir), "-b", "mm"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    job = Job(slurm, tmp_path, env_dir)
    try:
        learner = _learner(
            job.tmp,
            """
            vec = multiserver.make_vec("mycart", 6, ["CartPole-v1"], min_servers=2, timeout=120)
            local = SyncVectorEnv([lambda: gymnasium.make("CartPole-v1") for _ in range(6)])
            assert_identical(trajectory(vec, 5, 100), trajectory(local, 5, 100))
            json.dump(dict(nodes=[e.node for e in vec.endpoints],
                           backends=[r.backend for r in registry.lookup_all("mycart")]),
                      open(os.environ["RESULT"], "w"))
            vec.close()
            """,
        )
        job.submit(
            SERVERS.format(host="--host 127.0.0.1") + f"cd {ROOT} && $PYTHON {learner}\n",
            BACKEND="mm",
            PORTAL_ENV_OFFLINE="1",  # compute nodes: a cache miss would fail, not build
        )
        output = job.wait()
        result = json.loads(job.result.read_text())
        assert result == {"nodes": ["n1", "n2"], "backends": ["micromamba"] * 2}, output
        assert "built the" not in output and job.records() == []
    finally:
        job.cleanup()
