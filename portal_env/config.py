"""Where a portal listens and which token it uses: arguments, environment, defaults.

The supervisor hands a server its settings through these environment variables:

- ``PORTAL_ENV_HOST`` / ``PORTAL_ENV_PORT``: TCP address to bind (default 127.0.0.1:7000).
- ``PORTAL_ENV_SOCKET``: a Unix socket path to bind instead of TCP.
- ``PORTAL_ENV_TOKEN``: the token; or ``PORTAL_ENV_TOKEN_FILE``, a file holding it.
- ``PORTAL_ENV_READY_FILE``: the server writes its bound address there once listening.
- ``PORTAL_ENV_SPIN_US``: the longest a receiver polls before blocking (default 1000; 0: never).
- ``PORTAL_ENV_HANDSHAKE_TIMEOUT``: seconds a server gives a new connection to authenticate.
- ``PORTAL_ENV_IDLE_TIMEOUT``: seconds a server keeps an authenticated, silent connection.
- ``PORTAL_ENV_ALLOW_PICKLE``: ``1`` lets this side send and accept pickled values (trusted
  peers only: unpickling runs code the peer chooses).

Where portal-env keeps things on a cluster:

- ``PORTAL_ENV_REGISTRY_DIR``: the registry's records (default ``<state dir>/portals``); on a
  cluster, a directory every node of a job sees (e.g. on the shared filesystem).
- ``PORTAL_ENV_RUNTIME_DIR``: a node-local directory for Unix sockets and ready files
  (default ``$XDG_RUNTIME_DIR/portal-env``, else ``$TMPDIR/portal-env-UID``).
- ``PORTAL_ENV_NODE``: this node's name in registry records (default ``$SLURMD_NODENAME``,
  else the host name).

An agent reads ``PORTAL_ENV_ADDRESS`` and the same token variables. A server
given no token generates one and records it in the user's private state
directory, keyed by its address, where an agent of the same user finds it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import stat
import sys
import tempfile
from pathlib import Path
from typing import Iterator, List, Mapping, Optional, Union

from .errors import DirectoryError, PortalEnvError
from .portal.wire import Address

logger = logging.getLogger(__name__)

# A portal or env name: a registry file name and a container name, so nothing path-like.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7000
DOCKER_HOST_PREFIX = "env_portal_"
DOCKER_BASE_IMAGE = "debian:bookworm-slim"  # under an image made from a conda lockfile

HOST_VAR = "PORTAL_ENV_HOST"
PORT_VAR = "PORTAL_ENV_PORT"
SOCKET_VAR = "PORTAL_ENV_SOCKET"
TOKEN_VAR = "PORTAL_ENV_TOKEN"
TOKEN_FILE_VAR = "PORTAL_ENV_TOKEN_FILE"
READY_FILE_VAR = "PORTAL_ENV_READY_FILE"
ADDRESS_VAR = "PORTAL_ENV_ADDRESS"
NAME_VAR = "PORTAL_ENV_NAME"
SUPERVISED_VAR = "PORTAL_ENV_SUPERVISED"  # set by a supervisor, which registers its server
STATE_DIR_VAR = "PORTAL_ENV_STATE_DIR"
SPIN_VAR = "PORTAL_ENV_SPIN_US"
DEFAULT_SPIN_US = 1000.0
HANDSHAKE_TIMEOUT_VAR = "PORTAL_ENV_HANDSHAKE_TIMEOUT"
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT_VAR = "PORTAL_ENV_IDLE_TIMEOUT"
ALLOW_PICKLE_VAR = "PORTAL_ENV_ALLOW_PICKLE"
# Set by a runtime whose server must not outlive its parent process (ch-run serving the
# SquashFS image the server runs from): the server asks the kernel for SIGKILL with it.
DIE_WITH_PARENT_VAR = "PORTAL_ENV_DIE_WITH_PARENT"


def spin_us(env: Mapping[str, str] = os.environ) -> float:
    """The longest a receiver polls before it blocks (see wire.Channel._spin)."""
    raw = env.get(SPIN_VAR, "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_SPIN_US
    except ValueError:
        raise PortalEnvError(f"{SPIN_VAR}={raw!r} is not a number of microseconds") from None


def seconds(
    value: Optional[float], var: str, default: Optional[float], env: Mapping[str, str] = os.environ
) -> Optional[float]:
    """A duration from an argument, else the variable var, else default (0 or empty: none)."""
    if value is None:
        raw = env.get(var, "")
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise PortalEnvError(f"{var}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise PortalEnvError(f"{var} (or its argument) must be >= 0 seconds, got {value!r}")
    return value or None


def allow_pickle(value: Optional[bool], env: Mapping[str, str] = os.environ) -> bool:
    """Whether this side sends and accepts pickled values (argument, else the variable)."""
    if value is not None:
        return bool(value)
    raw = env.get(ALLOW_PICKLE_VAR, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise PortalEnvError(f"{ALLOW_PICKLE_VAR}={raw!r}: use 1 (trusted peers only) or 0")


CACHE_DIR_VAR = "PORTAL_ENV_CACHE_DIR"
REGISTRY_DIR_VAR = "PORTAL_ENV_REGISTRY_DIR"
RUNTIME_DIR_VAR = "PORTAL_ENV_RUNTIME_DIR"
NODE_VAR = "PORTAL_ENV_NODE"
# AF_UNIX paths are limited to 107 bytes; leave room for `/<name[:24]>-<8 hex>.sock`.
SOCKET_NAME_MAX = 24
_SOCKET_DIR_MAX = 107 - 1 - SOCKET_NAME_MAX - len("-12345678.sock")
# Errors that mean "this directory cannot take our files", not a bug in the caller.
_DIR_ERRNOS = (errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOTDIR)


def directory_error(exc: OSError, path: Union[str, Path], var: str) -> DirectoryError:
    """A DirectoryError naming path, the setting var and what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "the disk (or quota) holding it is full"
        todo = "free some space there"
    elif exc.errno == errno.EROFS:
        why = "it is on a read-only file system"
        todo = "point it at a writable directory"
    elif exc.errno == errno.ENOENT:
        why = "no directory can be made there"
        todo = "point it at a writable directory"
    else:
        why = exc.strerror or str(exc)
        todo = "fix its permissions or point it at a directory you can write"
    return DirectoryError(f"cannot write to {path} ({why}); {todo}: set {var}=DIR")


