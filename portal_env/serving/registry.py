"""Running portals: one JSON record per portal and node in a private directory.

Records live in `<registry dir>/<name>@<node>.json` (directory 0700, files 0600;
`config.registry_dir()`: the state dir's `portals/`, or $PORTAL_ENV_REGISTRY_DIR,
which a cluster job points at a directory every node sees) and are written
atomically. Claiming and removing hold a lock file, so two `start`s of one name on
one node cannot both win; each node of a job serves the name under its own record.

Liveness: a record of this node whose supervisor is gone (its pid dead, or reused
by another process: the start time recorded from /proc differs) is stale and is
removed when read. A record of another node cannot be judged by pid: its server is
asked (an authenticated ping, short timeout). It is removed only when something
else answers at its address ("not me": another token, or not a portal); when
nothing answers (refused, unreachable, a Unix socket of another node) it is kept
but not used, since its server may be restarting; its own node removes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List, Optional

from .. import config
from ..errors import AlreadyRunningError, RegistryError
from . import liveness

logger = logging.getLogger(__name__)

STARTING, READY = "starting", "ready"
# What a portal may be called: a record's file name, so no path separators or leading dot.


@dataclass
class Record:
    """One running portal.

    Attributes:
        name: The portal's name (what agents pass as env_name).
        backend: Backend that built its runtime, e.g. "venv".
        env_dir: The env's directory.
        address: Where the server listens ("" until it is ready).
        token: The server's token.
        supervisor_pid: Pid of the supervising `portal-env start` process.
        supervisor_start: That process's start time (from /proc; "" where unknown).
        server_pid: Pid of the server (None for a server that is not a local process).
        container: Name of the server's container ("" for a local process).
        log_path: The server's log file.
        started_at: When the portal was started (seconds since the epoch).
        restarts: How many times the supervisor restarted the server.
        state: "starting" or "ready".
        node: The node it runs on (`config.node_name()`; "" in records of old versions).
    """

    name: str
    backend: str
    env_dir: str
    token: str
    supervisor_pid: int
    log_path: str
    address: str = ""
    supervisor_start: str = ""
    server_pid: Optional[int] = None
    container: str = ""
    started_at: float = dataclasses.field(default_factory=time.time)
    restarts: int = 0
    state: str = STARTING
    node: str = ""

    @classmethod
    def from_json(cls, data: Any, path: Path) -> Record:
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or not fields >= set(data):
            raise RegistryError(f"{path} is not a portal-env registry record; delete it")
        return cls(**data)


def portals_dir() -> Path:
    """The directory of records (created 0700)."""
    return config.registry_dir()


def logs_dir() -> Path:
    """The directory of server logs (created 0700)."""
    path = config.state_dir() / "logs"
    with config.writing_in(path, config.STATE_DIR_VAR):
        path.mkdir(mode=0o700, exist_ok=True)
    return path


def log_path(name: str) -> Path:
    """The log file of portal name on this node (a shared home must not mix nodes' logs)."""
    return logs_dir() / f"{name}@{config.node_name()}.log"


def check_name(name: str) -> str:
    """name, if it can name a portal (letters, digits, '.', '_', '-'); else RegistryError."""
    if not isinstance(name, str) or not config.NAME_PATTERN.match(name):
        raise RegistryError(
            f"{name!r} is not a portal name: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (pass address=... to reach a server by address)"
        )
    return name


def _record_path(name: str, node: Optional[str] = None) -> Path:
    return portals_dir() / f"{check_name(name)}@{node or config.node_name()}.json"


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """Hold the registry's lock (for read-check-write sequences)."""
    import fcntl

    fd = os.open(portals_dir() / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _proc_stat(pid: int) -> List[str]:
    """Fields of /proc/pid/stat after the (comm) field; [] where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return stat.rsplit(")", 1)[1].split()


def process_start_time(pid: int) -> str:
    """The start time of process pid from /proc ('' where unknown or not running)."""
    fields = _proc_stat(pid)
    return fields[19] if len(fields) > 19 else ""  # field 22 of stat(5)


def is_alive(pid: int, start_time: str = "") -> bool:
    """Whether pid runs and, if start_time is known, is the same process as recorded."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: ours is gone, its pid reused
        return False
    fields = _proc_stat(pid)
    if fields and fields[0] in ("Z", "X"):  # exited, not yet reaped by its parent
        return False
    return not start_time or not fields or fields[19] == start_time


def write(record: Record) -> None:
    """Write record atomically (0600), as a record of its node (this node if unset)."""
    if not record.node:
        record.node = config.node_name()
    path = _record_path(record.name, record.node)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with config.writing_in(path.parent, config.STATE_DIR_VAR):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(dataclasses.asdict(record), f, indent=1)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone after os.replace; a partial one after a failure


def claim(record: Record) -> None:
    """Register a starting portal; AlreadyRunningError if its name is taken."""
    with locked():
        refuse_running(record.name)
        write(record)


def register_server(name: str, address: str, token: str, env_dir: str) -> Record:
    """Register a server that runs without a supervisor (a bare EnvSidePortal) as ready,
    owned by this process; AlreadyRunningError if the name is taken."""
    pid = os.getpid()
    record = Record(
        name=name,
        backend="process",
        env_dir=env_dir,
        token=token,
        supervisor_pid=pid,
        supervisor_start=process_start_time(pid),
        server_pid=pid,
        log_path="",
        address=address,
        state=READY,
    )
    claim(record)
    return record


def refuse_running(name: str) -> None:
    """AlreadyRunningError if a portal called name is running."""
    current = get(name)
    if current is not None:
        raise AlreadyRunningError(
            f"portal {name!r} is already running (pid {current.supervisor_pid}); "
            f"stop it first: portal-env stop {name}"
        )


def not_running(name: str) -> RegistryError:
    """The error for a portal name that is not running, listing those that are."""
    names = ", ".join(r.name for r in all_records()) or "none"
    return RegistryError(
        f"no portal named {name!r} is running (running: {names}). Start it with "
        f"`portal-env start {name}` (or portal_env.serve), or pass address= and token= "
        "for a server started another way."
    )


def update(name: str, supervisor_pid: int, **changes: Any) -> Record:
    """Change fields of the record name that supervisor_pid owns."""
    with locked():
        record = _read(_record_path(name))
        if record is None or record.supervisor_pid != supervisor_pid:
            raise RegistryError(f"the registry record of portal {name!r} was removed or taken over")
        record = dataclasses.replace(record, **changes)
        write(record)
        return record


def release(name: str, supervisor_pid: int) -> None:
    """Remove the record name if supervisor_pid owns it."""
    with locked():
        record = _read(_record_path(name))
        if record is not None and record.supervisor_pid == supervisor_pid:
            _record_path(name).unlink(missing_ok=True)


def get(name: str) -> Optional[Record]:
    """The live record of portal name on this node, or None (a stale record is removed)."""
    path = _record_path(name)
    record = _read(path)
    if record is None:
        return None
    if not is_alive(record.supervisor_pid, record.supervisor_start):
        logger.info(
            "removing the stale record of portal %r (pid %d is gone)", name, record.supervisor_pid
        )
        again = _read(path)  # unless a new supervisor claimed the name meanwhile
        if again is not None and again.supervisor_pid == record.supervisor_pid:
            path.unlink(missing_ok=True)
            _remove_socket(record.address)
        return None
    return record


def lookup(name: str) -> Optional[Record]:
    """The record of portal name if it is ready to serve agents: this node's, else the
    first (by node name) live one of another node."""
    record = get(name)
    if record is not None and record.state == READY:
        return record
    others = lookup_all(name)
    return others[0] if others else None


def lookup_all(name: str) -> List[Record]:
    """Every ready record of portal name across nodes, this node's first, then by node."""
    local = config.node_name()
    found = []
    for path in sorted(portals_dir().glob(f"{glob.escape(name)}@*.json")):
        node = path.stem[len(name) + 1 :]
        record = get(name) if node == local else _remote(path)
        if record is not None and record.state == READY:
            found.append(record)
    return sorted(found, key=lambda r: (r.node != local, r.node))


def all_records() -> List[Record]:
    """Live records of every portal on this node, by name (stale ones are removed)."""
    suffix = f"@{config.node_name()}.json"
    paths = portals_dir().glob(f"*{glob.escape(suffix)}")
    names = sorted(p.name[: -len(suffix)] for p in paths)
    return [r for r in map(get, filter(config.NAME_PATTERN.match, names)) if r is not None]


def _remote(path: Path) -> Optional[Record]:
    """A record of another node if its server answers; removed if another server does."""
    record = _read(path)
    if record is None or record.state != READY:
        return None
    verdict = liveness.ask(record.address, record.token)
    if verdict == liveness.GONE:
        logger.info("removing the record %s: %s answers as another server", path, record.address)
        with locked():
            again = _read(path)
            if again is not None and again.supervisor_pid == record.supervisor_pid:
                path.unlink(missing_ok=True)
        return None
    if verdict != liveness.LIVE:
        logger.warning(
            "skipping portal %r on node %s: its server at %s does not answer from here (%s)",
            record.name,
            record.node,
            record.address,
            verdict,
        )
        return None
    return record


def _remove_socket(address: Optional[str]) -> None:
    """A killed supervisor leaves its server's Unix socket file behind.

    Only a socket file directly in one of our private socket directories (the node's, or
    the one in /tmp that container runtimes share) is removed: a record is a file, and
    whoever could write it must not get to name another file for us to delete.
    """
    if not (isinstance(address, str) and address.startswith("unix:")):
        return
    path = Path(address[len("unix:") :])
    ours = {os.path.realpath(d) for d in (config.socket_dir(), config.shared_tmp_socket_dir()) if d}
    if os.path.realpath(path.parent) not in ours:
        logger.warning("not removing %s: it is outside the private socket directory", path)
        return
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(info.st_mode) and info.st_uid == os.getuid():
        path.unlink(missing_ok=True)
    else:
        logger.warning("not removing %s: it is not a socket of ours", path)


def _read(path: Path) -> Optional[Record]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read the registry record {path}: {exc}; delete it") from exc
    return Record.from_json(data, path)
