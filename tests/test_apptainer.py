"""`-b apptainer`: Apptainer is not installed on the machines these tests run on, so its
command lines are checked as command lines (the argv and environment the backend would
run, built by the same code as for ch-run), and its absence is checked for a clear error.
Nothing here runs apptainer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from portal_env import config
from portal_env.errors import BackendUnavailableError
from portal_env.runtimes import catalog, get
from portal_env.runtimes.apptainer import Apptainer, ApptainerBackend
from portal_env.runtimes.imagebackend import ImageRuntime, Launch

from .conftest import cli

EXE = "/opt/apptainer/bin/apptainer"
TOKEN = "s3cret-token-of-the-server-0123456789"


def launch(image: Path, kind: str = "sif") -> Launch:
    return Launch(
        image=image,
        kind=kind,
        workdir="/opt/portal-env/app",
        argv=("/opt/portal-env/env/bin/python", "/opt/portal-env/app/env_main.py"),
        binds=(("/cache/portal_env-src/abc", "/opt/portal-env/lib"),),
        env={config.TOKEN_VAR: TOKEN, config.SOCKET_VAR: "/tmp/portal-env-0/x.sock"},
    )


def test_exec_command_line(tmp_path: Path):
    image = tmp_path / "image.sif"
    argv = Apptainer(EXE).command(launch(image))
    sockets = str(config.shared_tmp_socket_dir())
    assert argv == [
        EXE, "exec", "--cleanenv", "--no-home", "--pwd", "/opt/portal-env/app",
        "--bind", "/cache/portal_env-src/abc:/opt/portal-env/lib:ro",
        "--bind", sockets,
        str(image), "/opt/portal-env/env/bin/python", "/opt/portal-env/app/env_main.py",
    ]  # fmt: skip
    assert all(TOKEN not in arg for arg in argv)  # ps shows command lines to every user


def test_the_servers_variables_go_through_apptainerenv(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PORTAL_ENV_TOKEN", "the supervisor's own, not the server's")
    monkeypatch.setenv("APPTAINERENV_STALE", "from the user's shell")
    env = Apptainer(EXE).environment(launch(Path("/x.sif")))
    assert env["APPTAINERENV_PORTAL_ENV_TOKEN"] == TOKEN
    assert env["APPTAINERENV_PORTAL_ENV_SOCKET"] == "/tmp/portal-env-0/x.sock"
    assert "PORTAL_ENV_TOKEN" not in env and "APPTAINERENV_STALE" not in env
    assert env["PATH"]  # apptainer itself runs with the user's PATH


def test_build_command_line(tmp_path: Path):
    archive, sif = tmp_path / "image.oci.tar", tmp_path / "image.sif"
    assert Apptainer(EXE).build_command(archive, sif) == [
        EXE, "build", str(sif), f"oci-archive://{archive}"
    ]  # fmt: skip


def test_the_runtime_runs_env_main_of_the_image_with_this_hosts_portal_env(tmp_path: Path):
    """ImageRuntime.plan() is what every container tool is given (shared with charliecloud)."""
    tool = Apptainer(EXE)
    image = tmp_path / "cart.sif"
    runtime = ImageRuntime(tool, catalog.in_image("cart", image), image, "sif")
    plan = runtime.plan({config.TOKEN_VAR: TOKEN})
    argv, env = tool.command(plan), tool.environment(plan)
    assert argv[-3:] == [str(image), *launch(tmp_path).argv]
    lib = argv[argv.index("--bind") + 1]
    assert lib.endswith(":/opt/portal-env/lib:ro")
    assert Path(lib.split(":")[0], "portal_env", "portal", "server.py").is_file()
    assert env["APPTAINERENV_PORTAL_ENV_TOKEN"] == TOKEN and TOKEN not in " ".join(argv)
    assert runtime.socket_dir() == config.shared_tmp_socket_dir()


@pytest.mark.skipif(shutil.which("apptainer") is not None, reason="apptainer is installed here")
def test_without_apptainer_the_backend_says_so_and_names_the_others(tmp_path: Path):
    image = tmp_path / "cart.sif"
    image.write_bytes(b"#!/usr/bin/env run-singularity\n" + b"SIF_MAGIC" + b"\0" * 100)
    with pytest.raises(BackendUnavailableError, match="needs apptainer on PATH"):
        get("apptainer", image=str(image)).ensure(
            catalog.in_image("cart", image), force=False, reporter=None
        )
    done = cli("start", "cart", "-b", "apptainer", "--image", str(image))
    assert done.returncode == 1
    assert "-b apptainer needs apptainer on PATH" in done.stderr
    assert "-b ch" in done.stderr and "-b mm or -b venv" in done.stderr
    assert isinstance(get("apptainer"), ApptainerBackend)
