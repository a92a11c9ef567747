"""`-b charliecloud` (`-b ch`): an exported image served by a real ch-run (Charliecloud 0.31
here), no daemon: built from a conda lockfile over the Docker tests' debootstrap rootfs,
or given with --image as an OCI archive, a directory or a SquashFS file.

These run as the test process's user (root in CI); tests/test_whole_job.py runs the
whole job under ch-run as an unprivileged user.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List

import gymnasium
import pytest

from portal_env import AgentSidePortal, config
from portal_env.runtimes.base import child_pids
from portal_env.serving import registry

from .conda_channel import build_channel, locked_cartpole
from .conftest import CLI, ROOT, cli, needs_netns, pid_alive, wait_gone
from .test_agent import assert_identical, run_trajectory

pytestmark = [
    pytest.mark.charliecloud,
    pytest.mark.skipif(shutil.which("ch-run") is None, reason="Charliecloud's ch-run is missing"),
    pytest.mark.usefixtures("reap_portals"),
]
NAME = "chcart"


@pytest.fixture(scope="module")
def conda_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CartPole with a spec of a local channel whose python is Debian's /usr/bin/python3.11,
    which the debootstrap base has too (as in tests/test_docker.py)."""
    debian_python = Path("/usr/bin/python3.11")
    if not debian_python.is_file():
        pytest.skip(f"{debian_python} (the base image's interpreter) is not on this host")
    root = tmp_path_factory.mktemp("conda-ch")
    channel = build_channel(root, python=debian_python)
    return locked_cartpole(root / NAME, channel, python="3.11")


@pytest.fixture(scope="module")
def rootfs() -> Path:
    from . import dockerhost  # needs no daemon: only debootstrap, once, cached

    return dockerhost.rootfs_tar()


@pytest.fixture(params=["squash", "dir"])
def image_form(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PORTAL_ENV_CH_IMAGE", request.param)
    return request.param


def build_args(conda_env: Path, rootfs: Path) -> List[str]:
    return ["-p", str(conda_env), "-b", "ch", "--base-image", str(rootfs)]


def built_image(conda_env: Path, rootfs: Path) -> Path:
    """The image `build -b ch` made (or finds in the cache), by the path it prints."""
    done = cli("build", NAME, *build_args(conda_env, rootfs), timeout=900)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().rsplit(" ", 1)[-1])


def assert_bit_identical(env: gymnasium.Env) -> None:
    """env's seeded trajectory is the in-process CartPole's, bit for bit (infos too)."""
    local = gymnasium.make("CartPole-v1")
    assert_identical(run_trajectory(env, 7, 60), run_trajectory(local, 7, 60))


def server_processes(record: registry.Record) -> List[int]:
    """ch-run and the env server: one process for a directory image (ch-run execs the
    server), ch-run and its child for a SquashFS image (ch-run serves the mount)."""
    return [record.server_pid] + child_pids(record.server_pid)


def mounts() -> str:
    with open("/proc/self/mounts") as f:
        return f.read()


def mount_points() -> set:
    """The SquashFS mount points of this user's ch-run servers (in /tmp/portal-env-UID)."""
    root = config.shared_tmp_socket_dir()
    return {p.name for p in root.glob(".mnt-*")} if root is not None else set()


def wait_record(check, seconds: float = 60) -> registry.Record:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        record = registry.get(NAME)
        if record is not None and check(record):
            return record
        time.sleep(0.1)
    raise AssertionError(f"no record of {NAME} as expected within {seconds}s: {registry.get(NAME)}")


