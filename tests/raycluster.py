"""A real two-node Ray cluster on this machine (a head and a second raylet), for tests.

Run it only inside a network namespace that has nothing but loopback (`unshare --net`):
outside one, Ray advertises the machine's other addresses even when told 127.0.0.1.
Each `ray start --block` is a child in its own process group, ended by that group
(never `ray stop`, which ends every Ray process on the machine).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, List, Optional

PORT = 6390
ADDRESS = f"127.0.0.1:{PORT}"
COMMON = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=100000000"]


def ray_bin() -> str:
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


def only_loopback() -> bool:
    """Whether this process sees no network interface but loopback."""
    return all(name == "lo" for _, name in socket.if_nameindex())


class RayCluster:
    """Head and worker raylets; start() waits until both nodes are alive and connects."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.temp_dir = Path("/tmp") / f"rt-{secrets.token_hex(3)}"  # Ray's socket paths are long
        self.procs: List[subprocess.Popen] = []
        self._logs: List[IO[bytes]] = []

    def start(self, timeout: float = 240.0) -> None:
        import ray

        self._spawn("head", ["--head", f"--port={PORT}", "--include-dashboard=false",
                             f"--temp-dir={self.temp_dir}"])  # fmt: skip
        deadline = time.monotonic() + timeout
        self._wait(lambda: _connects(PORT), deadline, "the head's GCS port")
        while True:  # before the second raylet starts: this driver attaches to the head's
            try:
                ray.init(address=ADDRESS, logging_level="WARNING", log_to_driver=False)
                break
            except Exception:  # noqa: BLE001 - the head is still starting; retried until deadline
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self._spawn("worker", [f"--address={ADDRESS}"])
        self._wait(lambda: len(self.alive_nodes()) >= 2, deadline, "two alive nodes")

    def alive_nodes(self) -> list:
        import ray

        return [n for n in ray.nodes() if n["Alive"]]

    def stop_worker(self) -> None:
        """End the second raylet's process group (its node dies)."""
        _end_group(self.procs[1])

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        for proc in reversed(self.procs):
            _end_group(proc)
        for log in self._logs:
            log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _spawn(self, role: str, args: List[str]) -> None:
        log = open(self.log_dir / f"ray-{role}.log", "wb")  # noqa: SIM115 - closed in close()
        self._logs.append(log)
        command = [ray_bin(), "start", "--block", *COMMON, *args]
        self.procs.append(subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True))

    def _wait(self, ready, deadline: float, what: str) -> None:
        while not ready():
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"ray start exited ({proc.args}); logs in {self.log_dir}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {what} in time; logs in {self.log_dir}")
            time.sleep(0.3)


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True
    except OSError:
        return False


def _end_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        _signal_group(proc.pid, signal.SIGKILL)  # its children may outlive it
        return
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def token_env(token: Optional[str] = None) -> dict:
    """Ray's token auth for a multi-node cluster (every Ray process needs it)."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token or secrets.token_hex(16)}
