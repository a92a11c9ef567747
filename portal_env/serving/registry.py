"""Running portals: one JSON record per portal in the user's private state directory.

Records live in `<state dir>/portals/<name>.json` (directory 0700, files 0600)
and are written atomically. Claiming and removing hold a lock file, so two
`start`s of one name cannot both win. A record whose supervisor is gone (its
pid dead, or reused by another process: the start time recorded from /proc
differs) is stale and is removed when read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List, Optional

from .. import config
from ..errors import AlreadyRunningError, RegistryError

logger = logging.getLogger(__name__)

STARTING, READY = "starting", "ready"
# What a portal may be called: a record's file name, so no path separators or leading dot.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


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

    @classmethod
    def from_json(cls, data: Any, path: Path) -> Record:
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or not fields >= set(data):
            raise RegistryError(f"{path} is not a portal-env registry record; delete it")
        return cls(**data)


def portals_dir() -> Path:
    """The directory of records (created 0700)."""
    path = config.state_dir() / "portals"
    with config.writing_in(path, config.STATE_DIR_VAR):
        path.mkdir(mode=0o700, exist_ok=True)
    return path


def logs_dir() -> Path:
    """The directory of server logs (created 0700)."""
    path = config.state_dir() / "logs"
    with config.writing_in(path, config.STATE_DIR_VAR):
        path.mkdir(mode=0o700, exist_ok=True)
    return path


def log_path(name: str) -> Path:
    """The log file of portal name."""
    return logs_dir() / f"{name}.log"


def check_name(name: str) -> str:
    """name, if it can name a portal (letters, digits, '.', '_', '-'); else RegistryError."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise RegistryError(
            f"{name!r} is not a portal name: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (pass address=... to reach a server by address)"
        )
    return name


def _record_path(name: str) -> Path:
    return portals_dir() / f"{check_name(name)}.json"


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
    """Write record atomically (0600)."""
    path = _record_path(record.name)
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
        current = get(record.name)
        if current is not None:
            raise AlreadyRunningError(
                f"portal {record.name!r} is already running (pid {current.supervisor_pid}); "
                f"stop it first: portal-env stop {record.name}"
            )
        write(record)


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
    """The live record of portal name, or None (a stale record is removed)."""
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
    """The record of portal name if it is ready to serve agents."""
    record = get(name)
    return record if record is not None and record.state == READY else None


def all_records() -> List[Record]:
    """Live records of every portal, by name (stale ones are removed)."""
    names = sorted(p.stem for p in portals_dir().glob("*.json"))
    return [r for r in map(get, filter(NAME_PATTERN.match, names)) if r is not None]


def _remove_socket(address: Optional[str]) -> None:
    """A killed supervisor leaves its server's Unix socket file behind.

    Only a socket file directly in our private socket directory is removed:
    a record is a file, and whoever could write it must not get to name
    another file for us to delete.
    """
    if not (isinstance(address, str) and address.startswith("unix:")):
        return
    path = Path(address[len("unix:") :])
    directory = config.socket_dir()
    if directory is None or os.path.realpath(path.parent) != os.path.realpath(directory):
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
