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

from . import catalog, listing, registry, runtimes, supervisor
from .errors import PortalEnvError

DEFAULT_BACKEND_VAR = "PORTAL_ENV_BACKEND"
DEFAULT_BACKEND = "docker"  # the seed's default; `-b venv` (or $PORTAL_ENV_BACKEND) until then
BACKEND_HELP = (
    f"Runtime backend (default: ${DEFAULT_BACKEND_VAR}, else {DEFAULT_BACKEND}; "
    "this version implements venv and micromamba (mm))."
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


@main.command()
@click.argument("name")
@_backend_option()
@_path_option
@click.option("-d", "--detach", is_flag=True, help="Run in the background; stop with `stop`.")
@click.option("-f", "--force", is_flag=True, help="Rebuild the runtime even if it is cached.")
@click.option("--ready-timeout", default=120.0, show_default=True, help="Seconds to wait.")
def start(
    name: str, backend: str, path: Optional[Path], detach: bool, force: bool, ready_timeout: float
) -> None:
    """Build (if needed) and serve env NAME until Ctrl-C, or in the background with -d.

    Example: portal-env start -p ./my_env mycart -b venv -d
    """
    with _errors():
        source = catalog.find(name, path)
        _refuse_running(name)
        runtime = _ensure(source, backend, force)
        policy = supervisor.Policy(ready_timeout=ready_timeout)
        if detach:
            _start_detached(source, backend, path, policy)
        else:
            _serve(source, runtime, policy)


@main.command()
@click.option("-e", "--env", "name", required=True, help="The env to build.")
@_backend_option()
@_path_option
@click.option("-f", "--force", is_flag=True, help="Rebuild even if the runtime is cached.")
def build(name: str, backend: str, path: Optional[Path], force: bool) -> None:
    """Build the runtime of an env without serving it (cached: a second build is instant).

    Example: portal-env build -e mycart -p ./my_env -b venv
    """
    with _errors():
        runtime = _ensure(catalog.find(name, path), backend, force)
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
        rows = [[e.name, ", ".join(_mark(b) for b in e.backends), e.venv_lock] for e in entries]
        for line in _table([["NAME", "BACKENDS", "VENV LOCK"]] + rows):
            click.echo(line)
        if any("*" in row[1] for row in rows):
            click.echo("* not available in this version of portal-env")


def _mark(backend: str) -> str:
    return backend if backend in runtimes.AVAILABLE else f"{backend}*"


@main.command()
def ps() -> None:
    """List running portals: name, backend, address, pid, uptime, restarts.

    Example: portal-env ps
    """
    with _errors():
        rows = [
            [r.name, r.backend, r.address or "-", str(r.server_pid or "-"), _uptime(r)]
            + [str(r.restarts), r.state]
            for r in registry.all_records()
        ]
        header = ["NAME", "BACKEND", "ADDRESS", "PID", "UPTIME", "RESTARTS", "STATE"]
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
        records = registry.all_records() if stop_all else [_running(name)]
        for record in records:
            _stop(record, timeout)
            click.echo(f"stopped {record.name}")


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


def _ensure(source: catalog.EnvSource, backend: str, force: bool) -> runtimes.Runtime:
    reporter = Reporter()
    with reporter.active():
        return runtimes.get(backend).ensure(source, force=force, reporter=reporter)


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
                f"({record.backend}, pid {record.server_pid}) — Ctrl-C to stop",
            )
            sys.stdout.flush()
            sup.watch()
        except KeyboardInterrupt:
            click.echo(f"stopping portal {source.name!r}", err=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _start_detached(
    source: catalog.EnvSource, backend: str, path: Optional[Path], policy: Any
) -> None:
    """Start a supervisor in a new session and wait until the registry shows it ready."""
    command = [sys.executable, "-m", "portal_env.cli", "start", source.name, "-b", backend]
    command += ["-p", str(path)] if path is not None else []
    command += ["--ready-timeout", str(policy.ready_timeout)]
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
        f"pid {record.server_pid}); stop it with: portal-env stop {record.name}"
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
