"""The `portal-env` command: parsing and printing over the lifecycle API (serving.lifecycle).

Exit codes: 0 ok, 1 error (`Error: ...`), 2 usage error, 130 interrupted by Ctrl-C
(except a foreground `start`, for which Ctrl-C is the normal way to stop: 0).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import click

from . import config, runtimes
from .errors import PortalEnvError
from .runtimes import catalog, listing
from .serving import lifecycle, registry, supervisor

BACKEND_HELP = (
    "Runtime backend: docker (an image and a container), micromamba/mm (a conda prefix), "
    "venv, or an image run without a daemon: charliecloud/ch (ch-run) or apptainer "
    f"(default: ${lifecycle.BACKEND_VAR}, else {lifecycle.DEFAULT_BACKEND})."
)
LOCK_BACKEND_HELP = (
    "Which lockfile to write: venv (uv) or micromamba/mm (conda-lock). Default: every "
    "lockfile the env has; for an env with none, venv when its spec needs only pip "
    "packages, else micromamba."
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


def _backend_option(default_help: str = BACKEND_HELP) -> Any:
    return click.option(
        "-b",
        "--backend",
        type=click.Choice(runtimes.choices()),
        default=None,
        help=default_help,
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


def _image_options(command: Any) -> Any:
    """--base-image (docker, charliecloud, apptainer), --ca-bundle (docker) and --image
    (charliecloud, apptainer)."""
    command = click.option(
        "--image",
        type=click.Path(exists=True, path_type=Path),
        default=None,
        help="charliecloud, apptainer: serve this image instead of building one: a SquashFS "
        "or SIF file, an image directory, or an OCI archive (`portal-env export`).",
    )(command)
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
        f"from a conda lockfile, default {config.DOCKER_BASE_IMAGE}). charliecloud, "
        "apptainer: the base the image is built on (a rootfs directory or tarball, a "
        "`docker save` or OCI archive).",
    )(command)


@main.command()
@click.argument("name")
@_backend_option()
@_path_option
@click.option("-d", "--detach", is_flag=True, help="Run in the background; stop with `stop`.")
@click.option("-f", "--force", is_flag=True, help="Rebuild the runtime even if it is cached.")
@click.option(
    "--host",
    default=None,
    help="Listen over TCP on this interface (e.g. a node's address for agents on other "
    "hosts; always with a token). Default: a private Unix socket (loopback for docker).",
)
@click.option("--ready-timeout", default=120.0, show_default=True, help="Seconds to wait.")
@_image_options
def start(
    name: str,
    backend: Optional[str],
    path: Optional[Path],
    detach: bool,
    force: bool,
    host: Optional[str],
    ready_timeout: float,
    base_image: Optional[str],
    ca_bundle: Optional[Path],
    image: Optional[Path],
) -> None:
    """Build (if needed) and serve env NAME until Ctrl-C, or in the background with -d.

    Example: portal-env start -p ./my_env mycart -b venv -d
    """
    options = dict(
        backend=backend, force=force, base_image=base_image, ca_bundle=ca_bundle, image=image
    )
    if detach:
        with _errors(), Reporter().active() as reporter:
            record = lifecycle.serve(
                name, path=path, detach=True, host=host, ready_timeout=ready_timeout,
                reporter=reporter, **options,
            ).record  # fmt: skip
        click.echo(
            f"portal {name!r} ready at {record.address} ({record.backend}, "
            f"{_server(record)}); stop it with: portal-env stop {name}"
        )
        return
    with _errors(), Reporter().active() as reporter:
        source = lifecycle.find(name, path, image)
        registry.refuse_running(source.name)
        runtime = lifecycle.build(name, path=path, reporter=reporter, **options)
    policy = supervisor.Policy(ready_timeout=ready_timeout, host=host)
    with _errors():
        lifecycle.supervise(source, runtime, policy, on_ready=_announce)
    click.echo(f"stopped portal {name!r}", err=True)


def _announce(record: registry.Record) -> None:
    click.echo(
        f"portal {record.name!r} ready at {record.address} "
        f"({record.backend}, {_server(record)}) — Ctrl-C to stop"
    )
    sys.stdout.flush()


@main.command()
@click.argument("name", required=False)
@click.option("-e", "--env", "env_name", default=None, help="The env to build (or give NAME).")
@_backend_option()
@_path_option
@click.option("-f", "--force", is_flag=True, help="Rebuild even if the runtime is cached.")
@_image_options
def build(
    name: Optional[str],
    env_name: Optional[str],
    backend: Optional[str],
    path: Optional[Path],
    force: bool,
    base_image: Optional[str],
    ca_bundle: Optional[Path],
    image: Optional[Path],
) -> None:
    """Build the runtime of env NAME without serving it (cached: a second build is instant).

    Example: portal-env build mycart -p ./my_env -b venv   (the seed's `-e mycart` works too)
    """
    if bool(name) == bool(env_name):
        raise click.UsageError("give the env as NAME or as -e NAME (one of them)")
    name = name or env_name
    with _errors(), Reporter().active() as reporter:
        runtime = lifecycle.build(
            name, path=path, backend=backend, force=force, base_image=base_image,
            ca_bundle=ca_bundle, image=image, reporter=reporter,
        )  # fmt: skip
    click.echo(f"{name}: {runtime.backend} runtime ready at {runtime.location}")


@main.command()
@click.argument("name")
@_path_option
@_backend_option(LOCK_BACKEND_HELP)
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    help="Conda platform to lock for (repeatable; default: the spec's platforms:, else this one).",
)
def lock(
    name: str, path: Optional[Path], backend: Optional[str], platforms: Tuple[str, ...]
) -> None:
    """(Re)lock the spec of env NAME; run it after editing spec.yml.

    A custom env's lockfile goes beside its spec.yml; a built-in's goes to your lock
    directory ($PORTAL_ENV_LOCK_DIR, else lockfiles/ in the state dir), never into the
    installed package, and is used before the lock shipped with portal-env.

    Example: portal-env lock mycart -p ./my_env --platform linux-64 --platform osx-arm64
    """
    if platforms and backend is None:
        backend = "micromamba"
    with _errors(), Reporter().active() as reporter:
        written = lifecycle.lock(
            name, path=path, backend=backend, platforms=platforms, reporter=reporter
        )
    for path_written in written:
        click.echo(f"locked {name}: {path_written}")


@main.command(name="ls")
def list_builtins() -> None:
    """List the built-in envs, the backends their files support, and their locks.

    A lock is "shipped" with portal-env, or "yours" (made by `portal-env lock NAME`, in
    $PORTAL_ENV_LOCK_DIR or the state dir's lockfiles/; used before a shipped one).

    Example: portal-env ls
    """
    with _errors():
        entries = listing.builtin_entries()
        rows = [[e.name, ", ".join(e.backends), e.venv_lock, e.conda_lock] for e in entries]
        for line in _table([["NAME", "BACKENDS", "VENV LOCK", "CONDA LOCK"]] + rows):
            click.echo(line)


@main.command()
def ps() -> None:
    """List running portals: name, backend, address, server, uptime, restarts, state.

    Example: portal-env ps
    """
    with _errors():
        rows = [
            [r.name, r.backend, r.address or "-", str(r.server_pid or r.container or "-")]
            + [_uptime(r), str(r.restarts), r.state]
            for r in lifecycle.running()
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
    if bool(name) == stop_all:
        raise click.UsageError("give a portal NAME or --all (not both)")
    with _errors():
        for stopped in lifecycle.stop(name, all=stop_all, timeout=timeout):
            click.echo(f"stopped {stopped}")


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
    """Write env NAME as an OCI image archive, without a Docker daemon.

    The archive holds the env's locked conda prefix over a base, for docker or podman load,
    Kubernetes, Charliecloud and Apptainer.

    Example: portal-env export mycart -p ./my_env --base rootfs.tar -o mycart.tar

    Then: docker load -i mycart.tar (or: apptainer build mycart.sif oci-archive://mycart.tar)
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
    """Print the token of running portal NAME, for an agent that cannot read the registry.

    An agent in a container, say: pass it as PORTAL_ENV_TOKEN, or (docker portals) mount the
    0600 file that --file names and set PORTAL_ENV_TOKEN_FILE to where it is mounted.

    Example: PORTAL_ENV_TOKEN=$(portal-env token mycart)

    Example: docker run -v "$(portal-env token mycart --file)":/run/token:ro ...
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


def _running(name: str) -> registry.Record:
    record = registry.get(catalog.check_name(name))
    if record is None:
        raise registry.not_running(name)
    return record


def _server(record: registry.Record) -> str:
    return f"pid {record.server_pid}" if record.server_pid else f"container {record.container}"


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