@contextlib.contextmanager
def writing_in(path: Union[str, Path], var: str) -> Iterator[None]:
    """Turn a write failure in the directory path (var's) into a DirectoryError."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _DIR_ERRNOS:
            raise
        raise directory_error(exc, path, var) from exc


_FULL_MARKERS = ("No space left on device", "Disk quota exceeded", "os error 28", "Errno 28")


def full_disk_hint(output: str) -> str:
    """For a failed build's output: a sentence naming the cache dir and its setting when
    the output says a disk was full and the cache's disk is (nearly) full; else ''."""
    if not any(marker in output for marker in _FULL_MARKERS):
        return ""
    path = cache_dir()
    try:
        info = os.statvfs(path)
        free = info.f_bavail * info.f_frsize
    except OSError:
        return ""
    if free >= 64 * 2**20:  # another disk filled up (a temp dir, a package cache)
        return "\nA disk filled up during the build (see the paths above)."
    return (
        f"\nThe disk holding {path} is full ({free // 2**20} MiB free): free some space there, "
        f"or set {CACHE_DIR_VAR}=DIR to a directory on a bigger disk."
    )


def _private_dir(path: Path, var: str) -> Path:
    """Create path 0700 if needed and check that we can write there."""
    with writing_in(path, var):
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileNotFoundError as exc:  # a parent where no directory can be made (/proc)
            raise directory_error(exc, path, var) from exc
        if not os.access(path, os.W_OK | os.X_OK):  # EROFS even for root
            raise OSError(errno.EROFS if _read_only(path) else errno.EACCES, "not writable")
    return path


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def state_dir() -> Path:
    """The user's private portal-env state directory (created 0700): $PORTAL_ENV_STATE_DIR,
    else the platform's (~/.local/state/portal-env), else (a read-only or missing home, as
    in many containers) a private directory under the temporary directory."""
    explicit = os.environ.get(STATE_DIR_VAR)
    if explicit:
        return _private_dir(Path(explicit), STATE_DIR_VAR)
    try:
        import platformdirs

        path = Path(platformdirs.user_state_dir("portal-env", appauthor=False))
    except ImportError:  # a minimal runtime: same place platformdirs picks on Linux
        base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        path = Path(base) / "portal-env"
    return _default_dir(path, "state", STATE_DIR_VAR)


