"""The charliecloud backend (`-b charliecloud`, `-b ch`): an exported image run by
Charliecloud's `ch-run`, as any user, with no daemon and no setuid helper.

Images built into the cache are SquashFS files where ch-run can mount them itself (it is
linked with squashfuse) and mksquashfs is here, else directories;
$PORTAL_ENV_CH_IMAGE=squash|dir chooses. One file per env keeps a shared filesystem
(Lustre, GPFS) from serving thousands of small files at every start.

ch-run runs a directory image by exec'ing the server in place: the server is its
process. For a SquashFS image, ch-run stays as the server's parent and serves the mount
(in a mount namespace of its own, so no mount is ever visible outside it); it exits,
unmounting, once the server has exited, but a SIGTERM to it ends it at once, leaving
the server without its files. So a stop signals the server first, each server gets a
mount point of its own, and the server asks the kernel to kill it with its parent
($PORTAL_ENV_DIE_WITH_PARENT), so a killed ch-run never leaves it running.
"""

from __future__ import annotations

import functools
import getpass
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Dict, List, Optional

from .. import config
from ..errors import BackendUnavailableError, BuildError
from ..serving import registry
from . import image_files, unpack
from .base import ProcessHandle, child_pids
from .image_files import DIRECTORY, SQUASH
from .imagebackend import ImageBackend, Launch

logger = logging.getLogger(__name__)

FORMAT_VAR = "PORTAL_ENV_CH_IMAGE"  # "squash" or "dir": the form of images built for ch-run
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@functools.lru_cache(maxsize=None)
def executable() -> str:
    """ch-run's path, or a BackendUnavailableError saying how to get it."""
    found = shutil.which("ch-run")
    if found is None:
        raise BackendUnavailableError(
            "-b charliecloud needs Charliecloud's ch-run on PATH (Debian/Ubuntu: apt install "
            "charliecloud; on a cluster e.g. `module load charliecloud`); without it use "
            "-b mm or -b venv"
        )
    return found


@functools.lru_cache(maxsize=None)
def mounts_squashfs(exe: str) -> bool:
    """Whether ch-run mounts SquashFS images itself: `ch-run --feature squash` where the
    version knows the question (0.32 and later), else whether it links squashfuse."""
    env = dict(os.environ, USER=_user())  # ch-run refuses to do anything without $USER
    done = subprocess.run([exe, "--feature", "squash"], capture_output=True, text=True, env=env)
    if done.returncode == 0:
        return True
    if "unknown feature" not in done.stderr:
        return False
    try:
        return b"libsquashfuse" in Path(exe).read_bytes()
    except OSError:
        return False


