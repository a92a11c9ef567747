"""Real Docker for the tests: a daemon, a local base image, its rootfs tarball, a wheelhouse.

No image can be pulled here (no registry is reachable), so the base image is made
locally: `debootstrap` a Debian bookworm minbase with python3, tar it, `docker import`
it. Container builds cannot reach PyPI either, so wheels are downloaded on the host
and mounted into containers for `pip install --no-index --find-links`.

Everything slow is cached on disk under ~/.cache/portal-env-test/ (or
$PORTAL_ENV_TEST_CACHE) and built under a file lock, so a second run (or a second
test process) reuses it.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import docker
import pytest
import requests
from filelock import FileLock

CACHE = Path(os.environ.get("PORTAL_ENV_TEST_CACHE") or Path.home() / ".cache" / "portal-env-test")
BASE_REPOSITORY = "portal-env-test-base"
BASE_TAG = "bookworm-py311"
BASE_IMAGE = f"{BASE_REPOSITORY}:{BASE_TAG}"
ROOTFS_TAR = CACHE / "rootfs-bookworm-py311.tar"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip")
# What a portal server imports; pip download adds their dependencies
# (cloudpickle, typing-extensions, farama-notifications).
SERVER_REQUIREMENTS = ("numpy", "gymnasium", "msgpack")
PYTHON_VERSION = "3.11"  # bookworm's python3
# Debian 11 for the ancient-runtime tests: python2.7 2.7.18 (python3.9 comes with it).
BULLSEYE_TAG = "bullseye-py27"
BULLSEYE_TAR = CACHE / "rootfs-bullseye-py27.tar"
BULLSEYE_PACKAGES = ("python2.7", "python3")
DAEMON_WAIT = 60.0  # seconds for a dockerd we start to answer

_client: Optional[docker.DockerClient] = None
_unavailable: Optional[str] = None  # why no daemon can be had (skip reason), once known


def client() -> docker.DockerClient:
    """A client of a daemon that answers; starts `dockerd` if we can, else skips the test.

    Cached per process, and so is the outcome of failing to get one (no 60 s wait per test).
    """
    global _client, _unavailable
    if _client is not None:
        return _client
    if _unavailable is not None:
        pytest.skip(_unavailable)
    found = _connect()
    if found is None:
        dockerd = shutil.which("dockerd")
        if os.geteuid() != 0 or dockerd is None:
            why = "dockerd is not on PATH" if dockerd is None else "not root"
            _unavailable = (
                "no Docker daemon answers (DOCKER_HOST or /var/run/docker.sock) "
                f"and none can be started: {why}"
            )
            pytest.skip(_unavailable)
        found = _start_daemon(dockerd)
    _client = found
    return found


def _connect(base_url: Optional[str] = None) -> Optional[docker.DockerClient]:
    try:
        if base_url is None:
            candidate = docker.from_env(timeout=10)
        else:
            candidate = docker.DockerClient(base_url=base_url, timeout=10)
        candidate.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return None
    return candidate


def _start_daemon(dockerd: str) -> docker.DockerClient:
    """Start dockerd in the background (stopped at interpreter exit) and wait for it."""
    log_fd, log_name = tempfile.mkstemp(prefix="portal-env-test-dockerd-", suffix=".log")
    with os.fdopen(log_fd, "w") as log:
        # A session of its own: a Ctrl-C of the tests must not kill it before atexit does.
        proc = subprocess.Popen(
            [dockerd],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    atexit.register(_stop_daemon, proc)
    deadline = time.monotonic() + DAEMON_WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        # dockerd listens on the default socket whatever DOCKER_HOST says.
        found = _connect("unix:///var/run/docker.sock")
        if found is not None:
            return found
        time.sleep(0.5)
    if proc.poll() is not None:
        state = f"exited with code {proc.returncode} before answering"
    else:
        state = f"did not answer within {DAEMON_WAIT:.0f} s"
    _stop_daemon(proc)
    raise RuntimeError(
        f"started {dockerd} (pid {proc.pid}) but it {state}; "
        f"last lines of its log {log_name}:\n{_tail(Path(log_name))}"
    )


def _stop_daemon(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(cannot read: {error})"


def base_image() -> str:
    """Tag of a local bookworm minbase image with python3, venv and pip; imported if missing."""
    return _imported(BASE_TAG, rootfs_tar)


def bullseye_image() -> str:
    """Tag of a local Debian 11 (bullseye) minbase image with python2.7 (2.7.18) and
    python3.9, the old distribution of the ancient-runtime tests; imported if missing."""
    return _imported(BULLSEYE_TAG, bullseye_rootfs_tar)


def _imported(tag: str, make_tar: Callable[[], Path]) -> str:
    api = client()
    image = f"{BASE_REPOSITORY}:{tag}"
    if _has_image(api, image):
        return image
    tar = make_tar()
    with FileLock(str(CACHE / "base-image.lock")):
        if _has_image(api, image):
            return image
        # A path (not a file object) makes docker-py stream it with no read timeout.
        result = api.api.import_image(
            src=str(tar),
            repository=BASE_REPOSITORY,
            tag=tag,
            changes=['ENV LANG="C.UTF-8"', 'CMD ["/bin/bash"]'],
        )
        if not _has_image(api, image):
            raise RuntimeError(f"docker import of {tar} as {image} failed: {result}")
    return image


def _has_image(api: docker.DockerClient, tag: str) -> bool:
    try:
        api.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def rootfs_tar() -> Path:
    """The cached rootfs tarball of the base image (debootstrapped once if missing).

    Also usable as the base layer of an image archive written without a daemon.
    """
    return _rootfs(ROOTFS_TAR, "bookworm", BASE_PACKAGES)


def bullseye_rootfs_tar() -> Path:
    """The cached rootfs tarball of the bullseye image (~40 s of debootstrap, once)."""
    return _rootfs(BULLSEYE_TAR, "bullseye", BULLSEYE_PACKAGES)


def _rootfs(target: Path, suite: str, packages: Sequence[str]) -> Path:
    if target.is_file():
        return target
    if os.geteuid() != 0:
        pytest.skip(f"{target} is missing and making it needs root (debootstrap)")
    if shutil.which("debootstrap") is None:
        pytest.skip(f"{target} is missing and debootstrap is not on PATH to make it")
    CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(CACHE / "rootfs.lock")):
        if not target.is_file():
            for stale in CACHE.glob("rootfs-build-*"):  # from a killed build; we hold the lock
                _remove_tree(stale)
            _build_rootfs_tar(target, suite, packages)
    return target


def _build_rootfs_tar(target: Path, suite: str, packages: Sequence[str]) -> None:
    # Built in a temp dir next to the target, renamed into place when complete:
    # an interrupted build leaves no half-made tarball under the final name.
    work = Path(tempfile.mkdtemp(prefix="rootfs-build-", dir=CACHE))
    rootfs = work / "rootfs"
    try:
        command = ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}"]
        _run(command + [suite, str(rootfs)], f"debootstrap of the {suite} rootfs")
        _unmount_under(work)  # before emptying its dev/: nothing of the host's may be there
        for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "dev/*"):
            for path in rootfs.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        partial = work / "rootfs.tar"
        _run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], "tar")
        os.replace(partial, target)
    finally:
        _remove_tree(work)


def _remove_tree(path: Path) -> None:
    """rmtree, after unmounting what a failed debootstrap may have left mounted (/proc, /sys
    or a bind-mounted /dev in its chroot), so that rmtree cannot enter the host's."""
    _unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)


