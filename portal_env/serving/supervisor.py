"""Launch a portal server in a runtime, wait until it answers, restart it, stop it.

The supervisor gives each server a fresh token and a private Unix socket (for a
runtime on this host) or `PORTAL_ENV_PORT=0` (the OS picks a free port: no
find-then-bind race), learns the bound address from
the ready file, and reports ready only once the server answers a ping. A
server that exits before that fails the start at once, with its own output.
A server that dies later is restarted with bounded backoff on the same port
(when it is still free) and the same token, so agents can reconnect; after
too many deaths in a window the supervisor gives up. The server's output, and
a line for each supervisor event, go to the portal's log file.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Deque, Optional, Tuple

from .. import config
from ..errors import PortalEnvError, ServerStartError, SupervisorError
from ..portal import protocol, wire
from ..runtimes.base import Runtime, ServerHandle
from . import reaper, registry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    """How patiently the supervisor starts, restarts and stops a server.

    Attributes:
        ready_timeout: Seconds a server may take to answer its first ping.
        stop_grace: Seconds between SIGTERM and SIGKILL when stopping.
        backoff: Delays before successive restarts (the last one repeats).
        max_failures: Deaths within failure_window that make it give up: the
            max_failures-th is not restarted.
        failure_window: Seconds over which deaths are counted.
        host: Interface the server binds, over TCP (e.g. a node's address on a cluster,
            where agents on other nodes connect); None: private to this host (a Unix socket
            for a local runtime, else TCP on loopback).
        token: The token the server expects (e.g. one shared by a fleet of servers);
            None: a fresh random one.
    """

    ready_timeout: float = 120.0
    stop_grace: float = 5.0
    backoff: Tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)  # one per death that is restarted
    max_failures: int = 5
    failure_window: float = 60.0
    host: Optional[str] = None
    token: Optional[str] = dataclasses.field(default=None, repr=False)


class Supervisor:
    """Runs one portal: its registry record, its server and the server's log.

    Use as a context manager: leaving it stops the server and removes the record.
    Call start() and watch() from one thread that outlives the servers: on Linux a
    server is killed when the thread that launched it exits (PR_SET_PDEATHSIG).

    Args:
        name: The portal's name (registry key and log name).
        runtime: A built runtime that launches the server.
        env_dir: The env's directory (recorded for `ps`).
        policy: Timeouts, backoff and bind address.
    """

    def __init__(
        self, name: str, runtime: Runtime, env_dir: Path, policy: Policy = Policy()
    ) -> None:
        self.name = name
        self.runtime = runtime
        self.env_dir = env_dir
        self.policy = policy
        self.token = policy.token or secrets.token_urlsafe(32)
        self.log_path = registry.log_path(name)
        self.ready_file = _ready_file(name, runtime.socket_dir())
        self.handle: Optional[ServerHandle] = None
        self.record: Optional[registry.Record] = None
        self.address: Optional[wire.Address] = None
        self.socket_path = self._socket_path()
        self._log: Optional[IO[bytes]] = None
        self._deaths: Deque[float] = collections.deque()
        self._stopping = False
        self._closed = False
        # Set by a supervisor process that adopted its server's orphans (reaper): they are
        # reaped as they exit (with no init in a container, nobody else would).
        self.reaps_orphans = False

    def start(self) -> registry.Record:
        """Claim the name, launch the server and wait until it answers; the ready record."""
        pid = os.getpid()
        self.record = registry.Record(
            name=self.name,
            backend=self.runtime.backend,
            env_dir=str(self.env_dir),
            token=self.token,
            supervisor_pid=pid,
            supervisor_start=registry.process_start_time(pid),
            log_path=str(self.log_path),
        )
        registry.claim(self.record)
        self._open_log()
        self._launch(port=0)
        return self._publish()

    def watch(self) -> None:
        """Restart the server whenever it dies, until stop() or until giving up."""
        while not self._stopping:
            self._reap()
            code = self.handle.poll() if self.handle is not None else None
            if code is None:
                time.sleep(0.1)
                continue
            self._restart(code)

    def stop(self) -> None:
        """Make watch() return (safe from a signal handler); close() does the stopping."""
        self._stopping = True

    def close(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove the record; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        if self.handle is not None:
            code = self.handle.stop(self.policy.stop_grace)
            self._event(f"server {self.handle.ident} stopped (exit code {code})")
        if self.reaps_orphans:  # what the server's group left, just killed: let it exit
            reaper.reap_until_none(timeout=1.0)
        if self.record is not None:
            registry.release(self.name, self.record.supervisor_pid)
        self.ready_file.unlink(missing_ok=True)
        if self.socket_path:  # left behind if the server was killed
            Path(self.socket_path).unlink(missing_ok=True)
        if self._log is not None:
            self._log.close()

    def _reap(self) -> None:
        if self.reaps_orphans:
            server = self.handle.pid if self.handle is not None else None
            reaper.reap(keep=() if server is None else (server,))

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- launching ---------------------------------------------------------

    def _open_log(self) -> None:
        with config.writing_in(self.log_path.parent, config.STATE_DIR_VAR):
            if self.log_path.exists():
                self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))
            fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._log = os.fdopen(fd, "ab", buffering=0)

    def _event(self, message: str) -> None:
        logger.info("portal %r: %s", self.name, message)
        if self._log is not None and not self._log.closed:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            self._log.write(f"[portal-env {stamp}] {message}\n".encode())

    def _socket_path(self) -> Optional[str]:
        """A private Unix socket for a local server: ~14 us a step faster than TCP."""
        directory = self.runtime.socket_dir() if self.policy.host is None else None
        if directory is None:
            return None
        return str(directory / f"{self.name[: config.SOCKET_NAME_MAX]}-{secrets.token_hex(4)}.sock")

    def _launch(self, port: int) -> None:
        """Start a server and wait until it is ready; ServerStartError if it is not."""
        self.ready_file.unlink(missing_ok=True)
        offset = self.log_path.stat().st_size
        env = {
            config.HOST_VAR: self.policy.host or config.DEFAULT_HOST,
            config.PORT_VAR: str(port),
            config.TOKEN_VAR: self.token,
            config.READY_FILE_VAR: str(self.ready_file),
            config.SOCKET_VAR: self.socket_path or "",
            config.TOKEN_FILE_VAR: "",
            config.SUPERVISED_VAR: "1",
        }
        self._event(f"starting the server ({self.runtime.backend} runtime {self.runtime.location})")
        self.handle = self.runtime.launch(env, self._log)
        try:
            self.address = self._wait_ready(self.handle, offset)
        except BaseException:
            self.handle.stop(self.policy.stop_grace)
            raise
        self._event(f"server {self.handle.ident} ready at {self.address}")

    def _wait_ready(self, handle: ServerHandle, offset: int) -> wire.Address:
        deadline = time.monotonic() + self.policy.ready_timeout
        while time.monotonic() < deadline:
            code = handle.poll()
            if code is not None:
                raise ServerStartError(
                    f"the server of portal {self.name!r} exited with code {code} before it "
                    f"was ready. Its output ({self.log_path}):\n{self._output_since(offset)}"
                )
            address = self._reported_address(handle)
            if address is not None and self._answers(address):
                self.ready_file.unlink(missing_ok=True)  # read: nothing is left if we are killed
                return _reachable(wire.Address.parse(address))
            time.sleep(0.02)
        raise ServerStartError(
            f"the server of portal {self.name!r} did not answer within "
            f"{self.policy.ready_timeout:.0f}s. Last lines of {self.log_path}:\n"
            f"{tail(self.log_path, 30)}"
        )

    def _reported_address(self, handle: ServerHandle) -> Optional[str]:
        """Where the server listens: fixed by the runtime (a container's published port),
        else what the server wrote to its ready file once it was listening."""
        if handle.address is not None:
            return str(handle.address)
        if self.ready_file.exists():
            return self.ready_file.read_text().strip()
        return None

    def _answers(self, text: str) -> bool:
        try:
            channel = wire.Channel.connect(wire.Address.parse(text), self.token, 5.0)
        except (PortalEnvError, ValueError):
            return False
        try:
            channel.send(["ping"])
            return channel.recv() == [protocol.REPLY_OK, "pong"]
        except (PortalEnvError, OSError):
            return False
        finally:
            channel.close()

    def _output_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        lines = [line for line in text.splitlines() if not line.startswith("[portal-env ")]
        return "\n".join(lines[-60:]).rstrip() or "(no output)"

    def _publish(self) -> registry.Record:
        self.record = registry.update(
            self.name,
            os.getpid(),
            address=str(self.address),
            server_pid=self.handle.pid,
            container="" if self.handle.pid else self.handle.ident,
            state=registry.READY,
            restarts=self.record.restarts,
        )
        return self.record

    # -- restarting --------------------------------------------------------

    def _restart(self, code: int) -> None:
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > self.policy.failure_window:
            self._deaths.popleft()
        self.handle.stop(0)  # reap it and anything left in its process group
        if len(self._deaths) >= self.policy.max_failures:
            self._give_up(code)
        delay = self.policy.backoff[min(len(self._deaths), len(self.policy.backoff)) - 1]
        self._event(f"server exited with code {code}; restarting in {delay:g}s")
        self._sleep(delay)
        if self._stopping:
            return
        port = 0
        if self.address is not None and self.address.path is None:
            host = self.policy.host or config.DEFAULT_HOST
            bound = wire.Address(host=host, port=self.address.port)
            port = bound.port if _port_free(bound) else 0
        try:
            self._launch(port)
        except ServerStartError as exc:
            self._event(str(exc).splitlines()[0])
            return  # counted as another death on the next watch() round
        self.record.restarts += 1
        self._publish()

    def _give_up(self, code: int) -> None:
        message = (
            f"the server of portal {self.name!r} died {len(self._deaths)} times within "
            f"{self.policy.failure_window:.0f}s (last exit code {code}); giving up. "
            f"Last lines of {self.log_path}:\n{tail(self.log_path, 30)}"
        )
        self._event("giving up: the server keeps dying")
        raise SupervisorError(message)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(min(0.05, seconds))


def stop_when_closed(sup: Supervisor, fd: int) -> None:
    """Stop sup once the write end of pipe fd closes: its starter ended, however it ended."""

    def wait() -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, 1):
                pass
        sup.stop()

    threading.Thread(target=wait, name="portal-env-lifeline", daemon=True).start()


_STALE_READY_S = 600.0


def _ready_file(name: str, runtime_dir: Optional[Path]) -> Path:
    """Where the server writes its address: node-local (a shared state dir mixes nodes), and
    where the server sees it too (a container runtime sharing /tmp: runtime_dir).

    A supervisor reads and removes the file within milliseconds of the server writing it;
    the files of supervisors killed in between are swept here once they are old."""
    directory = runtime_dir or config.socket_dir() or registry.logs_dir()
    for stale in directory.glob(".*.ready"):
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove
            if time.time() - stale.stat().st_mtime > _STALE_READY_S:
                stale.unlink()
    return directory / f".{name}-{secrets.token_hex(4)}.ready"


def _reachable(address: wire.Address) -> wire.Address:
    """The address agents use: a server bound to every interface is reached by host name."""
    if address.path is None and address.host in ("0.0.0.0", "::"):
        return wire.Address(host=socket.gethostname(), port=address.port)
    return address


def _port_free(address: wire.Address) -> bool:
    """Whether the old port can be bound again (so reconnecting agents find it)."""
    if address.path is not None:
        return False
    with socket.socket(address.family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address.target)
        except OSError:
            return False
    return True


def tail(path: Path, lines: int) -> str:
    """The last lines of a text file ('' if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