def test_exported_image_is_served_restarted_and_stopped_clean(
    conda_env: Path, rootfs: Path, image_form: str
):
    image = built_image(conda_env, rootfs)
    assert image.name == ("image.sqfs" if image_form == "squash" else "image")
    points_before = mount_points()
    again = cli("build", NAME, *build_args(conda_env, rootfs))
    assert again.stdout.strip().endswith(str(image))
    assert "built the charliecloud image" not in again.stderr  # cached by lock and base

    done = cli("start", NAME, *build_args(conda_env, rootfs), "-d")
    assert done.returncode == 0, done.stderr
    record = registry.get(NAME)
    assert record.backend == "charliecloud" and record.address.startswith("unix:/tmp/")
    socket_path = record.address[len("unix:") :]
    processes = server_processes(record)
    assert len(processes) == (2 if image_form == "squash" else 1)
    # the token is in no command line (ps shows those to every user)
    for pid in processes + [record.supervisor_pid]:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert record.token.encode() not in f.read()

    with AgentSidePortal(NAME, ["CartPole-v1"]) as env:  # by name, through the registry
        assert_bit_identical(env)
    by_name = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "random_agent.py"), NAME],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert by_name.returncode == 0 and "episode 2: return" in by_name.stdout, by_name.stderr

    # SIGKILL of the env server: the supervisor restarts it, on the same socket path
    os.kill(processes[-1], signal.SIGKILL)
    restarted = wait_record(lambda r: r.restarts == 1 and r.server_pid != record.server_pid)
    assert restarted.address == record.address
    assert all(wait_gone(pid, 10) for pid in processes)
    with AgentSidePortal(NAME, ["CartPole-v1"]) as env:
        assert_bit_identical(env)

    # stop: no process, no mount (point), no socket, no record
    processes = server_processes(restarted)
    assert cli("stop", NAME).returncode == 0
    assert all(wait_gone(pid, 10) for pid in processes + [restarted.supervisor_pid])
    assert registry.get(NAME) is None and not os.path.exists(socket_path)
    assert str(image) not in mounts()
    assert mount_points() - points_before == set(), "mount points left behind"


