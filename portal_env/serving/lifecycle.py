"""A portal's whole lifecycle as a Python API: lock, build, serve, list, stop.

The `portal-env` CLI is a thin layer over these functions; training scripts,
notebooks, test fixtures and launchers on other nodes call them directly:

    with portal_env.serve("ale", backend="venv") as portal:
        env = portal.make(env_args=["ALE/Pong-v5"])

`serve()` builds the runtime in the calling process (so build errors and
progress surface there), then runs the supervisor in a child process
(`python -m portal_env.serving`) and returns once the server answers. The child
is tied to the caller unless `detach=True`: it stops its server when the
caller's process ends, however it ends (it watches a pipe from the caller).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .. import config
from ..errors import BackendUnavailableError, CatalogError, PortalEnvError, ServerStartError
from ..runtimes import Reporter, Runtime, canonical, get
from ..runtimes.base import LogReporter
from ..runtimes.catalog import EnvSource
from . import reaper, registry, supervisor

BACKEND_VAR = "PORTAL_ENV_BACKEND"
DEFAULT_BACKEND = "docker"  # the seed's default


def default_backend() -> str:
    """$PORTAL_ENV_BACKEND, else docker (the seed's default)."""
    return os.environ.get(BACKEND_VAR) or DEFAULT_BACKEND


def find(name: str, path: Optional[Path] = None, image: Optional[Path] = None) -> EnvSource:
    """The files of env name: the custom directory path, else the built-in env; with image,
    the env an image holds (its files are in the image)."""
    from ..runtimes import catalog

    if image is None:
        return catalog.find(name, path)
    if path is not None:
        raise CatalogError(
            f"--image {image} serves the env inside the image; -p {path} does not apply"
        )
    return catalog.in_image(name, image)


def find_name(name: str) -> str:
    """name, if it is usable as a portal name; else a clear error."""
    from ..runtimes import catalog

    return catalog.check_name(name)


def lock(
    name: str,
    *,
    path: Optional[Path] = None,
    backend: Optional[str] = None,
    platforms: Sequence[str] = (),
    reporter: Optional[Reporter] = None,
) -> List[Path]:
    """(Re)lock env name's spec; returns the lockfiles written.

    With no backend, every lockfile the env already has is re-locked (what editing
    spec.yml calls for); an env with none is locked for $PORTAL_ENV_BACKEND, else for
    venv when its spec needs only pip packages, else for micromamba.
    """
    source = find(name, path)
    source.require_spec("lock")
    backends = [canonical(backend)] if backend else _lock_backends(source)
    if platforms and backends != ["micromamba"]:
        raise BackendUnavailableError(
            f"--platform applies to conda lockfiles (-b micromamba), not to -b {backends[0]}"
        )
    reporter = reporter or LogReporter()
    written = []
    for chosen in backends:
        options = {"platforms": list(platforms)} if platforms else {}
        written.append(get(chosen, **options).lock(source, reporter))
    return written


def _lock_backends(source: EnvSource) -> List[str]:
    from ..runtimes import condalock, listing
    from ..runtimes import lock as venv_lock

    existing = [
        backend
        for backend, lockfile in (
            ("venv", venv_lock.venv_lock_path(source)),
            ("micromamba", condalock.lock_path(source)),
        )
        if lockfile.is_file()
    ]
    if existing:
        return existing
    supported = listing.backends(source)
    wanted = os.environ.get(BACKEND_VAR)
    if wanted and canonical(wanted) in supported and canonical(wanted) != "docker":
        return [canonical(wanted)]
    return ["venv"] if "venv" in supported else ["micromamba"]


def build(
    name: str,
    *,
    path: Optional[Path] = None,
    backend: Optional[str] = None,
    force: bool = False,
    base_image: Optional[str] = None,
    ca_bundle: Optional[Path] = None,
    image: Optional[Path] = None,
    reporter: Optional[Reporter] = None,
) -> Runtime:
    """The runtime of env name, built (or rebuilt with force) only when needed.

    Args:
        name: A built-in env, or the name to give the custom env at path.
        path: A custom env directory (env_main.py plus spec.yml and/or Dockerfile.env).
        backend: "venv", "micromamba" (or "mm"), "docker", "charliecloud" (or "ch") or
            "apptainer" (default: default_backend()).
        force: Rebuild even if a runtime of the same inputs is cached.
        base_image: docker: the base image (a Dockerfile.env's `ARG BASE_IMAGE`);
            charliecloud, apptainer: the base the image is built on (a rootfs directory
            or tarball, a `docker save` or OCI archive).
        ca_bundle: docker: a CA bundle put in the build context.
        image: charliecloud, apptainer: serve this image (a SquashFS or SIF file, an image
            directory, an OCI archive) instead of building one; path does not apply.
        reporter: Where progress goes (default: the log).
    """
    source = find(name, path, image)
    chosen = canonical(backend or default_backend())
    if image is None:
        require_support(source, chosen)
    given = {"base_image": base_image, "ca_bundle": ca_bundle, "image": image}
    options = {k: v for k, v in given.items() if v is not None}
    return get(chosen, **options).ensure(source, force=force, reporter=reporter or LogReporter())


def require_support(source: EnvSource, backend: str) -> None:
    """A clear error, before any work, when source's files cannot serve backend."""
    from ..runtimes import listing

    supported = listing.backends(source)
    if backend in supported:
        return
    if backend == "venv" and source.spec is not None:
        why = f"its spec {source.spec} asks for conda packages, which a venv cannot hold"
    elif backend == "docker":
        why = f"{source.env_dir} has neither a Dockerfile.env nor a spec.yml"
    else:
        why = f"{source.env_dir} has no spec.yml"
    instead = f"; use -b {' or -b '.join(supported)}" if supported else ""
    raise CatalogError(f"env {source.name!r} cannot be served with -b {backend}: {why}{instead}.")


# -- serving -------------------------------------------------------------------


@dataclass
class Portal:
    """A running portal: where it is, and how to make envs on it.

    Use as a context manager: leaving the block stops the portal, unless it was
    started with detach=True (then only stop() does).
    """

    record: registry.Record
    detached: bool = False
    _proc: Optional[subprocess.Popen] = None
    _lifeline: Optional[int] = None

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def address(self) -> str:
        """Where its server listens: "unix:/path" or "host:port"."""
        return self.record.address

    @property
    def token(self) -> str:
        """The token its server expects."""
        return self.record.token

    def make(
        self,
        env_args: Optional[Sequence[Any]] = None,
        env_kwargs: Optional[Dict[str, Any]] = None,
        **options: Any,
    ) -> Any:
        """An AgentSidePortal on this portal (options: those of AgentSidePortal)."""
        from ..portal.agent import AgentSidePortal

        return AgentSidePortal(
            self.name, env_args, env_kwargs, address=self.address, token=self.token, **options
        )

    def make_vec(
        self,
        num_envs: int = 1,
        env_args: Optional[Sequence[Any]] = None,
        env_kwargs: Optional[Dict[str, Any]] = None,
        **options: Any,
    ) -> Any:
        """A VectorEnv of num_envs instances on this portal (options: those of make_vec)."""
        from ..portal.vector.multiserver import make_vec

        return make_vec(
            self.name,
            num_envs,
            env_args,
            env_kwargs,
            address=self.address,
            token=self.token,
            **options,
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the portal and its server; idempotent."""
        if self._lifeline is not None:
            os.close(self._lifeline)  # the supervisor stops when its lifeline closes
            self._lifeline = None
        if self._proc is not None:
            _stop_supervisor(self.record, timeout)
            self._proc.wait()
            self._proc = None
        else:  # detached: stop it if it is still the portal this object started
            current = registry.get(self.name)
            if current is not None and current.supervisor_pid == self.record.supervisor_pid:
                _stop_supervisor(current, timeout)

    def __enter__(self) -> Portal:
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.detached:
            self.stop()

    def __del__(self) -> None:
        # An attached portal whose object is dropped: the lifeline closes with it.
        if self._lifeline is not None:
            with contextlib.suppress(OSError):
                os.close(self._lifeline)


def serve(
    name: str,
    *,
    path: Optional[Path] = None,
    backend: Optional[str] = None,
    detach: bool = False,
    force: bool = False,
    host: Optional[str] = None,
    token: Optional[str] = None,
    ready_timeout: float = 120.0,
    base_image: Optional[str] = None,
    ca_bundle: Optional[Path] = None,
    image: Optional[Path] = None,
    reporter: Optional[Reporter] = None,
) -> Portal:
    """Build env name's runtime if needed, start its supervised server, wait until ready.

    Args:
        name: A built-in env, or the name to give the custom env at path.
        path: A custom env directory (env_main.py plus spec.yml and/or Dockerfile.env).
        backend: "venv", "micromamba" (or "mm"), "docker", "charliecloud" (or "ch") or
            "apptainer" (default: default_backend()).
        detach: Keep serving after this process ends (like `portal-env start -d`);
            otherwise the portal stops when the returned Portal's block is left, when
            stop() is called, or when this process ends.
        force: Rebuild the runtime even if a runtime of the same inputs is cached.
        host: Listen on this interface over TCP (never by default: a private Unix
            socket, or loopback for a container).
        token: The token the server expects (at least 16 characters; e.g. one token for a
            fleet of servers); default: a fresh random one, in portal.token.
        ready_timeout: Seconds the server may take to answer its first health check.
        base_image: docker: the base image (a Dockerfile.env's `ARG BASE_IMAGE`);
            charliecloud, apptainer: the base the image is built on (a rootfs directory
            or tarball, a `docker save` or OCI archive).
        ca_bundle: docker: a CA bundle put in the build context.
        image: charliecloud, apptainer: serve this image (a SquashFS or SIF file, an image
            directory, an OCI archive) instead of building one; path does not apply.
        reporter: Where build progress goes (default: the log).

    Returns:
        The running Portal; portal.make(...) and portal.make_vec(...) make envs on it.
    """
    source = find(name, path, image)
    _check_token(token)
    registry.refuse_running(source.name)
    backend = canonical(backend or default_backend())
    build(
        name,
        path=path,
        backend=backend,
        force=force,
        base_image=base_image,
        ca_bundle=ca_bundle,
        image=image,
        reporter=reporter,
    )
    job = {
        "name": name,
        "path": str(path) if path is not None else None,
        "backend": backend,
        "host": host,
        "ready_timeout": ready_timeout,
        "base_image": base_image,
        "ca_bundle": str(ca_bundle) if ca_bundle is not None else None,
        "image": str(image) if image is not None else None,
        "token_from_env": token is not None,
    }
    env = dict(os.environ)
    if token is not None:  # through the environment: a command line is public (ps)
        env[config.TOKEN_VAR] = token
    lifeline_read, lifeline = (None, None) if detach else os.pipe()
    if lifeline_read is not None:
        job["lifeline_fd"] = lifeline_read
    out_path = registry.log_path(source.name).with_suffix(".supervisor.log")  # per node
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "portal_env.serving", json.dumps(job)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=True,  # a Ctrl-C meant for the caller is the caller's to handle
            pass_fds=() if lifeline_read is None else (lifeline_read,),
        )
    if lifeline_read is not None:
        os.close(lifeline_read)
    try:
        record = _wait_ready(source.name, proc, out_path, ready_timeout + 30)
    except BaseException:
        if lifeline is not None:
            os.close(lifeline)
        _terminate(proc)
        raise
    if detach:
        return Portal(record, detached=True)
    return Portal(record, _proc=proc, _lifeline=lifeline)


MIN_TOKEN_LENGTH = 16


def _check_token(token: Optional[str]) -> None:
    if token is not None and (not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH):
        length = len(token) if isinstance(token, str) else type(token).__name__
        raise PortalEnvError(
            f"serve(token=...) needs a string of at least {MIN_TOKEN_LENGTH} characters "
            f"(got {length}); pass e.g. secrets.token_urlsafe(32), or no token for a fresh one"
        )


def _wait_ready(
    name: str, proc: subprocess.Popen, out_path: Path, timeout: float
) -> registry.Record:
    """The ready record of supervisor proc, or an error carrying its output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = registry.get(name)
        if record is not None and record.supervisor_pid == proc.pid:
            if record.state == registry.READY:
                return record
        if proc.poll() is not None:
            raise ServerStartError(f"portal {name!r} failed to start:\n{_output(out_path)}")
        time.sleep(0.05)
    raise ServerStartError(f"portal {name!r} was not ready in {timeout:.0f}s; see {out_path}")


def _output(path: Path) -> str:
    text = supervisor.tail(path, 80).strip()
    return text[len("Error: ") :] if text.startswith("Error: ") else text


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def supervise(
    source: EnvSource,
    runtime: Runtime,
    policy: supervisor.Policy,
    *,
    on_ready: Callable[[registry.Record], None] = lambda record: None,
    lifeline_fd: Optional[int] = None,
) -> None:
    """Run a supervisor in this process until Ctrl-C, SIGTERM, SIGHUP or the lifeline
    closes; call from the main thread. Stops its server before returning.

    The process becomes the reaper of its server's orphans (see reaper): call this only
    in a process of its own (the CLI's `start`, `python -m portal_env.serving`).
    """
    handlers = {signum: signal.signal(signum, _interrupt) for signum in _STOP_SIGNALS}
    try:
        with supervisor.Supervisor(source.name, runtime, source.env_dir, policy) as sup:
            sup.reaps_orphans = reaper.become_subreaper()
            if lifeline_fd is not None:
                supervisor.stop_when_closed(sup, lifeline_fd)
            try:
                on_ready(sup.start())
                sup.watch()
            except KeyboardInterrupt:
                pass
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# -- listing and stopping ---------------------------------------------------------


def running() -> List[registry.Record]:
    """Every running portal's record (what `portal-env ps` shows), by name."""
    return registry.all_records()


def stop(name: Optional[str] = None, *, all: bool = False, timeout: float = 15.0) -> List[str]:
    """Stop portal name (or every portal with all=True); the names stopped.

    Also removes portal containers whose supervisor was killed (with all=True, or
    the one of name): a container outlives a SIGKILLed supervisor.
    """
    if bool(name) == all:
        raise ValueError("stop() takes a portal name or all=True (not both)")
    if all:
        records = registry.all_records()
    else:
        record = registry.get(find_name(name))
        if record is None:
            if name in _reap_containers():
                return [name]
            raise registry.not_running(name)
        records = [record]
    for record in records:
        _stop_supervisor(record, timeout)
    stopped = [r.name for r in records]
    if all:
        stopped += _reap_containers()
    return stopped


def _stop_supervisor(record: registry.Record, timeout: float) -> None:
    """SIGTERM the supervisor, wait for it to stop its server; SIGKILL both if it hangs."""
    _kill(record.supervisor_pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not registry.is_alive(record.supervisor_pid, record.supervisor_start):
            return
        time.sleep(0.05)
    _kill(record.supervisor_pid, signal.SIGKILL)
    if record.server_pid:
        with contextlib.suppress(OSError):
            os.killpg(record.server_pid, signal.SIGKILL)
    registry.release(record.name, record.supervisor_pid)
    if record.container:  # a container outlives its SIGKILLed supervisor: reap it
        _reap_containers()


def _reap_containers() -> List[str]:
    """Remove this user's portal containers whose supervisor is gone; their portals'
    names. Nothing to do (and no error) where no Docker daemon answers."""
    from ..runtimes import docker

    try:
        return docker.reap_orphans(docker.client(timeout=10))  # `stop` must not hang on it
    except BackendUnavailableError:
        return []


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
