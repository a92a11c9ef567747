"""The Docker test helpers (tests/dockerhost.py) against a real daemon, and the
conda test channel's `python` package pointing at a given interpreter."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from .conda_channel import build_channel, subdir
from .dockerhost import BASE_IMAGE, base_image, client, rootfs_tar, wheelhouse

ROOT = Path(__file__).resolve().parent.parent
DEBIAN_PYTHON = Path("/usr/bin/python3.11")  # also in the base image


def run_in(image: str, command: List[str], volumes: Optional[Dict[str, dict]] = None) -> str:
    """Run command in a new offline container of image; its output. The container is removed."""
    api = client()
    container = api.containers.create(image, command, volumes=volumes, network_mode="none")
    try:
        container.start()
        status = container.wait(timeout=600)["StatusCode"]
        output = container.logs(stdout=True, stderr=True).decode(errors="replace")
    finally:
        container.remove(force=True)
    assert not api.containers.list(all=True, filters={"id": container.id}), "container left"
    assert status == 0, f"{command} exited with {status} in {image}:\n{output}"
    return output


@pytest.mark.docker
def test_client_answers_and_is_cached():
    assert client() is client()
    assert client().ping() is True


@pytest.mark.docker
def test_base_image_is_bookworm_with_python3_venv_and_pip():
    assert base_image() == BASE_IMAGE
    script = (
        "import sys, venv, ensurepip, pip; "
        "print('%d.%d' % sys.version_info[:2], open('/etc/debian_version').read().strip())"
    )
    output = run_in(BASE_IMAGE, ["python3", "-c", script])
    version, debian = output.split()
    assert version == "3.11", output
    assert debian.startswith("12."), output


@pytest.mark.docker
def test_rootfs_tar_is_the_complete_cached_base_layer():
    tar = rootfs_tar()
    assert tar.name == "rootfs-bookworm-py311.tar"
    assert not list(tar.parent.glob("rootfs-build-*")), "an unfinished build was left behind"
    with tarfile.open(tar) as archive:
        names = set(archive.getnames())
        devices = [m.name for m in archive.getmembers() if m.ischr() or m.isblk()]
    assert {"./usr/bin/python3.11", "./usr/lib/python3.11/venv/__init__.py"} <= names
    assert "./usr/lib/python3/dist-packages/pip/__init__.py" in names
    assert not devices, f"device nodes in the layer: {devices[:5]}"


@pytest.mark.docker
def test_container_venv_installs_the_server_deps_offline_from_the_wheelhouse():
    wheels = wheelhouse()
    names = {path.name.split("-")[0].lower() for path in wheels.glob("*.whl")}
    expected = {"numpy", "gymnasium", "msgpack", "cloudpickle", "typing_extensions"}
    assert expected | {"farama_notifications"} <= names, sorted(names)
    assert wheelhouse() == wheels  # cached
    check = (
        "import gymnasium, msgpack, numpy; "
        "env = gymnasium.make('CartPole-v1'); obs, _ = env.reset(seed=0); "
        "print('ok', numpy.__version__, len(msgpack.unpackb(msgpack.packb(obs.tolist()))))"
    )
    script = (
        "set -e; python3 -m venv /venv; "
        "/venv/bin/pip install --quiet --no-index --find-links /wheels gymnasium numpy msgpack; "
        f'/venv/bin/python -c "{check}"'
    )
    mounts = {str(wheels): {"bind": "/wheels", "mode": "ro"}}
    output = run_in(base_image(), ["sh", "-c", script], volumes=mounts)
    assert output.splitlines()[-1].startswith("ok ") and output.splitlines()[-1].endswith(" 4")


BUILD_ROOTFS = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
sys.path.insert(0, sys.argv[1])
from tests.dockerhost import rootfs_tar
rootfs_tar()
"""


def _mounts_under(path: Path) -> List[str]:
    with open("/proc/self/mounts") as mounts:
        return [line.split()[1] for line in mounts if line.split()[1].startswith(f"{path}/")]


@pytest.fixture(scope="module")
def debian_channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test channel whose python is Debian's /usr/bin/python3.11 (as in the base image)."""
    if not DEBIAN_PYTHON.is_file():
        pytest.skip(f"{DEBIAN_PYTHON} is not on this machine")
    return build_channel(tmp_path_factory.mktemp("debian-channel"), python=DEBIAN_PYTHON)


def _install_python(channel: Path, prefix: Path) -> None:
    """Unpack the channel's python package into prefix (its files only, as conda would)."""
    (package,) = (channel / subdir()).glob("python-*.tar.bz2")
    with tarfile.open(package) as tar:
        members = [m for m in tar.getmembers() if not m.name.startswith("info/")]
        tar.extractall(prefix, members=members)


@pytest.mark.conda
def test_channel_python_points_at_the_given_interpreter_from_a_moved_prefix(
    debian_channel: Path, tmp_path: Path
):
    want = subprocess.run(
        [str(DEBIAN_PYTHON), "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (package,) = (debian_channel / subdir()).glob("python-*.tar.bz2")
    assert package.name == f"python-{want}-0_portal_test.tar.bz2"
    _install_python(debian_channel, tmp_path / "first")
    cfg = (tmp_path / "first" / "pyvenv.cfg").read_text()
    assert "home = /usr/bin\n" in cfg and f"version = {want}\n" in cfg, cfg
    prefix = tmp_path / "moved"
    (tmp_path / "first").rename(prefix)
    script = "import json, sys; print(sys.prefix, sys.base_prefix, sys.version.split()[0])"
    done = subprocess.run([str(prefix / "bin" / "python"), "-c", script], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == [str(prefix), "/usr", want]


@pytest.mark.conda
def test_channel_default_python_is_still_this_interpreter(tmp_path: Path):
    channel = build_channel(tmp_path)
    assert channel == tmp_path / "channel"
    version = "{}.{}.{}".format(*sys.version_info)
    assert (channel / subdir() / f"python-{version}-0_portal_test.tar.bz2").is_file()


@pytest.mark.docker
def test_channel_python_for_debian_runs_in_the_base_image(debian_channel: Path, tmp_path: Path):
    prefix = tmp_path / "prefix"
    _install_python(debian_channel, prefix)
    mounts = {str(prefix): {"bind": "/opt/elsewhere/env", "mode": "ro"}}
    script = "import json, sys; print(sys.prefix, sys.base_prefix)"
    output = run_in(base_image(), ["/opt/elsewhere/env/bin/python", "-c", script], mounts)
    assert output.split() == ["/opt/elsewhere/env", "/usr"], output