def test_sigkill_of_the_supervisor_takes_ch_run_and_the_server_with_it(
    conda_env: Path, rootfs: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("PORTAL_ENV_CH_IMAGE", "squash")  # ch-run and the server: two processes
    done = cli("start", NAME, *build_args(conda_env, rootfs), "-d", timeout=900)
    assert done.returncode == 0, done.stderr
    record = registry.get(NAME)
    processes = server_processes(record)
    assert len(processes) == 2
    orphaned = {p for p in mount_points() if p.startswith(f".mnt-{record.supervisor_pid}-")}
    assert len(orphaned) == 1
    os.kill(record.supervisor_pid, signal.SIGKILL)
    assert all(wait_gone(pid, 10) for pid in processes), [p for p in processes if pid_alive(p)]
    assert cli("ps").stdout.count(NAME) == 0  # the stale record is cleaned on read
    # the killed supervisor's mount point is swept by the next start of an image
    done = cli("start", NAME, *build_args(conda_env, rootfs), "-d")
    assert done.returncode == 0, done.stderr
    assert not orphaned & mount_points()
    assert cli("stop", NAME).returncode == 0


@pytest.fixture(scope="module")
def exported(conda_env: Path, rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`portal-env export` of the env: an OCI archive, as a user would copy it around."""
    archive = tmp_path_factory.mktemp("ch-export") / "chcart.oci.tar"
    done = cli("export", NAME, "-p", str(conda_env), "--base", str(rootfs), "-o", str(archive))
    assert done.returncode == 0, done.stderr
    return archive


def serve_given(image: Path) -> registry.Record:
    done = cli("start", NAME, "-b", "ch", "--image", str(image), "-d")
    assert done.returncode == 0, done.stderr
    return registry.get(NAME)


@pytest.mark.parametrize("form", ["archive", "dir", "squash"])
def test_a_given_image_serves_in_every_form(
    conda_env: Path, rootfs: Path, exported: Path, form: str, monkeypatch: pytest.MonkeyPatch
):
    if form == "archive":
        image = exported  # converted once into the cache (a SquashFS file here)
    else:
        monkeypatch.setenv("PORTAL_ENV_CH_IMAGE", form)
        image = built_image(conda_env, rootfs)
    record = serve_given(image)
    try:
        assert record.backend == "charliecloud"
        with AgentSidePortal(NAME, ["CartPole-v1"]) as env:
            assert_bit_identical(env)
    finally:
        assert cli("stop", NAME).returncode == 0


def test_a_given_archive_is_converted_once(exported: Path):
    first = cli("build", NAME, "-b", "ch", "--image", str(exported), timeout=900)
    second = cli("build", NAME, "-b", "ch", "--image", str(exported))
    assert first.returncode == 0 and second.stdout == first.stdout, first.stderr
    assert "/given-" in first.stdout and str(exported) not in first.stdout


@pytest.fixture
def damaged(
    conda_env: Path, rootfs: Path, exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Dict[str, Path]:
    with monkeypatch.context() as patch:
        patch.setenv("PORTAL_ENV_CH_IMAGE", "squash")
        squash = built_image(conda_env, rootfs)
    cut = tmp_path / "cut.sqfs"
    cut.write_bytes(squash.read_bytes()[: squash.stat().st_size // 2])
    archive = tmp_path / "cut.oci.tar"
    archive.write_bytes(exported.read_bytes()[: exported.stat().st_size // 3])
    garbage = tmp_path / "garbage.sqfs"
    garbage.write_bytes(b"not an image at all\n" * 100)
    empty_dir = tmp_path / "not-an-image"
    empty_dir.mkdir()
    return {"cut": cut, "archive": archive, "garbage": garbage, "dir": empty_dir}


@pytest.mark.parametrize(
    "case, says",
    [
        ("cut", "is damaged: it should hold"),
        ("archive", "cannot read the image"),
        ("garbage", "is none of the image kinds"),
        ("dir", "is not an image of `portal-env export`"),
    ],
)
def test_a_damaged_image_is_refused_at_once_naming_the_file(
    damaged: Dict[str, Path], case: str, says: str
):
    done = cli("start", NAME, "-b", "ch", "--image", str(damaged[case]), "-d", timeout=120)
    assert done.returncode == 1  # before ch-run ever sees it
    assert "Error: " in done.stderr and str(damaged[case]) in done.stderr, done.stderr
    assert says in done.stderr, done.stderr
    assert registry.get(NAME) is None


def test_a_missing_image_or_base_is_named(conda_env: Path, tmp_path: Path):
    missing = tmp_path / "nowhere.sqfs"
    done = cli("start", NAME, "-b", "ch", "--image", str(missing))
    assert done.returncode == 2 and str(missing) in done.stderr  # click: does not exist
    done = cli("start", NAME, "-p", str(conda_env), "-b", "ch", "--base-image", str(missing))
    assert done.returncode == 1 and f"base {missing} does not exist" in done.stderr
    done = cli("start", NAME, "-p", str(conda_env), "-b", "ch")
    assert done.returncode == 1 and "give --base-image BASE" in done.stderr
    assert "--image PATH" in done.stderr


@needs_netns
def test_offline_node_serves_from_the_shared_cache_and_names_the_build_command(
    conda_env: Path, rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("PORTAL_ENV_CH_IMAGE", "squash")
    built_image(conda_env, rootfs)  # on the "login node", which has network
    args = ["start", NAME, *build_args(conda_env, rootfs), "-d"]
    done = subprocess.run(["unshare", "--net", *CLI, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with AgentSidePortal(NAME, ["CartPole-v1"]) as env:  # Unix sockets cross namespaces
        assert_bit_identical(env)
    assert cli("stop", NAME).returncode == 0
    empty = dict(os.environ, PORTAL_ENV_CACHE_DIR=str(tmp_path / "empty-cache"))
    done = subprocess.run(  # at once: nothing waits on a network (timeout: a hang guard)
        ["unshare", "--net", *CLI, *args], capture_output=True, text=True, env=empty, timeout=120
    )
    assert done.returncode == 1
    expected = (
        f"`portal-env build -e {NAME} -p {conda_env} -b ch --base-image {rootfs}` on a node "
        "with network"
    )
    assert expected in done.stderr, done.stderr


@pytest.fixture(autouse=True)
def _no_leftover_image_servers() -> Iterator[None]:
    """Whatever happens in a test, no ch-run of ours outlives it."""
    yield
    for record in registry.all_records():
        if record.name == NAME:
            cli("stop", NAME)


def test_ch_run_command_line_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from portal_env.runtimes.charliecloud import Charliecloud, executable
    from portal_env.runtimes.imagebackend import Launch

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # would move the container's /tmp: dropped
    token = "the-token-of-this-server-0123456789"
    launch = Launch(
        image=tmp_path / "image.sqfs",
        kind="squash",
        workdir="/opt/portal-env/app",
        argv=("/opt/portal-env/env/bin/python", "/opt/portal-env/app/env_main.py"),
        binds=(("/cache/portal_env-src/abc", "/opt/portal-env/lib"),),
        env={config.TOKEN_VAR: token},
    )
    tool = Charliecloud()
    assert tool.command(launch, tmp_path / "mnt") == [
        executable(), "--env-no-expand", "--set-env", "--cd=/opt/portal-env/app",
        "--bind=/cache/portal_env-src/abc:/opt/portal-env/lib", f"--mount={tmp_path / 'mnt'}",
        str(tmp_path / "image.sqfs"), "--",
        "/opt/portal-env/env/bin/python", "/opt/portal-env/app/env_main.py",
    ]  # fmt: skip
    env = tool.environment(launch)
    assert env[config.TOKEN_VAR] == token and env["USER"] and "TMPDIR" not in env
    assert env[config.DIE_WITH_PARENT_VAR] == "1"  # ch-run serves the image it runs from
    directory = dataclasses.replace(launch, kind="dir")
    assert "--mount" not in " ".join(tool.command(directory))
    assert config.DIE_WITH_PARENT_VAR not in tool.environment(directory)  # ch-run exec'd it


UNPRIVILEGED = 4242
AGENT_AS_USER = """
import json, subprocess, sys
import gymnasium, numpy as np
from portal_env import AgentSidePortal
from portal_env.runtimes.base import child_pids
from portal_env.serving import registry

cli = [sys.executable, "-m", "portal_env.cli"]
start = cli + ["start", "unpriv", "-b", "ch", "--image", sys.argv[1], "-d"]
done = subprocess.run(start, capture_output=True, text=True)
if done.returncode != 0:
    sys.exit("start: " + done.stderr)
record = registry.get("unpriv")
with AgentSidePortal("unpriv", ["CartPole-v1"]) as env:
    local = gymnasium.make("CartPole-v1")
    same = np.array_equal(env.reset(seed=5)[0], local.reset(seed=5)[0])
    for t in range(30):
        ours, theirs = env.step(t % 2)[:4], local.step(t % 2)[:4]
        same = same and all(np.array_equal(a, b) for a, b in zip(ours, theirs))
uids = []
for pid in [record.server_pid] + child_pids(record.server_pid):
    with open(f"/proc/{pid}/status") as f:
        uids.append(int(f.read().split("Uid:")[1].split()[0]))
stopped = subprocess.run(cli + ["stop", "unpriv"], capture_output=True).returncode
print(json.dumps({"same": bool(same), "uids": uids, "stopped": stopped}))
"""


@pytest.mark.parametrize("form", ["squash", "dir"])
def test_an_unprivileged_user_serves_an_image(
    conda_env: Path, rootfs: Path, form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """uid 4242 runs portal-env (the whole-job image's install of it, run with this host's
    /usr/bin/python3.11) with `-b ch --image`: ch-run without root. This machine's /dev/fuse
    is 0600, so the namespace of the test gets a 0666 node of its own for SquashFS."""
    from . import jobimage

    monkeypatch.setenv("PORTAL_ENV_CH_IMAGE", form)
    image = built_image(conda_env, rootfs)
    job = jobimage.image_dir()  # portal-env and its dependencies, for Python 3.11
    view = Path(tempfile.mkdtemp(prefix="portal-env-test-unpriv-", dir="/tmp"))
    view.chmod(0o755)
    (view / "job").mkdir()
    if form == "squash":
        (view / "image.sqfs").touch()  # a file to bind the image file onto
    else:
        (view / "image").mkdir()
    (view / "fuse").mkdir()
    home = view / "tmp"
    home.mkdir(mode=0o700)
    os.chown(home, UNPRIVILEGED, UNPRIVILEGED)
    script = view / "agent.py"
    script.write_text(AGENT_AS_USER)
    python = f"{view}/job/opt/venv/bin/python"
    target = view / image.name
    shell = (
        f'mount --bind "{job}" "{view}/job" && mount --bind "{image}" "{target}" && '
        f'mount -t tmpfs -o size=1m tmpfs "{view}/fuse" && '
        f'mknod -m 666 "{view}/fuse/fuse" c 10 229 && mount --bind "{view}/fuse/fuse" /dev/fuse '
        f"&& exec setpriv --reuid {UNPRIVILEGED} --regid {UNPRIVILEGED} --clear-groups "
        f'"{python}" "{script}" "{target}"'
    )
    env = {"PATH": "/usr/bin:/bin", "USER": "unpriv", "HOME": "/nonexistent", "TMPDIR": str(home)}
    try:
        done = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", shell],
            capture_output=True, text=True, env=env, timeout=600,
        )  # fmt: skip
    finally:
        _kill_processes_of(UNPRIVILEGED)  # only this test runs as that uid
        shutil.rmtree(view, ignore_errors=True)
        shutil.rmtree(f"/tmp/portal-env-{UNPRIVILEGED}", ignore_errors=True)
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["same"] and found["stopped"] == 0
    assert found["uids"] == [UNPRIVILEGED] * (2 if form == "squash" else 1)


def _kill_processes_of(uid: int) -> None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                owner = int(f.read().split("Uid:")[1].split()[0])
        except (OSError, IndexError, ValueError):
            continue
        if owner == uid:
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass
