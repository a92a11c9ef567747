"""The apptainer backend (`-b apptainer`): an exported image run by Apptainer as a SIF file.

NOT RUN on the machines portal-env is tested on (Apptainer is not packaged there): the
command lines below follow Apptainer's documentation and are tested as command lines
only. The image is built once per lock and base like every image
(`apptainer build image.sif oci-archive://image.oci.tar`), or given with --image (a SIF
file, a sandbox directory, or an OCI archive, converted once). A server runs as

    apptainer exec --cleanenv --no-home --pwd /opt/portal-env/app \\
        --bind PORTAL_ENV_LIB:/opt/portal-env/lib:ro --bind /tmp/portal-env-UID \\
        image.sif /opt/portal-env/env/bin/python /opt/portal-env/app/env_main.py

with the server's variables (its token too) passed as APPTAINERENV_* in apptainer's own
environment, which `--cleanenv` lets through and no command line shows.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import IO, Dict, List, Optional

from .. import config
from ..errors import BackendUnavailableError
from .base import ProcessHandle
from .commands import run
from .image_files import DIRECTORY, SIF
from .imagebackend import ImageBackend, Launch

ENV_PREFIX = "APPTAINERENV_"  # APPTAINERENV_FOO=bar sets FOO=bar in the container


class Apptainer:
    """apptainer: SIF files and sandbox directories.

    Args:
        exe: The apptainer executable (default: `apptainer` on PATH).
    """

    name = "apptainer"
    flag = "apptainer"
    runs = (SIF, DIRECTORY)

    def __init__(self, exe: Optional[str] = None) -> None:
        self.exe = exe

    def executable(self) -> str:
        found = self.exe or shutil.which("apptainer")
        if found is None:
            raise BackendUnavailableError(
                "-b apptainer needs apptainer on PATH (on a cluster e.g. `module load "
                "apptainer`); else use -b ch (Charliecloud's ch-run), -b mm or -b venv"
            )
        return found

    def check(self) -> None:
        self.executable()

    def built_kind(self) -> str:
        return SIF

    def build_command(self, archive: Path, sif: Path) -> List[str]:
        """`apptainer build SIF oci-archive://ARCHIVE`: no root or fakeroot needed."""
        return [self.executable(), "build", str(sif), f"oci-archive://{archive}"]

    def convert(self, archive: Path, out_dir: Path, kind: str) -> str:
        sif = out_dir / "image.sif"
        run(self.build_command(archive, sif), f"build the Apptainer image {sif} from {archive}")
        return sif.name

    def command(self, launch: Launch) -> List[str]:
        """The `apptainer exec` command line (nothing secret in it)."""
        argv = [self.executable(), "exec", "--cleanenv", "--no-home", "--pwd", launch.workdir]
        for host, inside in launch.binds:
            argv += ["--bind", f"{host}:{inside}:ro"]
        sockets = config.shared_tmp_socket_dir()
        if sockets is not None:  # /tmp is bound by default; a site may have turned that off
            argv += ["--bind", str(sockets)]
        return argv + [str(launch.image), *launch.argv]

    def environment(self, launch: Launch) -> Dict[str, str]:
        """apptainer's environment: ours without portal-env's settings, plus the server's
        variables as APPTAINERENV_*, the only ones --cleanenv lets into the container."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PORTAL_ENV_", ENV_PREFIX))
        }
        env.update({ENV_PREFIX + key: value for key, value in launch.env.items()})
        return env

    def start(self, launch: Launch, log: IO[bytes]) -> ProcessHandle:
        return ProcessHandle.spawn(self.command(launch), self.environment(launch), Path("/"), log)


class ApptainerBackend(ImageBackend):
    """`-b apptainer`: images served by apptainer (see the module's doc; not run here)."""

    def __init__(self, base_image: Optional[str] = None, image: Optional[str] = None) -> None:
        super().__init__(Apptainer(), base_image=base_image, image=image)
