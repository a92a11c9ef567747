"""Fixtures: real portal servers in real subprocesses, on fresh ports."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVER_SCRIPT = ROOT / "tests" / "serve_test_envs.py"


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


def start_server(tmp: Path, extra_env: Optional[Dict[str, str]] = None) -> ServerProcess:
    """Start the test-env server on a free port and wait until it listens."""
    ready = tmp / f"ready-{secrets.token_hex(4)}"
    log = tmp / f"server-{secrets.token_hex(4)}.log"
    token = secrets.token_hex(16)
    env = dict(os.environ, PORTAL_ENV_PORT="0", PORTAL_ENV_TOKEN=token)
    env["PORTAL_ENV_READY_FILE"] = str(ready)
    env["PORTAL_ENV_STATE_DIR"] = str(tmp / "state")
    env.update(extra_env or {})
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT)], env=env, stdout=out, stderr=out
        )
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