def cache_dir() -> Path:
    """The user's cache of built runtimes: $PORTAL_ENV_CACHE_DIR, else the platform's
    (~/.cache/portal-env), else (a read-only or missing home) under the temporary directory."""
    explicit = os.environ.get(CACHE_DIR_VAR)
    if explicit:
        return _private_dir(Path(explicit), CACHE_DIR_VAR)
    import platformdirs

    path = Path(platformdirs.user_cache_dir("portal-env", appauthor=False))
    return _default_dir(path, "cache", CACHE_DIR_VAR)


def _default_dir(path: Path, kind: str, var: str) -> Path:
    """path made private, or, where it cannot be written (a read-only home), kind in this
    user's private directory under the temporary directory; a DirectoryError if neither."""
    try:
        if not path.is_absolute():  # no $HOME and no passwd entry: "~" stayed as it is
            raise DirectoryError(f"no home directory to put {path} in")
        return _private_dir(path, var)
    except DirectoryError as exc:
        root = user_tmp_dir()
        if root is None:
            raise
        logger.info("%s; using %s instead", exc, root / kind)
        return _private_dir(root / kind, var)


def user_tmp_dir() -> Optional[Path]:
    """This user's private directory in /tmp ($TMPDIR), made 0700 if needed; None if the
    name is taken by someone else or cannot be made. Container runtimes that share the
    host's /tmp (Charliecloud, Apptainer) see it at the same path."""
    for path in (Path(tempfile.gettempdir()), Path("/tmp")):
        candidate = path / f"portal-env-{os.getuid()}"
        if _socket_dir_usable(candidate):
            return candidate
    return None


def registry_dir() -> Path:
    """The directory of registry records ($PORTAL_ENV_REGISTRY_DIR, else in the state dir).

    Records hold tokens: the directory must be ours and private (0700), else anyone who
    can write there could point our agents at their own server.
    """
    explicit = os.environ.get(REGISTRY_DIR_VAR)
    if not explicit:
        return _private_dir(state_dir() / "portals", STATE_DIR_VAR)
    path = _private_dir(Path(explicit), REGISTRY_DIR_VAR)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PortalEnvError(
            f"the registry directory {path} ({REGISTRY_DIR_VAR}) must be yours and private "
            f"(mode {stat.S_IMODE(info.st_mode):o}, owner uid {info.st_uid}); "
            f"run: chmod 700 {path}, or point {REGISTRY_DIR_VAR} at a directory of yours"
        )
    return path


