"""The launcher actor's body: one supervised portal server on the node Ray placed it on.

It runs in a Ray worker, which must run the cluster's own Python and Ray, so the env's
runtime is never the actor itself: the actor calls `lifecycle.serve()` (build or reuse
the runtime from the node's cache, start the supervisor as a child process, wait for
the server's health answer) with the node's Ray address as the host and the fleet's
token. The supervisor restarts a server that dies; it stops the server when this
process ends however it ends (its lifeline pipe closes), and this process ends itself
if the supervisor dies, so that Ray restarts the launcher (`max_restarts`).

Each launcher keeps its records, logs, ready file and token file in a private state
directory of its own (`<state_root>/<fleet id>-<index>-<pid>`; node-local: a launcher
starting removes those whose pid is dead, left by launchers that were killed, since
their servers died with them) and names its node in
records `<fleet id>-<index>`: several servers of one env on one machine (two raylets,
or several servers per node) never share a registry name. This module imports Ray
only inside the worker.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from .. import config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSpec:
    """What one launcher serves, and where it keeps its files (sent to the actor)."""

    name: str
    backend: Optional[str]
    path: Optional[str]
    token: str
    fleet_id: str
    index: int
    ready_timeout: float
    state_root: Optional[str] = None
    cache_dir: Optional[str] = None


def default_state_root() -> str:
    """A node-local directory for launchers' files: short, so Unix socket paths fit."""
    return str(Path(tempfile.gettempdir()) / f"portal-env-fleet-{os.getuid()}")


class Launcher:
    """One server of a fleet (the class Ray makes an actor of)."""

    def __init__(self, spec: ServerSpec) -> None:
        import ray

        from ..serving import lifecycle

        self.spec = spec
        self.node_id = ray.get_runtime_context().get_node_id()
        self.host = ray.util.get_node_ip_address()
        root = Path(spec.state_root or default_state_root())
        sweep(root)
        self.state_dir = root / f"{spec.fleet_id}-{spec.index}-{os.getpid()}"
        _use_private_dirs(self.state_dir, f"{spec.fleet_id}-{spec.index}", spec.cache_dir)
        self._stopping = False
        logger.info("fleet server %d of %r: serving on %s", spec.index, spec.name, self.host)
        self.portal = lifecycle.serve(
            spec.name,
            path=Path(spec.path) if spec.path else None,
            backend=spec.backend,
            host=self.host,
            token=spec.token,
            ready_timeout=spec.ready_timeout,
        )
        threading.Thread(target=self._exit_with_supervisor, daemon=True).start()

    def info(self) -> Dict[str, Any]:
        """Where this server is now, and whether it answers (its process is up)."""
        from ..serving import registry

        record = registry.get(self.spec.name)
        server_pid = record.server_pid if record is not None else None
        ready = (
            record is not None
            and record.state == registry.READY
            and server_pid is not None
            and registry.is_alive(server_pid)
        )
        return {
            "index": self.spec.index,
            "node_id": self.node_id,
            "host": self.host,
            "address": record.address if record is not None else "",
            "ready": ready,
            "server_pid": server_pid,
            "supervisor_pid": record.supervisor_pid if record is not None else None,
            "launcher_pid": os.getpid(),
            "restarts": record.restarts if record is not None else 0,
            "log_path": record.log_path if record is not None else "",
        }

    def stop(self) -> None:
        """Stop the server and its supervisor, remove this launcher's files; idempotent."""
        self._stopping = True
        self.portal.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def _exit_with_supervisor(self) -> None:
        proc = self.portal._proc
        if proc is None:
            return
        code = proc.wait()
        if not self._stopping:  # it gave up on the server, or was killed: let Ray restart us
            logger.error(
                "fleet server %d of %r: its supervisor exited (code %s); ending the launcher "
                "so that Ray restarts it. Log: %s",
                self.spec.index, self.spec.name, code, self.portal.record.log_path,
            )  # fmt: skip
            os._exit(1)


def sweep(root: Path) -> None:
    """Remove the directories of this node's launchers that died without stop() (SIGKILL,
    a lost driver): their servers are gone with them; only logs and records remain."""
    from ..serving import registry

    if not root.is_dir():
        return
    for path in root.iterdir():
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not registry.is_alive(int(pid)):
            logger.info("removing %s, left by a launcher that died", path)
            shutil.rmtree(path, ignore_errors=True)


def _use_private_dirs(state_dir: Path, node: str, cache_dir: Optional[str]) -> None:
    """Point this process (and the supervisor it starts) at its own state and node name."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ[config.STATE_DIR_VAR] = str(state_dir)
    os.environ[config.RUNTIME_DIR_VAR] = str(state_dir / "run")
    os.environ[config.NODE_VAR] = node
    os.environ.pop(config.REGISTRY_DIR_VAR, None)  # a fleet's servers are found through it
    if cache_dir:
        os.environ[config.CACHE_DIR_VAR] = cache_dir