def _unmount_under(path: Path) -> None:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def _run(command: List[str], what: str) -> None:
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.splitlines()[-30:])
        raise RuntimeError(f"{what} failed ({' '.join(command)}), exit {done.returncode}:\n{tail}")


def wheelhouse(*requirements: str) -> Path:
    """A directory of binary wheels for CPython 3.11 on Linux of this machine's architecture.

    Always holds what a portal server needs (SERVER_REQUIREMENTS and their dependencies),
    plus `requirements`; for `pip install --no-index --find-links` inside a container.
    """
    wanted = sorted(set(SERVER_REQUIREMENTS) | set(requirements))
    arch = platform.machine()
    key = json.dumps({"requirements": wanted, "python": PYTHON_VERSION, "arch": arch})
    target = CACHE / f"wheels-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    # bookworm has glibc 2.36; pip does not expand manylinux_2_x tags itself.
    platforms = [f"manylinux_2_{minor}_{arch}" for minor in range(36, 4, -1)]
    platforms += [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:"]
    command += ["--python-version", PYTHON_VERSION, "--implementation", "cp"]
    command += [f"--platform={name}" for name in platforms]
    return made_once(
        target, lambda into: _run([*command, "-d", str(into), *wanted], f"pip download of {wanted}")
    )


def made_once(target: Path, download: Callable[[Path], None]) -> Path:
    """target, a directory of downloads (or an install) made once: download(dir) fills a
    fresh directory under the cache's lock, which then becomes target whole (a killed
    download leaves none)."""
    if target.is_dir():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(CACHE / "wheels.lock")):
        if target.is_dir():
            return target
        for stale in CACHE.glob("wheels-download-*"):  # from a killed download
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix="wheels-download-", dir=CACHE))
        try:
            download(work / "wheels")
            os.replace(work / "wheels", target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _link_into(source: Path, directory: Path) -> None:
    """Every file of source into directory: hard links, or copies across filesystems."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        try:
            os.link(path, directory / path.name)
        except OSError:  # another filesystem
            shutil.copy(path, directory)


CARTPOLE_DOCKERFILE = """\
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
COPY wheels /wheels
RUN python3 -m venv /venv && /venv/bin/pip install --no-index --find-links /wheels \\
    gymnasium numpy msgpack
WORKDIR /env
COPY env_main.py .
CMD ["/venv/bin/python", "env_main.py"]
"""


def dockerfile_env(env_dir: Path, env_main: str) -> Path:
    """A custom env dir: env_main.py, a Dockerfile.env (its BASE_IMAGE is --base-image)
    and the wheelhouse it installs from with --no-index (no index inside builds)."""
    env_dir.mkdir(parents=True, exist_ok=True)
    (env_dir / "env_main.py").write_text(env_main)
    (env_dir / "Dockerfile.env").write_text(CARTPOLE_DOCKERFILE)
    _link_into(wheelhouse(*SERVER_REQUIREMENTS), env_dir / "wheels")
    return env_dir


ANCIENT_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ancient_cartpole"


def py27_wheelhouse() -> Path:
    """What examples/ancient_cartpole installs under Python 2.7, downloaded on this host by
    its own fetch_wheels.sh (cached by that script and its requirements.txt)."""
    script, requirements = ANCIENT_EXAMPLE / "fetch_wheels.sh", ANCIENT_EXAMPLE / "requirements.txt"
    digest = hashlib.sha256(script.read_bytes() + requirements.read_bytes()).hexdigest()[:16]
    target = CACHE / f"wheels-py27-{digest}"
    return made_once(
        target, lambda into: _run(["sh", str(script), sys.executable, str(into)], "fetch_wheels.sh")
    )


def ancient_env(env_dir: Path) -> Path:
    """A copy of examples/ancient_cartpole with the Python 2.7 wheelhouse in its wheels/
    (so its image builds without network)."""
    shutil.copytree(ANCIENT_EXAMPLE, env_dir, ignore=shutil.ignore_patterns("wheels"))
    _link_into(py27_wheelhouse(), env_dir / "wheels")
    return env_dir