class Charliecloud:
    """ch-run: directory and SquashFS images."""

    name = "charliecloud"
    flag = "ch"
    runs = (DIRECTORY, SQUASH)

    def check(self) -> None:
        executable()

    def built_kind(self) -> str:
        wanted = os.environ.get(FORMAT_VAR, "").strip().lower()
        if wanted in ("squash", "squashfs"):
            if not mounts_squashfs(executable()):
                raise BuildError(
                    f"{FORMAT_VAR}={wanted}, but this ch-run ({executable()}) cannot mount "
                    f"SquashFS images (it was built without squashfuse); use {FORMAT_VAR}=dir"
                )
            return SQUASH
        if wanted == "dir":
            return DIRECTORY
        if wanted:
            raise BuildError(f"{FORMAT_VAR}={wanted!r}: use squash or dir")
        if shutil.which("mksquashfs") and mounts_squashfs(executable()):
            return SQUASH
        return DIRECTORY

    def convert(self, archive: Path, out_dir: Path, kind: str) -> str:
        """Unpack the archive into out_dir/image; for SQUASH, pack that into image.sqfs."""
        tree = out_dir / "image"
        unpack.unpack(archive, tree)
        if kind == DIRECTORY:
            return tree.name
        image_files.make_squash(tree, out_dir / "image.sqfs")
        shutil.rmtree(tree)
        return "image.sqfs"

    def command(self, launch: Launch, mount_dir: Optional[Path] = None) -> List[str]:
        """The ch-run command line: the image's own environment (/ch/environment), the
        binds, the working directory, and for a SquashFS image its mount point."""
        argv = [executable(), "--env-no-expand", "--set-env", f"--cd={launch.workdir}"]
        argv += [f"--bind={host}:{inside}" for host, inside in launch.binds]
        if launch.kind == SQUASH:
            if mount_dir is None:
                raise ValueError("a SquashFS image needs a mount point")
            argv.append(f"--mount={mount_dir}")
        return argv + [str(launch.image), "--", *launch.argv]

    def environment(self, launch: Launch) -> Dict[str, str]:
        """ch-run passes its environment on: only what it needs ($USER, PATH) plus the
        server's variables. No $TMPDIR, so the container's /tmp is the host's /tmp."""
        env = {"USER": _user(), "PATH": os.environ.get("PATH") or _DEFAULT_PATH}
        env.update(launch.env)
        if launch.kind == SQUASH:  # its parent, ch-run, serves the files it runs from
            env[config.DIE_WITH_PARENT_VAR] = "1"
        return env

    def start(self, launch: Launch, log: IO[bytes]) -> ChRunHandle:
        mount_dir = _mount_point(launch) if launch.kind == SQUASH else None
        try:
            command = self.command(launch, mount_dir)
            process = ProcessHandle.spawn(command, self.environment(launch), Path("/"), log)
        except BaseException:
            if mount_dir is not None:
                mount_dir.rmdir()
            raise
        return ChRunHandle(process.proc, mount_dir)


def _user() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry
        return f"uid{os.getuid()}"


def _mount_point(launch: Launch) -> Path:
    """A new empty directory for ch-run to mount launch's image on, named after this
    supervisor process; those of supervisors that are gone (SIGKILLed) are removed."""
    root = config.shared_tmp_socket_dir()
    if root is None:
        raise BuildError(
            f"no private directory in /tmp for ch-run's mount point of {launch.image} "
            f"(/tmp/portal-env-{os.getuid()} belongs to someone else or is not a directory)"
        )
    _sweep_mount_points(root)
    pid = os.getpid()
    path = root / f".mnt-{pid}-{registry.process_start_time(pid)}-{os.urandom(4).hex()}"
    path.mkdir(mode=0o700)
    return path


def _sweep_mount_points(root: Path) -> None:
    for path in root.glob(".mnt-*-*-*"):
        pid, start, _ = path.name[len(".mnt-") :].split("-", 2)
        if pid.isdigit() and not registry.is_alive(int(pid), start):
            try:
                path.rmdir()  # empty: the mount was ch-run's own, in its own namespace
            except OSError:
                pass


class ChRunHandle(ProcessHandle):
    """ch-run serving one server. For a SquashFS image (mount_dir set), a stop signals the
    server first and lets ch-run unmount and exit after it; then the mount point goes."""

    def __init__(self, proc: subprocess.Popen, mount_dir: Optional[Path]) -> None:
        super().__init__(proc)
        self.mount_dir = mount_dir

    def stop(self, grace: float) -> Optional[int]:
        deadline = time.monotonic() + grace
        if self.mount_dir is not None and not self._stopped and self.proc.poll() is None:
            for pid in child_pids(self.proc.pid):
                _signal(pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        code = super().stop(max(0.0, deadline - time.monotonic()))
        if self.mount_dir is not None:
            try:
                self.mount_dir.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:  # not empty: never delete what might be a mounted image
                logger.warning("leaving the mount point %s in place: %s", self.mount_dir, exc)
        return code


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


class CharliecloudBackend(ImageBackend):
    """`-b charliecloud`: images served by ch-run (see the module's doc)."""

    def __init__(self, base_image: Optional[str] = None, image: Optional[str] = None) -> None:
        super().__init__(Charliecloud(), base_image=base_image, image=image)
