"""The portal-env CLI end to end: real supervisors, servers, venvs; a terminal via pexpect."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import List

import pexpect
import pytest

from portal_env import AgentSidePortal
from portal_env.serving import registry

from .conftest import CLI, cli, pid_alive, wait_gone

pytestmark = pytest.mark.usefixtures("reap_portals")
READY = re.compile(r"portal 'mycart' ready at (\S+) \(venv, pid (\d+)\)")


def start_detached(env_dir: Path, name: str = "mycart") -> registry.Record:
    done = cli("start", "-p", str(env_dir), name, "-b", "venv", "-d")
    assert done.returncode == 0, done.stderr
    assert f"portal '{name}' ready at" in done.stdout
    return registry.get(name)


def agent_steps(record: registry.Record) -> None:
    env = AgentSidePortal(record.name, ["CartPole-v1"], address=record.address, token=record.token)
    env.reset(seed=0)
    assert env.step(0)[1] == 1.0
    env.close()


@pytest.mark.slow
def test_foreground_start_ready_line_then_ctrl_c_exits_0_leaving_nothing(cartpole_dir: Path):
    args = CLI[1:] + ["start", "-p", str(cartpole_dir), "mycart", "-b", "venv"]
    child = pexpect.spawn(CLI[0], args, timeout=120, encoding="utf-8")
    try:
        child.expect(READY)
        server_pid = int(child.match.group(2))
        assert "Ctrl-C to stop" in child.readline()
        record = registry.get("mycart")
        assert record.server_pid == server_pid and record.supervisor_pid == child.pid
        agent_steps(record)
        child.sendintr()
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, child.before
    finally:
        child.terminate(force=True)
    assert wait_gone(server_pid, 5) and not pid_alive(child.pid)
    assert registry.get("mycart") is None


@pytest.mark.slow
def test_detached_start_ps_logs_stop(cartpole_dir: Path):
    record = start_detached(cartpole_dir)
    agent_steps(record)
    ps = cli("ps")
    line = next(line for line in ps.stdout.splitlines() if line.startswith("mycart"))
    assert line.split()[:4] == ["mycart", "venv", record.address, str(record.server_pid)]
    assert line.split()[-2:] == ["0", "ready"]
    assert "portal-env serving on" in cli("logs", "mycart").stdout
    follow = pexpect.spawn(CLI[0], CLI[1:] + ["logs", "mycart", "-f"], timeout=30, encoding="utf-8")
    again = cli("start", "-p", str(cartpole_dir), "mycart", "-b", "venv", "-d")
    assert again.returncode == 1 and "already running" in again.stderr
    follow.expect("serving on")
    stopped = cli("stop", "mycart")
    assert stopped.returncode == 0 and "stopped mycart" in stopped.stdout
    follow.expect(r"stopped \(exit code 0\)")  # -f shows what is appended
    follow.sendintr()
    follow.expect(pexpect.EOF)
    follow.close()
    assert follow.exitstatus == 0
    assert not pid_alive(record.supervisor_pid) and wait_gone(record.server_pid, 5)
    assert cli("ps").stdout.strip().splitlines()[1:] == []


@pytest.mark.slow
def test_stop_all_stops_two_portals_of_one_env(cartpole_dir: Path):
    records = [start_detached(cartpole_dir, name) for name in ("cart-a", "cart-b")]
    assert records[0].address != records[1].address
    for record in records:
        agent_steps(record)
    assert cli("stop", "--all").returncode == 0
    for record in records:
        assert wait_gone(record.supervisor_pid, 5) and wait_gone(record.server_pid, 5)


@pytest.mark.slow
def test_server_dies_with_a_sigkilled_supervisor(cartpole_dir: Path):
    record = start_detached(cartpole_dir)
    os.kill(record.supervisor_pid, signal.SIGKILL)
    assert wait_gone(record.server_pid, 5)
    assert record.address.startswith("unix:")  # local runtimes serve on a private socket
    socket_file = Path(record.address[len("unix:") :])
    assert socket_file.exists()  # nobody was left to remove it...
    assert registry.get("mycart") is None  # ...until the stale record is removed on read
    assert not socket_file.exists()


@pytest.mark.slow
def test_sigkilled_server_is_restarted_and_the_registry_follows(cartpole_dir: Path):
    first = start_detached(cartpole_dir)
    os.kill(first.server_pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while registry.get("mycart").restarts < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    second = registry.get("mycart")
    assert second.restarts == 1 and second.server_pid != first.server_pid
    assert second.address == first.address and not pid_alive(first.server_pid)
    agent_steps(second)
    assert "restarting in 0.5s" in cli("logs", "mycart").stdout
    assert cli("stop", "mycart").returncode == 0 and wait_gone(second.server_pid, 5)


@pytest.mark.slow
def test_agent_finds_portal_by_name(cartpole_dir: Path):
    start_detached(cartpole_dir)
    env = AgentSidePortal("mycart", ["CartPole-v1"])
    env.reset(seed=0)
    assert env.step(0)[1] == 1.0
    env.close()


@pytest.mark.timeout(300)  # the exit is noticed; the ready timeout would hang past this
def test_broken_env_main_fails_fast_with_its_traceback(cartpole_dir: Path):
    (cartpole_dir / "env_main.py").write_text("import no_such_module_xyz\n")
    args = ["-p", str(cartpole_dir), "mycart", "-b", "venv", "-d", "--ready-timeout", "3600"]
    done = cli("start", *args)
    assert done.returncode == 1
    assert "Error: " in done.stderr and "before it was ready" in done.stderr
    assert "No module named 'no_such_module_xyz'" in done.stderr
    assert "portal-env lock" not in done.stderr and registry.get("mycart") is None


def test_uninstallable_spec_names_the_package(cartpole_dir: Path):
    (cartpole_dir / "spec.venv.lock.txt").unlink()
    (cartpole_dir / "spec.yml").write_text(
        "dependencies:\n  - python=3.11\n  - pip:\n      - portal-env-no-such-package-xyz\n"
    )
    done = cli("build", "-e", "mycart", "-p", str(cartpole_dir), "-b", "venv")
    assert done.returncode == 1, done.stderr
    assert "Error: cannot lock" in done.stderr and "portal-env-no-such-package-xyz" in done.stderr


def test_build_is_cached_and_f_rebuilds(cartpole_dir: Path):
    args = ["build", "mycart", "-p", str(cartpole_dir), "-b", "venv"]
    first = cli(*args)
    assert first.returncode == 0 and "venv runtime ready at" in first.stdout
    cached = cli(*args)
    assert cached.returncode == 0 and "venv runtime ready at" in cached.stdout, cached.stderr
    assert "built the venv" not in cached.stderr
    seed_form = ["build", "-e", "mycart", "-p", str(cartpole_dir), "-b", "venv"]  # the seed's -e
    forced = cli(*seed_form, "-f")
    assert forced.returncode == 0 and "built the venv" in forced.stderr, forced.stderr


def test_lock_without_b_relocks_the_lockfiles_the_env_has(cartpole_dir: Path):
    spec = cartpole_dir / "spec.yml"
    spec.write_text(spec.read_text() + "\n# edited\n")
    stale = cli("start", "mycart", "-p", str(cartpole_dir), "-b", "venv", "-d")
    assert stale.returncode == 1 and "portal-env lock mycart" in stale.stderr
    done = cli("lock", "mycart", "-p", str(cartpole_dir))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"locked mycart: {cartpole_dir / 'spec.venv.lock.txt'}"
    assert not (cartpole_dir / "spec.conda-lock.yml").exists()  # no conda lock for a venv user


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["start", "atri", "-b", "venv"], 1, "Error: Unknown env 'atri'; known: "),
        (["start", "mycart", "-p", "{dir}"], 1, "cannot reach the Docker daemon at unix:///no"),
        (["lock", "mycart", "-p", "{dir}", "--platform", "nope-64"], 1, "unknown platform"),
        (["start", "mycart", "-b", "conda"], 2, "Invalid value for '-b'"),
        (["stop"], 2, "give a portal NAME or --all"),
        (["stop", "ghost"], 1, "no portal named 'ghost' is running"),
        (["logs", "ghost"], 1, "no log for portal 'ghost'"),
        (["build", "-e", "mycart", "-p", "{empty}", "-b", "venv"], 1, "has no env_main.py"),
        (["build", "mycart", "-e", "mycart"], 2, "give the env as NAME or as -e NAME"),
        (["start", "craftium", "-b", "venv"], 1, "env 'craftium' cannot be served with -b venv"),
        (
            ["build", "mycart", "-p", "{dir}", "-b", "venv", "--base-image", "x"],
            1,
            "--base-image does not apply to -b venv",
        ),
    ],
)
def test_errors_and_exit_codes(
    cartpole_dir: Path, tmp_path: Path, args: List[str], code: int, message: str
):
    (tmp_path / "empty").mkdir()
    args = [a.format(dir=cartpole_dir, empty=tmp_path / "empty") for a in args]
    env = dict(os.environ, DOCKER_HOST="unix:///nonexistent/docker.sock")
    env.pop("PORTAL_ENV_BACKEND", None)
    done = subprocess.run(CLI + args, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == code and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_help_shows_examples():
    for command in ("start", "build", "lock", "ps", "logs", "stop"):
        assert "Example: portal-env" in cli(command, "--help").stdout