def node_name() -> str:
    """This node's name in registry records: $PORTAL_ENV_NODE, $SLURMD_NODENAME, host name."""
    import socket

    return os.environ.get(NODE_VAR) or os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def socket_dir() -> Optional[Path]:
    """A short private node-local directory for Unix sockets, or None if none can be trusted.

    Never derived from the state, cache or registry directories: those may be long (socket
    paths are limited to 107 bytes) or on a shared filesystem (sockets are node-local).
    """
    candidates = []
    if os.environ.get(RUNTIME_DIR_VAR):
        candidates.append(Path(os.environ[RUNTIME_DIR_VAR]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        candidates.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "portal-env")
    candidates.append(Path(tempfile.gettempdir()) / f"portal-env-{os.getuid()}")
    candidates.append(Path("/tmp") / f"portal-env-{os.getuid()}")
    return _short_usable(candidates)


def shared_tmp_socket_dir() -> Optional[Path]:
    """A private socket directory in /tmp itself, for a server in a container runtime that
    binds the host's /tmp at /tmp (ch-run, apptainer): its socket path is the same inside."""
    return _short_usable([Path("/tmp") / f"portal-env-{os.getuid()}"])


def _short_usable(candidates: List[Path]) -> Optional[Path]:
    """The first candidate short enough for socket paths that only we can use."""
    for path in candidates:
        if len(os.fsencode(str(path))) > _SOCKET_DIR_MAX:
            logger.warning(
                "not putting Unix sockets in %s: longer than %d bytes (socket paths are "
                "limited to 107); set %s to a shorter node-local directory",
                path, _SOCKET_DIR_MAX, RUNTIME_DIR_VAR,
            )  # fmt: skip
        elif _socket_dir_usable(path):
            return path
    return None


def _socket_dir_usable(path: Path) -> bool:
    """Make path (0700) if needed; whether it is a directory only we can use."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError:
        return False
    # someone else made it, or made it open: do not put our sockets there
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def server_address(
    host: Optional[str], port: Optional[int], env: Mapping[str, str] = os.environ
) -> Address:
    """The address a server binds: arguments, else environment, else loopback:7000."""
    if host is None and port is None and env.get(SOCKET_VAR):
        return Address(path=env[SOCKET_VAR])
    host = host or env.get(HOST_VAR) or DEFAULT_HOST
    if port is None:
        raw = env.get(PORT_VAR, str(DEFAULT_PORT))
        if not raw.isdigit():
            raise PortalEnvError(f"{PORT_VAR}={raw!r} is not a port number")
        port = int(raw)
    return Address(host=host, port=port)


def portal_name(explicit: Optional[str], env: Mapping[str, str] = os.environ) -> str:
    """The name a bare server registers itself under: the argument, else $PORTAL_ENV_NAME,
    else its script's (`envs/ale/env_main.py` -> "ale", `cart_server.py` -> "cart_server")."""
    name = explicit or env.get(NAME_VAR)
    if name:
        return name
    script = sys.argv[0] if sys.argv else ""
    if script in ("", "-c", "-m"):
        return "default"
    path = Path(script).resolve()
    return path.parent.name if path.name == "env_main.py" else path.stem


def container_name(env_name: str) -> str:
    """The container (and host) name of env_name's server: `env_portal_<name>`, the seed's."""
    return DOCKER_HOST_PREFIX + env_name


def agent_address(
    env_name: str,
    address: Optional[str],
    agent_in_docker: bool,
    env: Mapping[str, str] = os.environ,
) -> Optional[Address]:
    """The address an agent was told to use for env_name, if any: an explicit address,
    else $PORTAL_ENV_ADDRESS, else (in a container) the env's container by name."""
    text = address or env.get(ADDRESS_VAR)
    if text:
        return Address.parse(text)
    if agent_in_docker:  # the env's container is reachable by name on portal_env_net
        return Address(host=container_name(env_name), port=DEFAULT_PORT)
    return None


def tokens_dir() -> Path:
    """Where tokens are kept for agents of this user (state dir, 0700 like it)."""
    return state_dir() / "tokens"


def _token_path(address: Address) -> Path:
    if address.path is not None:
        key = "unix-" + hashlib.sha256(address.path.encode()).hexdigest()[:16]
    else:  # keyed by port only: a server bound to 0.0.0.0 is reached as 127.0.0.1
        key = f"tcp-{address.port}"
    return tokens_dir() / key


def explicit_token(token: Optional[str], env: Mapping[str, str] = os.environ) -> Optional[str]:
    """A token given by argument or environment, if any."""
    if token:
        return token
    if env.get(TOKEN_VAR):
        return env[TOKEN_VAR]
    if env.get(TOKEN_FILE_VAR):
        path = Path(env[TOKEN_FILE_VAR])
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise PortalEnvError(
                f"cannot read the token file {path} ({TOKEN_FILE_VAR}): {exc}"
            ) from exc
    return None


def publish_token(address: Address) -> tuple:
    """Generate a token and record it privately for agents of this user; (token, path)."""
    token = secrets.token_urlsafe(32)
    path = _token_path(address)
    with writing_in(path.parent, STATE_DIR_VAR):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
    return token, path


def find_token(address: Address) -> str:
    """The token a local server recorded for address, or a clear error."""
    path = _token_path(address)
    try:
        return path.read_text().strip()
    except OSError:
        raise PortalEnvError(
            f"no token for the portal at {address}: none was recorded in {path.parent}. "
            f"Pass token=... or set {TOKEN_VAR} to the server's token."
        ) from None
