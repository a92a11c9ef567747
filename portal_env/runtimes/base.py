"""The interface every backend implements, and the handle of a launched local server.

A backend turns an env's files into a runtime (`ensure`), then a runtime
launches servers (`launch`) and returns a `ServerHandle`. The supervisor only
ever talks to these three small interfaces, so a container backend fits by
returning a handle that polls and stops a container instead of a process.
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
import signal
import subprocess
from pathlib import Path
from typing import IO, List, Mapping, Optional, Protocol, Sequence, runtime_checkable

from ..portal.parentdeath import die_with_parent
from ..portal.wire import Address
from .catalog import EnvSource

logger = logging.getLogger(__name__)


class Reporter(Protocol):
    """Where a backend reports progress: a transient status and lasting notes."""

    def status(self, message: str) -> None:
        """Show what is happening now (replaced by the next status)."""

    def note(self, message: str) -> None:
        """Tell the user something worth keeping (e.g. a lockfile was written)."""


class LogReporter:
    """A Reporter that logs (the library default; the CLI shows a spinner instead)."""

    def status(self, message: str) -> None:
        logger.info("%s", message)

    def note(self, message: str) -> None:
        logger.warning("%s", message)


@runtime_checkable
class ServerHandle(Protocol):
    """A launched server: a local process, or later a container."""

    @property
    def pid(self) -> Optional[int]:
        """Local process id, if the server is a local process."""

    @property
    def ident(self) -> str:
        """A human-readable id: 'pid 1234', or a container id."""

    @property
    def address(self) -> Optional[Address]:
        """Where the server will listen, if the runtime fixed it (a container's published
        port); None when the server reports it in its ready file."""

    def poll(self) -> Optional[int]:
        """The exit code if the server has exited, else None."""

    def stop(self, grace: float) -> Optional[int]:
        """Ask the server to stop, kill it after grace seconds; returns its exit code."""


@runtime_checkable
class Runtime(Protocol):
    """A built runtime (venv, conda prefix, image) that can launch servers."""

    backend: str
    location: str

    def socket_dir(self) -> Optional[Path]:
        """A private directory of this node where the server can listen on a Unix socket that
        agents here reach (faster than TCP loopback), or None: TCP (a container with a
        filesystem of its own)."""

    def launch(self, env: Mapping[str, str], log: IO[bytes]) -> ServerHandle:
        """Start env_main.py in the runtime with extra environment variables env.

        The server's stdout and stderr go to log.
        """


@runtime_checkable
class Backend(Protocol):
    """Builds runtimes of one kind from an env's files."""

    name: str

    def lock(self, source: EnvSource, reporter: Reporter) -> Path:
        """(Re)write the lockfile of source's spec; returns its path."""

    def ensure(self, source: EnvSource, *, force: bool, reporter: Reporter) -> Runtime:
        """The runtime for source, built (or rebuilt, with force) only if needed."""


class ProcessHandle:
    """A server running as a local process in its own session (process group).

    On Linux the kernel sends it SIGKILL if the supervisor dies (PR_SET_PDEATHSIG),
    so no server outlives a supervisor killed with SIGKILL. macOS has no such
    call: there a server of a SIGKILLed supervisor keeps running until stopped.
    """

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self._stopped = False

    @classmethod
    def spawn(
        cls, command: Sequence[str], env: Mapping[str, str], cwd: Path, log: IO[bytes]
    ) -> ProcessHandle:
        """Start command in a new session with output to log."""
        logger.debug("launching %s (cwd %s)", shlex.join(command), cwd)
        proc = subprocess.Popen(
            list(command),
            env=dict(env),
            cwd=str(cwd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
        )
        return cls(proc)

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid

    @property
    def ident(self) -> str:
        return f"pid {self.proc.pid}"

    @property
    def address(self) -> Optional[Address]:
        return None

    def poll(self) -> Optional[int]:
        return self.proc.poll()

    def stop(self, grace: float) -> Optional[int]:
        """SIGTERM to the process group, SIGKILL after grace seconds; idempotent."""
        if self._stopped:
            return self.proc.wait()
        self._stopped = True
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                logger.warning("server %s ignored SIGTERM for %.0fs; killing it", self.ident, grace)
        _signal_group(self.proc.pid, signal.SIGKILL)  # stragglers the server left behind
        return self.proc.wait()


def child_pids(pid: int) -> List[int]:
    """The pids of process pid's children (Linux /proc; empty elsewhere or once it is gone)."""
    found: List[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as file:
                found += [int(child) for child in file.read().split()]
        except OSError:
            continue
    return found


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass
