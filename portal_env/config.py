"""Where a portal listens and which token it uses: arguments, environment, defaults.

The supervisor hands a server its settings through these environment variables:

- ``PORTAL_ENV_HOST`` / ``PORTAL_ENV_PORT``: TCP address to bind (default 127.0.0.1:7000).
- ``PORTAL_ENV_SOCKET``: a Unix socket path to bind instead of TCP.
- ``PORTAL_ENV_TOKEN``: the token; or ``PORTAL_ENV_TOKEN_FILE``, a file holding it.
- ``PORTAL_ENV_READY_FILE``: the server writes its bound address there once listening.
- ``PORTAL_ENV_SPIN_US``: the longest a receiver polls before blocking (default 1000; 0: never).

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

import hashlib
import logging
import os
import secrets
import stat
import sys
import tempfile
from pathlib import Path
from typing import Mapping, Optional, Tuple

from .errors import PortalEnvError
from .portal.wire import Address

logger = logging.getLogger(__name__)

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


def spin_us(env: Mapping[str, str] = os.environ) -> float:
    """The longest a receiver polls before it blocks (see wire.Channel._spin)."""
    raw = env.get(SPIN_VAR, "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_SPIN_US
    except ValueError:
        raise PortalEnvError(f"{SPIN_VAR}={raw!r} is not a number of microseconds") from None


CACHE_DIR_VAR = "PORTAL_ENV_CACHE_DIR"
REGISTRY_DIR_VAR = "PORTAL_ENV_REGISTRY_DIR"
RUNTIME_DIR_VAR = "PORTAL_ENV_RUNTIME_DIR"
NODE_VAR = "PORTAL_ENV_NODE"
# AF_UNIX paths are limited to 107 bytes; leave room for `/<name[:24]>-<8 hex>.sock`.
SOCKET_NAME_MAX = 24
_SOCKET_DIR_MAX = 107 - 1 - SOCKET_NAME_MAX - len("-12345678.sock")


def state_dir() -> Path:
    """The user's private portal-env state directory (created 0700)."""
    explicit = os.environ.get(STATE_DIR_VAR)
    if explicit:
        path = Path(explicit)
    else:
        try:
            import platformdirs

            path = Path(platformdirs.user_state_dir("portal-env", appauthor=False))
        except ImportError:  # a minimal runtime: same place platformdirs picks on Linux
            base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
            path = Path(base) / "portal-env"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """The user's cache of built runtimes ($PORTAL_ENV_CACHE_DIR, else the platform's)."""
    explicit = os.environ.get(CACHE_DIR_VAR)
    if explicit:
        path = Path(explicit)
    else:
        import platformdirs

        path = Path(platformdirs.user_cache_dir("portal-env", appauthor=False))
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def registry_dir() -> Path:
    """The directory of registry records ($PORTAL_ENV_REGISTRY_DIR, else in the state dir).

    Records hold tokens: the directory must be ours and private (0700), else anyone who
    can write there could point our agents at their own server.
    """
    explicit = os.environ.get(REGISTRY_DIR_VAR)
    if not explicit:
        path = state_dir() / "portals"
        path.mkdir(mode=0o700, exist_ok=True)
        return path
    path = Path(explicit)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
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
    for path in candidates:
        if len(os.fsencode(str(path))) > _SOCKET_DIR_MAX:
            logger.warning(
                "not putting Unix sockets in %s: longer than %d bytes (socket paths are "
                "limited to 107); set %s to a shorter node-local directory",
                path, _SOCKET_DIR_MAX, RUNTIME_DIR_VAR,
            )  # fmt: skip
        elif _private_dir(path):
            return path
    return None


def _private_dir(path: Path) -> bool:
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


def agent_endpoint(
    env_name: str,
    address: Optional[str],
    token: Optional[str],
    agent_in_docker: bool,
    env: Mapping[str, str] = os.environ,
) -> Tuple[Address, str]:
    """The address and token an agent uses for env_name.

    An explicit address (argument, $PORTAL_ENV_ADDRESS, or the container name of an
    agent in Docker) wins, with the given token or the one a local server recorded
    for it; else the registry's record of the running portal named env_name (a
    supervised portal, or a bare EnvSidePortal, which registers itself); else a
    clear error listing the running portals.
    """
    where = agent_address(env_name, address, agent_in_docker, env)
    if where is not None:
        return where, explicit_token(token, env) or find_token(where)
    from .serving import registry  # lazily: the agent's import path stays light

    record = registry.lookup(env_name)
    if record is None:
        raise registry.not_running(env_name)
    return Address.parse(record.address), token or record.token


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
