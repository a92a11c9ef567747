"""The `portal-env` command: thin click commands over catalog, runtimes, supervisor, registry.

Exit codes: 0 ok, 1 error (`Error: ...`), 2 usage error, 130 interrupted by Ctrl-C
(except a foreground `start`, for which Ctrl-C is the normal way to stop: 0).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import click

from . import config, runtimes
from .errors import PortalEnvError
from .runtimes import catalog, listing
from .serving import registry, supervisor

DEFAULT_BACKEND_VAR = "PORTAL_ENV_BACKEND"
DEFAULT_BACKEND = "docker"  # the seed's default
BACKEND_HELP = (
    "Runtime backend: docker (an image and a container), micromamba/mm (a conda prefix) "
    f"or venv (default: ${DEFAULT_BACKEND_VAR}, else {DEFAULT_BACKEND})."
)


class Reporter:
    """Shows backend progress: a rich spinner on a terminal, nothing otherwise."""

    def __init__(self) -> None:
        self._status: Any = None
        self._console: Any = None

    @contextlib.contextmanager
    def active(self) -> Iterator[Reporter]:
        if sys.stdout.isatty() and sys.stderr.isatty():
            from rich.console import Console

            self._console = Console(stderr=True)
            with self._console.status("working...") as status:
                self._status = status
                yield self
            self._status = self._console = None
        else:
            yield self

    def status(self, message: str) -> None:
        logging.getLogger(__name__).info("%s", message)
        if self._status is not None:
            self._status.update(message)

    def note(self, message: str) -> None:
        if self._console is not None:  # above the spinner, not through it
            self._console.print(message, markup=False, highlight=False)
        else:
            click.echo(message, err=True)


def _backend_option(default_from_env: bool = True) -> Any:
    if not default_from_env:
        return click.option(
            "-b",
            "--backend",
            type=click.Choice(runtimes.choices()),
            default="micromamba",
            show_default=True,
            help="Backend whose lockfile to write (micromamba/mm: conda-lock; venv: uv).",
        )
    return click.option(
        "-b",
        "--backend",
        type=click.Choice(runtimes.choices()),
        envvar=DEFAULT_BACKEND_VAR,
        show_envvar=True,
        default=DEFAULT_BACKEND,
        help=BACKEND_HELP,
    )


_path_option = click.option(
    "-p",
    "--path",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="A custom env directory (env_main.py + spec.yml); omit for a built-in env.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="portal-env")
def main(verbose: int) -> None:
    """Serve RL environments from isolated runtimes; agents use them by name.

    Example: portal-env start -p ./my_env mycart -b venv
    """
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _docker_options(command: Any) -> Any:
    """--base-image and --ca-bundle, which only the docker backend reads."""
    command = click.option(
        "--ca-bundle",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        default=None,
        help="docker: a CA bundle put in the build context as portal-env-ca.pem "
        "(for a package index behind a corporate CA).",
    )(command)
    return click.option(
        "--base-image",
        default=None,
        help="docker: base image (a Dockerfile.env's `ARG BASE_IMAGE`; for an image made "
        f"from a conda lockfile, default {config.DOCKER_BASE_IMAGE}).",
    )(command)


@main.command()
@click.argument("name")
@_backend_option()
@_path_option
@click.option("-d", "--detach", is_flag=True, help="Run in the background; stop with `stop`.")
@click.option("-f", "--force", is_flag=True, help="Rebuild the runtime even if it is cached.")
@click.option("--ready-timeout", default=120.0, show_default=True, help="Seconds to wait.")
@click.option(
    "--host",
    default=None,
    help="Listen on this interface over TCP (a free port), for agents on other nodes; "
    "default: private to this host. The token stays in the 0600 registry.",
)
@_docker_options
def start(
    name: str,
    backend: str,
    path: Optional[Path],
    detach: bool,
    force: bool,
    ready_timeout: float,
    host: Optional[str],
    base_image: Optional[str],
    ca_bundle: Optional[Path],
) -> None:
    """Build (if needed) and serve env NAME until Ctrl-C, or in the background with -d.

    Example: portal-env start -p ./my_env mycart -b venv -d
    """
    with _errors():
        source = catalog.find(name, path)
        _refuse_running(name)
        docker_options = {"base_image": base_image, "ca_bundle": ca_bundle}
        runtime = _ensure(source, backend, force, **docker_options)
        policy = supervisor.Policy(ready_timeout=ready_timeout, host=host)
        if detach:
            _start_detached(source, backend, path, policy, docker_options)
        else:
            _serve(source, runtime, policy)


@main.command()
@click.option("-e", "--env", "name", required=True, help="The env to build.")
@_backend_option()
@_path_option
@click.option("-f", "--force", is_flag=True, help="Rebuild even if the runtime is cached.")
@_docker_options
def build(
    name: str,
    backend: str,
    path: Optional[Path],
    force: bool,
    base_image: Optional[str],
    ca_bundle: Optional[Path],
) -> None:
    """Build the runtime of an env without serving it (cached: a second build is instant).

    Example: portal-env build -e mycart -p ./my_env -b venv
    """
    with _errors():
        source = catalog.find(name, path)
        runtime = _ensure(source, backend, force, base_image=base_image, ca_bundle=ca_bundle)
        click.echo(f"{name}: {runtime.backend} runtime ready at {runtime.location}")


@main.command()
@click.argument("name")
@_path_option
@_backend_option(default_from_env=False)
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    help="Conda platform to lock for (repeatable; default: the spec's platforms:, else this one).",
)
def lock(name: str, path: Optional[Path], backend: str, platforms: Tuple[str, ...]) -> None:
    """(Re)lock the spec of env NAME; run it after editing spec.yml.

    Example: portal-env lock mycart -p ./my_env --platform linux-64 --platform osx-arm64
    """
    with _errors():
        source = catalog.find(name, path)
        chosen = runtimes.get(backend)
        if platforms and not hasattr(chosen, "platforms"):
            raise click.UsageError(f"--platform applies to -b micromamba, not -b {backend}")
        if platforms:
            chosen.platforms = list(platforms)  # type: ignore[attr-defined]
        reporter = Reporter()
        with reporter.active():
            written = chosen.lock(source, reporter)
        click.echo(f"locked {name}: {written}")


@main.command(name="ls")
def list_builtins() -> None:
    """List the built-in envs, the backends their files support, and their venv locks.

    Example: portal-env ls
    """
    with _errors():
        entries = listing.builtin_entries()
        rows = [[e.name, ", ".join(e.backends), e.venv_lock] for e in entries]
        for line in _table([["NAME", "BACKENDS", "VENV LOCK"]] + rows):
            click.echo(line)


@main.command()
def ps() -> None:
    """List running portals: name, backend, address, server pid or container, uptime, restarts.

    Example: portal-env ps
    """
    with _errors():
        rows = [
            [r.name, r.backend, r.address or "-", str(r.server_pid or r.container or "-")]
            + [_uptime(r), str(r.restarts), r.state]
            for r in registry.all_records()
        ]
        header = ["NAME", "BACKEND", "ADDRESS", "SERVER", "UPTIME", "RESTARTS", "STATE"]
        for line in _table([header] + rows):
            click.echo(line)


@main.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until Ctrl-C.")
@click.option("-n", "--lines", default=0, help="Only the last N lines (default: all).")
def logs(name: str, follow: bool, lines: int) -> None:
    """Print the log of portal NAME (the server's output and supervisor events).

    Example: portal-env logs mycart -f
    """
    with _errors():
        path = registry.log_path(catalog.check_name(name))
        if not path.exists():
            raise click.ClickException(f"no log for portal {name!r} (looked for {path})")
        text = path.read_text(errors="replace")
        click.echo("\n".join(text.splitlines()[-lines:]) if lines else text, nl=False)
        if follow:
            _follow(path, len(text.encode()))


@main.command()
@click.argument("name", required=False)
@click.option("--all", "stop_all", is_flag=True, help="Stop every running portal.")
@click.option("--timeout", default=15.0, show_default=True, help="Seconds before SIGKILL.")
def stop(name: Optional[str], stop_all: bool, timeout: float) -> None:
    """Stop portal NAME (or every portal with --all) and its server.

    Example: portal-env stop mycart
    """
    with _errors():
        if bool(name) == stop_all:
            raise click.UsageError("give a portal NAME or --all (not both)")
        if stop_all:
            records = registry.all_records()
        else:
            record = registry.get(catalog.check_name(name))
            if record is None and config.container_name(name) in _reap_containers():
                click.echo(f"removed the container of {name}, whose supervisor was killed")
                return
            records = [record or _running(name)]
        for record in records:
            _stop(record, timeout)
            click.echo(f"stopped {record.name}")
        if stop_all:
            for container in _reap_containers():
                click.echo(f"removed {container}, whose supervisor was killed")


@main.command()
@click.argument("name")
@_path_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The OCI image archive to write (written whole or not at all).",
)
@click.option(
    "--base",
    type=click.Path(exists=True, path_type=Path),
    required=True,
    help="The base layer(s): a rootfs directory or tarball, a `docker save` archive or an "
    "OCI archive. It must provide the C library the prefix's Python needs.",
)
@click.option("--tag", default=None, help="Image name:tag (default: portal-env/NAME:<hash>).")
def export(name: str, path: Optional[Path], output: Path, base: Path, tag: Optional[str]) -> None:
    """Write env NAME's locked conda prefix over a base as an OCI image archive, without a
    Docker daemon; for docker/podman load, Kubernetes and Apptainer.

    \b
    Example: portal-env export mycart -p ./my_env --base rootfs.tar -o mycart.tar
    Then:    docker load -i mycart.tar   or   apptainer build mycart.sif oci-archive://mycart.tar
    """
    with _errors():
        from .runtimes import export as exporting

        reporter = Reporter()
        with reporter.active():
            result = exporting.export_image(
                catalog.find(name, path), output, base, tag=tag, reporter=reporter
            )
        click.echo(f"{result.path}: {result.tag} ({result.size / 2**20:.0f} MiB)")


@main.command()
@click.argument("name")
@click.option("--file", "as_file", is_flag=True, help="Print the path of a 0600 token file.")
def token(name: str, as_file: bool) -> None:
    """Print the token of running portal NAME, for an agent that has no access to the
    registry (an agent in a container).

    \b
    Example: docker run --network portal_env_net
    -v "$(portal-env token mycart --file)":/run/portal-env/token:ro
    -e PORTAL_ENV_TOKEN_FILE=/run/portal-env/token my-agent-image
    """
    with _errors():
        record = _running(name)
        if not as_file:
            click.echo(record.token)
            return
        from .runtimes import docker

        path = docker.token_file(record.name)
        if not path.is_file():
            raise click.ClickException(
                f"portal {name!r} ({record.backend}) has no token file; only docker portals "
                f"keep one. Pass the token instead: PORTAL_ENV_TOKEN=$(portal-env token {name})"
            )
        click.echo(str(path))


# -- helpers -----------------------------------------------------------------


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn library errors into `Error: ...` (exit 1) and Ctrl-C into exit 130."""
    try:
        yield
    except PortalEnvError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


def _ensure(
    source: catalog.EnvSource,
    backend: str,
    force: bool,
    base_image: Optional[str] = None,
    ca_bundle: Optional[Path] = None,
) -> runtimes.Runtime:
    chosen = runtimes.get(backend)
    if base_image or ca_bundle:
        if chosen.name != "docker":
            raise click.UsageError("--base-image and --ca-bundle apply to -b docker only")
        chosen.base_image, chosen.ca_bundle = base_image, ca_bundle  # type: ignore[attr-defined]
    reporter = Reporter()
    with reporter.active():
        return chosen.ensure(source, force=force, reporter=reporter)


def _refuse_running(name: str) -> None:
    record = registry.get(name)
    if record is not None:
        raise click.ClickException(
            f"portal {name!r} is already running (pid {record.supervisor_pid}); "
            f"stop it first: portal-env stop {name}"
        )


def _running(name: str) -> registry.Record:
    record = registry.get(catalog.check_name(name))
    if record is None:
        running = ", ".join(r.name for r in registry.all_records()) or "none"
        raise click.ClickException(f"no portal named {name!r} is running (running: {running})")
    return record


def _serve(source: catalog.EnvSource, runtime: runtimes.Runtime, policy: Any) -> None:
    """Run the supervisor in this process until Ctrl-C, SIGTERM or SIGHUP."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    with supervisor.Supervisor(source.name, runtime, source.env_dir, policy) as sup:
        try:
            with Reporter().active() as reporter:
                reporter.status(f"starting portal {source.name!r} and waiting for its server")
                record = sup.start()
            click.echo(
                f"portal {record.name!r} ready at {record.address} "
                f"({record.backend}, {_server(record)}) — Ctrl-C to stop",
            )
            sys.stdout.flush()
            sup.watch()
        except KeyboardInterrupt:
            click.echo(f"stopping portal {source.name!r}", err=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _start_detached(
    source: catalog.EnvSource, backend: str, path: Optional[Path], policy: Any, docker: dict
) -> None:
    """Start a supervisor in a new session and wait until the registry shows it ready."""
    command = [sys.executable, "-m", "portal_env.cli", "start", source.name, "-b", backend]
    command += ["-p", str(path)] if path is not None else []
    for option, value in docker.items():
        command += [f"--{option.replace('_', '-')}", str(value)] if value else []
    command += ["--ready-timeout", str(policy.ready_timeout)]
    command += ["--host", policy.host] if policy.host else []
    out_path = registry.logs_dir() / f"{source.name}.supervisor.log"
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    with Reporter().active() as reporter:
        reporter.status(f"starting portal {source.name!r} in the background")
        record = _wait_detached(source.name, proc, out_path, policy.ready_timeout + 30)
    click.echo(
        f"portal {record.name!r} ready at {record.address} ({record.backend}, "
        f"{_server(record)}); stop it with: portal-env stop {record.name}"
    )


def _wait_detached(
    name: str, proc: subprocess.Popen, out_path: Path, timeout: float
) -> registry.Record:
    """The ready record of the detached supervisor proc, or its error output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = registry.get(name)
        if record is not None and record.supervisor_pid == proc.pid and record.state == "ready":
            return record
        if proc.poll() is not None:
            raise click.ClickException(
                f"portal {name!r} failed to start:\n{_supervisor_output(out_path)}"
            )
        time.sleep(0.05)
    proc.terminate()
    raise click.ClickException(f"portal {name!r} was not ready in time; see {out_path}")


def _server(record: registry.Record) -> str:
    return f"pid {record.server_pid}" if record.server_pid else f"container {record.container}"


def _supervisor_output(path: Path) -> str:
    text = supervisor.tail(path, 80).strip()
    return text[len("Error: ") :] if text.startswith("Error: ") else text


def _stop(record: registry.Record, timeout: float) -> None:
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
    """Remove this user's portal containers whose supervisor is gone; their names.
    Nothing to do (and no error) where no Docker daemon answers."""
    from .errors import BackendUnavailableError
    from .runtimes import docker

    try:
        return docker.reap_orphans(docker.client(timeout=10))  # `stop` must not hang on it
    except BackendUnavailableError:
        return []


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _follow(path: Path, offset: int) -> None:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            while True:
                chunk = f.read()
                if chunk:
                    click.echo(chunk.decode(errors="replace"), nl=False)
                else:
                    time.sleep(0.2)
    except KeyboardInterrupt:
        pass


def _uptime(record: registry.Record) -> str:
    seconds = int(time.time() - record.started_at)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _table(rows: List[List[str]]) -> List[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]


if __name__ == "__main__":
    main()
