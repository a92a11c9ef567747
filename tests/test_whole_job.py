"""The whole job inside one container, as an unprivileged user, with nothing from the host
but the container: the job image of tests/jobimage.py (the debootstrap base, this
portal-env, a wheelhouse and a local conda channel) running tests/whole_job.py.

- In Docker: no Docker socket inside, uid 4242 (no passwd entry), a read-only root
  filesystem with a tmpfs on /tmp (exec: the runtimes built there hold shared libraries),
  `--shm-size=64m`, a $HOME that cannot be written, no $XDG_RUNTIME_DIR, and no network
  at all (`--network none`: PORTAL_ENV_OFFLINE=0 says the local wheelhouse and channel
  may be built from), with a shell as PID 1 (no init); and again with the supervisor
  itself as PID 1 (`docker run IMAGE portal-env start ...`).
- Under ch-run, as uid 4242: the same job, with the host's network and a private /tmp.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

from . import dockerhost, jobimage

UID = 4242
JOB = f"{jobimage.TEST_ROOT}/whole_job.py"
# The same confinement for every container here (see the module's doc).
CONTAINER = dict(
    user=f"{UID}:{UID}",
    read_only=True,
    tmpfs={"/tmp": "rw,exec,nosuid,nodev,size=2g"},
    shm_size="64m",
    network_mode="none",
    environment={"PORTAL_ENV_OFFLINE": "0"},
)


def parse_report(output: str) -> Dict[str, Any]:
    start = output.find("{\n")
    assert start >= 0, output[-4000:]
    return json.loads(output[start : output.rfind("}") + 1])


def assert_nothing_left(report: Dict[str, Any]) -> None:
    assert report["left"] == {"running": [], "zombies": []}, report["left"]
    assert report["sockets left"] == []


@pytest.fixture(scope="module")
def image() -> str:
    return jobimage.docker_image()


@pytest.fixture
def containers() -> Iterator[list]:
    made: list = []
    yield made
    for container in made:
        container.remove(force=True)


@pytest.mark.docker
def test_whole_job_in_a_docker_container(image: str, containers: list):
    client = dockerhost.client()
    # sh stays PID 1 (it does not exec the last command of a list): no init in the container
    command = ["sh", "-c", f"python3 {JOB}; status=$?; exit $status"]
    container = client.containers.run(image, command, detach=True, **CONTAINER)
    containers.append(container)
    code = container.wait(timeout=1200)["StatusCode"]
    output = container.logs().decode(errors="replace")
    assert code == 0, output[-6000:]
    report = parse_report(output)
    private = f"/tmp/portal-env-{UID}"  # $HOME is read-only, $XDG_RUNTIME_DIR unset
    assert report["uid"] == UID
    assert report["state dir"] == f"{private}/state" and report["cache dir"] == f"{private}/cache"
    assert report["socket dir"] == private
    assert report["big observations: agents using shared memory"] == 1  # 2 x 48 MB > 64 MB
    error = report["-b docker error"]
    assert "cannot reach the Docker daemon" in error and "-b mm" in error and "-b venv" in error
    assert report["stopped"] == ["stopped", "bigobs", "stopped", "cart", "stopped", "condacart"]
    assert_nothing_left(report)
    print(json.dumps(report, indent=1))  # start times and the docker error, for the record


PROBE = """
import json, os
states = {}
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            with open(f"/proc/{pid}/stat") as f:
                states[pid] = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            pass
print(json.dumps(states))
"""


def exec_json(container: Any, code: str) -> Any:
    result = container.exec_run(["python3", "-c", code], user=f"{UID}:{UID}")
    assert result.exit_code == 0, result.output.decode()[-3000:]
    return json.loads(result.output.decode().strip().splitlines()[-1])


@pytest.mark.docker
def test_supervisor_as_pid_1_restarts_reaps_and_stops_on_docker_stop(image: str, containers: list):
    client = dockerhost.client()
    env_dir = f"{jobimage.TEST_ROOT}/orphans"  # its server leaves an orphan that exits in 1 s
    command = ["portal-env", "start", "orphans", "-p", env_dir, "-b", "venv"]
    container = client.containers.run(image, command, detach=True, **CONTAINER)
    containers.append(container)
    deadline = time.monotonic() + 600
    while b"ready at" not in container.logs() and time.monotonic() < deadline:
        container.reload()
        assert container.status == "running", container.logs().decode()[-4000:]
        time.sleep(0.5)
    record = (
        "import json; from portal_env.serving import registry\n"
        "r = registry.get('orphans')\n"
        "print(json.dumps([r.supervisor_pid, r.server_pid, r.restarts, r.state]))"
    )
    step = (
        "from portal_env import AgentSidePortal\n"
        "with AgentSidePortal('orphans', ['CartPole-v1']) as env:\n"
        "    env.reset(seed=0); print(env.step(0)[1])"
    )
    supervisor, server, restarts, _ = exec_json(container, record)
    assert (supervisor, restarts) == (1, 0)  # the supervisor is PID 1
    assert exec_json(container, step) == 1.0  # an agent by name, from another process
    container.exec_run(["python3", "-c", f"import os; os.kill({server}, 9)"], user=f"{UID}:{UID}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        _, new_server, restarts, state = exec_json(container, record)
        if restarts == 1 and state == "ready":
            break
        time.sleep(0.5)
    assert restarts == 1 and new_server != server
    assert exec_json(container, step) == 1.0
    time.sleep(2.5)  # the orphans of both servers have exited by now
    states = exec_json(container, PROBE)
    assert [pid for pid, state in states.items() if state == "Z"] == [], states
    container.stop(timeout=30)  # SIGTERM to PID 1: the supervisor
    container.reload()
    output = container.logs().decode(errors="replace")
    assert container.attrs["State"]["ExitCode"] == 0, output[-4000:]
    assert "stopped portal 'orphans'" in output


@pytest.fixture
def private_tmp() -> Iterator[Path]:
    """A /tmp for the job under ch-run (ch-run binds $TMPDIR there), owned by the job's uid."""
    path = Path(tempfile.mkdtemp(prefix="portal-env-test-chjob-", dir="/tmp"))
    os.chown(path, UID, UID)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.charliecloud
@pytest.mark.skipif(shutil.which("ch-run") is None, reason="Charliecloud's ch-run is missing")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is missing")
def test_whole_job_under_ch_run_as_an_unprivileged_user(private_tmp: Path):
    directory = jobimage.image_dir()
    # The cached image sits under root's private home: a view of it where uid 4242 can
    # reach it, mounted in a namespace of this test's own.
    view = Path(tempfile.mkdtemp(prefix="portal-env-test-chview-", dir="/tmp"))
    view.chmod(0o755)
    env = dict(jobimage.JOB_ENV, USER="job", TMPDIR=str(private_tmp))
    shell = (
        f'mount --bind "{directory}" "{view}" && exec setpriv --reuid {UID} --regid {UID} '
        f'--clear-groups ch-run "{view}" -- python3 {JOB}'
    )
    try:
        done = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", shell],
            capture_output=True, text=True, env=env, timeout=1800,
        )  # fmt: skip
    finally:
        view.rmdir()
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    report = parse_report(done.stdout)
    assert report["uid"] == UID
    assert report["state dir"] == f"/tmp/portal-env-{UID}/state"  # the job's private /tmp
    assert "cannot reach the Docker daemon" in report["-b docker error"]
    assert_nothing_left(report)
    print(json.dumps(report, indent=1))
