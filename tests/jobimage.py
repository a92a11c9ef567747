"""The image the whole-job tests run in, made once per content and cached.

It is the Docker tests' debootstrap bookworm base plus, under /opt/portal-test:
this portal-env installed into /opt/venv (from wheels downloaded on the host: no index
is reachable from inside), a wheelhouse the venv backend installs from (UV_OFFLINE,
UV_FIND_LINKS), a local conda channel with numpy, gymnasium and msgpack as conda
packages (so a conda lock of it has no pip section and installs with no index either),
three env dirs (CartPole for -b venv, CartPole of the channel for -b mm, locked inside the
image by portal-env itself, and a 16 MB-observation env) and tests/whole_job.py.

Made as a directory, which ch-run runs, by unpacking the base and running pip and
`portal-env lock` inside it with `ch-run -w` (as root); and imported from that directory
into dockerd (`docker import`), so the Docker and the Charliecloud tests run the same
files. Cached in ~/.cache/portal-env-test (or $PORTAL_ENV_TEST_CACHE) under a key of
everything that goes in: this checkout's portal-env, the wheels, the base, the envs.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import docker
import pytest
from filelock import FileLock

from . import dockerhost
from .conda_channel import build_channel

ROOT = Path(__file__).resolve().parent.parent
CACHE = dockerhost.CACHE
REPOSITORY = "portal-env-test-job"
TEST_ROOT = "/opt/portal-test"  # in the image
VENV = "/opt/venv"  # in the image: portal-env and its dependencies
PYTHON = "/usr/bin/python3.11"  # the base's interpreter (Debian bookworm's)
USER_HOME = "/home/job"  # in the image: exists, owned by root, so read-only for the job
PATH = f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin"
# What the job's environment sets: build from files in the image only (see whole_job.py).
JOB_ENV = {
    "PATH": PATH,
    "HOME": USER_HOME,
    "LANG": "C.UTF-8",
    "UV_OFFLINE": "1",
    "UV_FIND_LINKS": f"{TEST_ROOT}/wheels",
}
BIG_ENV = '''"""16 MB observations (4096 x 1024 float32), to fill a 64 MB /dev/shm."""

import gymnasium
import numpy as np
from gymnasium import spaces

from portal_env import EnvSidePortal


class Big(gymnasium.Env):
    observation_space = spaces.Box(0.0, 1.0, (4096, 1024), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.random((4096, 1024), dtype=np.float32), {}

    def step(self, action):
        return self.np_random.random((4096, 1024), dtype=np.float32), 1.0, False, False, {}


gymnasium.register("Big-v0", entry_point=Big)

if __name__ == "__main__":
    EnvSidePortal(env_factory=gymnasium.make).run()
'''
# An env whose server leaves an orphan behind (a child that forks a grandchild and exits
# at once, the way a daemon starts); the grandchild exits after a second.
ORPHAN_MAKER = """import os, time
child = os.fork()
if child == 0:
    if os.fork() == 0:
        time.sleep(1.0)
        os._exit(0)
    os._exit(0)
os.waitpid(child, 0)
"""
CONDA_SPEC = f"""channels:
  - file://{TEST_ROOT}/channel
dependencies:
  - python=3.11
  - numpy
  - gymnasium
  - msgpack
  - cloudpickle
  - typing-extensions
  - farama-notifications
