"""Fixtures: real portal servers in real subprocesses, on fresh ports."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import pytest

from . import wheel_install
from .slurmcluster import SlurmCluster, missing_programs

ROOT = Path(__file__).resolve().parent.parent
SERVER_SCRIPT = ROOT / "tests" / "serve_test_envs.py"
CLI = [sys.executable, "-m", "portal_env.cli"]


def cli(
    *args: str, timeout: float = 600, env: Optional[Dict[str, str]] = None
) -> subprocess.CompletedProcess:
    """Run `portal-env ARGS` as a user would; its exit code and output."""
    return subprocess.run(
        CLI + list(args), capture_output=True, text=True, timeout=timeout, env=env
    )


def _unshare_net_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0


needs_netns = pytest.mark.skipif(
    not _unshare_net_works(), reason="cannot make a network namespace here (unshare --net)"
)


def _unshare_mount_works() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0


needs_mount_namespace = pytest.mark.skipif(
    not _unshare_mount_works(), reason="needs root and unshare --mount"
)


def closed_port() -> int:
    """A loopback port nothing listens on (taken and let go at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def offline_cli(*args: str, env=None, timeout: float = 120) -> subprocess.CompletedProcess:
    """portal-env on a node without network: a new network namespace with only loopback."""
    return subprocess.run(
        ["unshare", "--net"] + CLI + list(args),
        capture_output=True, text=True, env=env, timeout=timeout,
    )  # fmt: skip


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    address: str
    token: str
    log: Path

    def kwargs(self) -> Dict[str, str]:
        return {"address": self.address, "token": self.token}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(
    tmp: Path,
    extra_env: Optional[Dict[str, str]] = None,
    script: Path = SERVER_SCRIPT,
    prefix: Sequence[str] = (),
    python: str = sys.executable,
) -> ServerProcess:
    """Start a test server script (default: the test envs') with python on a free port,
    optionally under a command prefix such as prlimit, and wait until it listens."""
    ready = tmp / f"ready-{secrets.token_hex(4)}"
    log = tmp / f"server-{secrets.token_hex(4)}.log"
    token = secrets.token_hex(16)
    env = dict(os.environ, PORTAL_ENV_PORT="0", PORTAL_ENV_TOKEN=token)
    env["PORTAL_ENV_READY_FILE"] = str(ready)
    env["PORTAL_ENV_STATE_DIR"] = str(tmp / "state")
    env["PORTAL_ENV_SUPERVISED"] = "1"  # this fixture hands out address and token itself
    env.update(extra_env or {})
    with open(log, "w") as out:
        proc = subprocess.Popen([*prefix, python, str(script)], env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"test server did not start:\n{log.read_text()}")
        time.sleep(0.02)
    return ServerProcess(proc, ready.read_text(), token, log)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    handle = start_server(tmp_path)
    yield handle
    handle.stop()


@pytest.fixture(autouse=True)
def private_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep tokens and registry records of a test out of the user's real state dir."""
    monkeypatch.setenv("PORTAL_ENV_STATE_DIR", str(tmp_path / "state"))


# -- portals run by the supervisor/CLI (issue 3) ------------------------------

EXAMPLE_ENV = ROOT / "examples" / "cartpole_env"


@pytest.fixture(scope="session", autouse=True)
def shared_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One runtime cache per test session: the example venv is built once and reused."""
    path = tmp_path_factory.mktemp("portal-env-cache")
    previous = os.environ.get("PORTAL_ENV_CACHE_DIR")
    os.environ["PORTAL_ENV_CACHE_DIR"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("PORTAL_ENV_CACHE_DIR", None)
    else:
        os.environ["PORTAL_ENV_CACHE_DIR"] = previous


@pytest.fixture
def cartpole_dir(tmp_path: Path) -> Path:
    """A private copy of examples/cartpole_env (env_main.py, spec.yml, its lockfile)."""
    import shutil

    target = tmp_path / "cartpole_env"
    shutil.copytree(EXAMPLE_ENV, target)
    return target


def pid_alive(pid: int) -> bool:
    """Whether pid is a running (not zombie) process."""
    from portal_env.serving import registry

    return registry.is_alive(pid)


def wait_gone(pid: int, seconds: float = 10.0) -> bool:
    """Wait until pid is gone; whether it went."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def interrupt_build(command: List[str], started: Path, runtime_dir: Path, wait: float) -> None:
    """Run a build command, press Ctrl-C once its env_setup.py has written started.

    The build must exit 130 and leave no runtime_dir (no half-made runtime).
    """
    import signal

    proc = subprocess.Popen(command, start_new_session=True, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + wait
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists() and runtime_dir.exists()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not runtime_dir.exists()


def _kill(pid: int, group: bool, sig: int = 9) -> None:
    try:
        (os.killpg if group else os.kill)(pid, sig)
    except OSError:
        pass


@pytest.fixture
def reap_portals() -> Iterator[None]:
    """After the test, stop every supervisor and server the test's registry still lists.

    SIGTERM first, so that a supervisor cleans up as on `portal-env stop` (record,
    socket file); SIGKILL whatever is still there after a few seconds.
    """
    import json
    import signal

    yield
    from portal_env.serving import registry

    for path in registry.portals_dir().glob("*.json"):
        record = json.loads(path.read_text())
        supervisor = record.get("supervisor_pid")
        if supervisor not in (None, os.getpid()):
            _kill(supervisor, group=False, sig=signal.SIGTERM)
            if not wait_gone(supervisor, 10):
                _kill(supervisor, group=False)
        if record.get("server_pid"):
            _kill(record["server_pid"], group=True)
        registry.get(record["name"])  # a stale record goes, with its socket file


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A two-node Slurm cluster on 127.0.0.1 (tests/slurmcluster.py), started once per
    session for test_slurm and the docs' examples; skipped only if Slurm is not installed."""
    missing = missing_programs()
    if missing:
        pytest.skip(f"Slurm/munge not installed ({', '.join(missing)}): .ci/run installs them")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def portal_env_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """portal-env's wheel from this checkout's tracked files, built once per session."""
    return wheel_install.build_wheel(tmp_path_factory.mktemp("wheel") / "dist")