"""


def image_dir() -> Path:
    """The job image as a directory (made once per key; needs root: debootstrap, ch-run -w)."""
    if os.geteuid() != 0:
        pytest.skip("making the job image needs root (its base comes from debootstrap)")
    if shutil.which("ch-run") is None:
        pytest.skip("making the job image needs Charliecloud's ch-run (apt install charliecloud)")
    if not Path(PYTHON).is_file():
        pytest.skip(f"{PYTHON} (the base image's interpreter) is not on this host")
    inputs = _inputs()
    key = _key(inputs)
    target = CACHE / f"job-image-{key[:16]}"
    if (target / "opt" / "portal-test" / "ready").is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(CACHE / "job-image.lock")):
        if not (target / "opt" / "portal-test" / "ready").is_file():
            for old in CACHE.glob("job-image-*"):  # other keys, or a build that was killed
                dockerhost._remove_tree(old)
            _build(inputs, target)
    return target


def docker_image() -> str:
    """The job image in dockerd, imported from image_dir() if missing; its tag."""
    dockerhost.client()  # skips the test where no daemon can be had
    client = docker.from_env(timeout=1200)  # removing and importing ~600 MB takes a while
    directory = image_dir()
    tag = f"{REPOSITORY}:{directory.name[len('job-image-') :]}"
    if dockerhost._has_image(client, tag):
        return tag
    with FileLock(str(CACHE / "job-image-docker.lock")):
        if dockerhost._has_image(client, tag):
            return tag
        for image in client.images.list(name=REPOSITORY):  # older keys
            client.images.remove(image.id, force=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            tar = Path(tmp) / "job.tar"
            command = ["tar", "--numeric-owner", "-C", str(directory), "-cf", str(tar), "."]
            dockerhost._run(command, "tar")
            changes = [f'ENV {key}="{value}"' for key, value in JOB_ENV.items()]
            client.api.import_image(
                src=str(tar), repository=REPOSITORY, tag=tag.split(":")[1], changes=changes
            )
        if not dockerhost._has_image(client, tag):
            raise RuntimeError(f"docker import of {directory} as {tag} failed")
    return tag


def _inputs() -> Dict[str, Path]:
    wheels = CACHE / "job-wheels"
    return {
        "rootfs": dockerhost.rootfs_tar(),
        "deps": _dependency_wheels(wheels),
        "portal-env": _portal_env_wheel(wheels),
        "venv-wheels": _venv_wheels(wheels),
    }


def _key(inputs: Dict[str, Path]) -> str:
    digest = hashlib.sha256(b"portal-env-job-image-1\0")
    for name in sorted(inputs):
        path = inputs[name]
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        for file in files:
            info = file.stat()
            digest.update(f"{name}\0{file.name}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
    for file in (
        Path(__file__),
        ROOT / "tests" / "whole_job.py",
        ROOT / "tests" / "conda_channel.py",
    ):
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _platforms() -> List[str]:
    arch = platform.machine()
    names = [f"manylinux_2_{minor}_{arch}" for minor in range(36, 4, -1)]
    return names + [f"manylinux2014_{arch}", f"manylinux1_{arch}"]


def _pip_download(target: Path, what: str, *args: str) -> Path:
    """Binary wheels for CPython 3.11 on this architecture (bookworm's glibc 2.36)."""
    if target.is_dir():
        return target
    work = Path(tempfile.mkdtemp(prefix=f"{target.name}-", dir=target.parent))
    try:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:"]
        command += ["--python-version", "3.11", "--implementation", "cp"]
        command += [f"--platform={name}" for name in _platforms()]
        dockerhost._run(command + ["-d", str(work), *args], what)
        os.replace(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _dependency_wheels(root: Path) -> Path:
    """portal-env's dependencies, as pyproject.toml bounds them (cp311 wheels)."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    requirements = [dep.split(";")[0].strip() for dep in deps]
    key = hashlib.sha256("\0".join(requirements).encode()).hexdigest()[:12]
    root.mkdir(parents=True, exist_ok=True)
    return _pip_download(
        root / f"deps-{key}", "pip download of portal-env's dependencies", *requirements
    )


def _portal_env_wheel(root: Path) -> Path:
    """A wheel of this checkout of portal-env (made again when its files change)."""
    digest = hashlib.sha256()
    for top in ("portal_env", "envs", "specs", "lockfiles"):
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    digest.update((ROOT / "pyproject.toml").read_bytes())
    target = root / f"portal-env-{digest.hexdigest()[:12]}"
    if target.is_dir():
        return target
    for old in root.glob("portal-env-*"):
        shutil.rmtree(old, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="portal-env-wheel-", dir=root))
    try:
        command = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(work / "w"),
        ]
        dockerhost._run(command + [str(ROOT)], "building the portal-env wheel")
        os.replace(work / "w", target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _venv_wheels(root: Path) -> Path:
    """The wheels the example's venv lockfile pins (hash-checked by pip here, by uv there)."""
    lock = ROOT / "examples" / "cartpole_env" / "spec.venv.lock.txt"
    key = hashlib.sha256(lock.read_bytes()).hexdigest()[:12]
    return _pip_download(root / f"venv-{key}", "pip download of the venv lock", "-r", str(lock))


def _build(inputs: Dict[str, Path], target: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="job-image-build-", dir=CACHE))
    rootfs = work / "rootfs"
    try:
        rootfs.mkdir()
        dockerhost._run(["tar", "-C", str(rootfs), "-xf", str(inputs["rootfs"])], "unpack the base")
        test_root = rootfs / TEST_ROOT.lstrip("/")
        pkgs = test_root / "pkgs"
        shutil.copytree(inputs["deps"], pkgs)
        for wheel in inputs["portal-env"].glob("*.whl"):
            shutil.copy(wheel, pkgs)
        shutil.copytree(inputs["venv-wheels"], test_root / "wheels")
        channel = build_channel(
            CACHE / "job-channel", python=PYTHON, more_wheels=inputs["venv-wheels"]
        )
        shutil.copytree(channel, test_root / "channel")
        _write_envs(test_root)
        shutil.copy(ROOT / "tests" / "whole_job.py", test_root / "whole_job.py")
        dockerhost._run(["chmod", "-R", "a+rX", str(test_root)], "chmod")  # mkdtemp made 0700
        (rootfs / USER_HOME.lstrip("/")).mkdir(mode=0o755, parents=True)
        _ch_run_write(rootfs, [PYTHON, "-m", "venv", VENV])
        install = [
            f"{VENV}/bin/pip",
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
            f"{TEST_ROOT}/pkgs",
        ]
        _ch_run_write(rootfs, install + ["portal-env"])
        lock = [
            f"{VENV}/bin/portal-env",
            "lock",
            "condacart",
            "-p",
            f"{TEST_ROOT}/condacart",
            "-b",
            "mm",
        ]
        _ch_run_write(rootfs, lock)
        shutil.rmtree(pkgs)
        shutil.rmtree(rootfs / "root" / ".cache", ignore_errors=True)
        (test_root / "ready").write_text(json.dumps({k: str(v) for k, v in inputs.items()}))
        os.replace(rootfs, target)
    finally:
        dockerhost._remove_tree(work)


def _write_envs(test_root: Path) -> None:
    example = ROOT / "examples" / "cartpole_env"
    cart = test_root / "cart"
    cart.mkdir(parents=True)
    for name in ("env_main.py", "spec.yml", "spec.venv.lock.txt"):
        shutil.copy(example / name, cart / name)
    bigobs = test_root / "bigobs"
    bigobs.mkdir()
    shutil.copy(example / "spec.yml", bigobs)
    shutil.copy(example / "spec.venv.lock.txt", bigobs)
    (bigobs / "env_main.py").write_text(BIG_ENV)
    orphans = test_root / "orphans"
    shutil.copytree(cart, orphans)
    (orphans / "env_main.py").write_text(ORPHAN_MAKER + (example / "env_main.py").read_text())
    conda = test_root / "condacart"
    conda.mkdir()
    shutil.copy(example / "env_main.py", conda)
    (conda / "spec.yml").write_text(CONDA_SPEC)


def _ch_run_write(rootfs: Path, command: List[str]) -> None:
    """Run command in the image directory, writable, as root (no network needed)."""
    env = {"USER": "root", "HOME": "/root", "PATH": PATH, "LANG": "C.UTF-8"}
    full = ["ch-run", "-w", "--no-passwd", str(rootfs), "--", *command]
    done = subprocess.run(full, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(
            f"in the job image: {' '.join(command)} failed:\n{done.stdout}{done.stderr}"
        )
