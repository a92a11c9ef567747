"""The docker backend end to end: a real dockerd, images built from Dockerfile.env over a
local base image, containers serving real envs to agents on the host and in containers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Tuple

import gymnasium
import numpy as np
import pytest

from portal_env import AgentSidePortal
from portal_env.errors import PortalConnectionError
from portal_env.runtimes import docker as docker_backend
from portal_env.runtimes.cache import package_dir
from portal_env.serving import registry

from . import dockerhost
from .conda_channel import build_channel, locked_cartpole
from .conftest import CLI, cli, wait_gone

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("reap_portals", "reap_containers")]

ENV_MAIN = """\
import gymnasium
from portal_env import EnvSidePortal

if __name__ == "__main__":
    print("cart env_main started", flush=True)
    EnvSidePortal(env_factory=gymnasium.make).run()
"""


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """The daemon; the images the tests built are removed after them (the base stays)."""
    docker_client = dockerhost.client()
    yield docker_client
    for repository in ("portal-env/cart", "portal-env/ale", "portal-env/cartpole"):
        for image in docker_client.images.list(repository):
            docker_client.images.remove(image.id, force=True)


@pytest.fixture(scope="module")
def base(client: Any) -> str:
    return dockerhost.base_image()


@pytest.fixture
def env_dir(tmp_path: Path, base: str) -> Path:
    """A custom env: env_main.py and a Dockerfile.env that installs from a wheelhouse."""
    return dockerhost.dockerfile_env(tmp_path / "cart", ENV_MAIN)


@pytest.fixture
def reap_containers(client: Any) -> Iterator[None]:
    """Whatever a test leaves (a SIGKILLed supervisor's container) is removed after it."""
    yield
    for container in ours(client):
        container.remove(force=True)


def ours(client: Any) -> list:
    label = f"{docker_backend.LABEL_OWNER}={docker_backend.owner()}"
    return client.containers.list(all=True, filters={"label": label})


def start(env_dir: Path, base: str, *extra: str, name: str = "cart") -> registry.Record:
    args = ["start", name, "-p", str(env_dir), "-b", "docker", "--base-image", base, "-d"]
    done = cli(*args, *extra)
    assert done.returncode == 0, done.stderr
    assert f"(docker, container env_portal_{name})" in done.stdout
    record = registry.get(name)
    assert record is not None and record.state == "ready"
    return record


def trajectory(env: gymnasium.Env, steps: int = 30) -> list:
    obs, _ = env.reset(seed=3)
    out = [obs]
    for t in range(steps):
        obs, reward, terminated, truncated, _ = env.step(t % 2)
        out += [obs, reward, terminated, truncated]
        if terminated or truncated:
            obs, _ = env.reset()
            out.append(obs)
    return out


def assert_same_trajectory(env: gymnasium.Env, local: gymnasium.Env, same_types=False) -> None:
    ours, theirs = trajectory(env), trajectory(local)
    assert len(ours) == len(theirs)  # zip() alone would hide a shorter one
    for a, b in zip(ours, theirs):
        assert np.array_equal(a, b) and (type(a) is type(b) or not same_types)


def test_dockerfile_env_serves_an_agent_on_the_host_then_stops_clean(
    client: Any, env_dir: Path, base: str
):
    record = start(env_dir, base)
    container = client.containers.get("env_portal_cart")
    assert container.status == "running" and record.container == "env_portal_cart"
    # published on loopback only, and on the port the server really listens on
    bindings = container.attrs["HostConfig"]["PortBindings"]
    assert list(bindings) == ["7000/tcp"] and bindings["7000/tcp"][0]["HostIp"] == "127.0.0.1"
    # host agents use the container's address on the bridge (no docker-proxy in between)
    network = container.attrs["NetworkSettings"]["Networks"]["portal_env_net"]
    assert record.address == f"{network['IPAddress']}:7000"
    assert container.attrs["NetworkSettings"]["Networks"].keys() == {"portal_env_net"}
    labels = container.labels
    assert labels[docker_backend.LABEL_PORTAL] == "cart"
    assert labels[docker_backend.LABEL_OWNER] == docker_backend.owner()
    # the token is a mounted 0600 file, never an environment variable
    env_vars = "\n".join(container.attrs["Config"]["Env"])
    assert record.token not in env_vars and "PORTAL_ENV_TOKEN_FILE=" in env_vars
    token_path = docker_backend.token_file("cart")
    assert token_path.stat().st_mode & 0o777 == 0o600

    remote = AgentSidePortal("cart", env_args=["CartPole-v1"])
    local = gymnasium.make("CartPole-v1")
    assert_same_trajectory(remote, local, same_types=True)
    remote.close()

    ps = cli("ps").stdout
    assert "env_portal_cart" in ps and "docker" in ps
    logs = cli("logs", "cart").stdout  # the container's own output, and supervisor events
    assert "cart env_main started" in logs and "server env_portal_cart ready at" in logs

    assert cli("stop", "cart").returncode == 0
    assert ours(client) == [] and registry.get("cart") is None
    network = client.networks.get("portal_env_net")
    network.reload()
    assert network.attrs["Containers"] == {}
    assert not token_path.exists()


def test_asking_an_image_for_its_python_leaves_no_container(
    client: Any, base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from portal_env.runtimes import image_python

    monkeypatch.setenv("PORTAL_ENV_CACHE_DIR", str(tmp_path / "cache"))  # not answered before
    mine = {"ancestor": base}
    before = {c.id for c in client.containers.list(all=True, filters=mine)}
    # the base has python3 only: asking `python` first fails to start a container
    assert image_python.interpreters(client.images.get(base))[0] == "python"
    assert image_python.python_version(client, base) == (3, 11)
    assert {c.id for c in client.containers.list(all=True, filters=mine)} == before


def test_second_start_reuses_the_image_and_force_rebuilds(client: Any, env_dir: Path, base: str):
    args = ["build", "-e", "cart", "-p", str(env_dir), "-b", "docker", "--base-image", base]
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    tag = first.stdout.strip().rsplit(" ", 1)[-1]
    assert tag.startswith("portal-env/cart:")
    created = client.images.get(tag).attrs["Created"]
    second = cli(*args)
    assert second.returncode == 0 and "built image" not in second.stderr
    assert second.stdout == first.stdout
    assert client.images.get(tag).attrs["Created"] == created
    (env_dir / "env_main.py").write_text(ENV_MAIN + "# changed\n")
    changed = cli(*args)
    assert "built image" in changed.stderr and changed.stdout != first.stdout
    tag = changed.stdout.strip().rsplit(" ", 1)[-1]
    replaced = client.images.get(tag).id
    forced = cli(*args, "-f")  # every step again, without Docker's layer cache
    assert forced.returncode == 0 and "built image" in forced.stderr
    assert client.images.get(tag).id != replaced  # and the image it replaced is gone:
    assert replaced not in [image.id for image in client.images.list(all=True)]


def test_failing_build_shows_the_failing_step_and_its_output(env_dir: Path, base: str, client):
    before = client.images.list("portal-env/cart")
    known = {image.id for image in client.images.list(all=True)}
    dockerfile = env_dir / "Dockerfile.env"
    dockerfile.write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n"
        "RUN echo fine\n"
        "RUN echo the-build-output-we-need && exit 3\n"
        'CMD ["python3", "env_main.py"]\n'
    )
    done = cli("build", "-e", "cart", "-p", str(env_dir), "-b", "docker", "--base-image", base)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert re.search(
        r"failed at Step \d+/\d+ : RUN echo the-build-output-we-need && exit 3\n", done.stderr
    )
    assert "the-build-output-we-need" in done.stderr.split("failed at", 1)[1].split("\n", 1)[1]
    assert "non-zero code: 3" in done.stderr and str(dockerfile) in done.stderr
    assert client.images.list("portal-env/cart") == before  # nothing tagged
    # Docker keeps the steps that succeeded (`RUN echo fine`) as build cache, as with
    # `docker build`; the test removes what it made.
    for image in client.images.list(all=True):
        if image.id not in known and not image.tags:
            client.images.remove(image.id, force=True)


def test_a_base_image_that_cannot_be_pulled_is_named_with_what_to_do(
    client: Any, env_dir: Path, tmp_path: Path
):
    """A registry on a closed loopback port stands for one this machine cannot reach."""
    missing = "127.0.0.1:9/portal-env-missing:1"
    (env_dir / "spec.yml").write_text("dependencies:\n  - python=3.11\n  - pip:\n    - numpy\n")
    done = cli("build", "cart", "-p", str(env_dir), "-b", "docker", "--base-image", missing)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"the base image {missing} of 'cart' is not in the Docker daemon" in done.stderr
    assert "--base-image IMAGE" in done.stderr
    assert "-b venv or -b micromamba" in done.stderr
    assert re.search(r"cart: Step \d+/\d+ : FROM \$\{BASE_IMAGE\}", done.stderr)  # progress
    # An image made from the conda lockfile names its base the same way.
    os.remove(env_dir / "Dockerfile.env")
    done = cli("build", "cart", "-p", str(env_dir), "-b", "docker", "--base-image", missing)
    assert done.returncode == 1 and f"the base image {missing} of 'cart'" in done.stderr


def test_interrupted_build_tags_nothing_and_leaves_no_container(
    client: Any, env_dir: Path, base: str
):
    (env_dir / "Dockerfile.env").write_text(
        'ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo slow-step && sleep 60\nCMD ["true"]\n'
    )
    before = client.images.list("portal-env/cart")
    args = ["build", "-e", "cart", "-p", str(env_dir), "-b", "docker", "--base-image", base]
    build = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def step_containers() -> list:
        # one listing call: containers.list() inspects each container after listing, and
        # a build container that goes in between raises NotFound
        return [c["Id"] for c in client.api.containers(all=True) if "slow-step" in str(c)]

    while not step_containers():  # Docker runs the slow step in a build container
        assert build.poll() is None, build.communicate()  # (a hang: the suite's timeout)
        time.sleep(0.1)
    build.send_signal(signal.SIGINT)
    _, stderr = build.communicate(timeout=30)
    assert build.returncode == 130 and "interrupted" in stderr
    deadline = time.monotonic() + 20
    while step_containers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert step_containers() == [] and client.images.list("portal-env/cart") == before


def test_agent_in_a_second_container_reaches_the_env_by_name(client: Any, env_dir: Path, base: str):
    record = start(env_dir, base)
    script = (
        "from portal_env import AgentSidePortal\n"
        "env = AgentSidePortal('cart', env_args=['CartPole-v1'], agent_in_docker=True)\n"
        "obs, _ = env.reset(seed=1)\n"
        "total = sum(env.step(env.action_space.sample())[1] for _ in range(5))\n"
        "print('agent-ok', obs.shape, total)\n"
        "env.close()\n"
    )
    token_file = cli("token", "cart", "--file").stdout.strip()
    assert Path(token_file) == docker_backend.token_file("cart")
    image = client.containers.get("env_portal_cart").image.id
    output = client.containers.run(
        image,
        ["/venv/bin/python", "-c", script],
        network="portal_env_net",
        environment={"PYTHONPATH": "/opt/portal", "PORTAL_ENV_TOKEN_FILE": "/run/tok"},
        volumes={
            str(package_dir()): {"bind": "/opt/portal", "mode": "ro"},
            token_file: {"bind": "/run/tok", "mode": "ro"},
        },
        remove=True,
    )
    assert b"agent-ok (4,) 5.0" in output
    assert cli("token", "cart").stdout.strip() == record.token


def test_supervisor_restarts_an_exited_container_on_the_same_port(
    client: Any, env_dir: Path, base: str
):
    start(env_dir, base)
    container = client.containers.get("env_portal_cart")
    published = container.ports["7000/tcp"][0]["HostPort"]
    env = AgentSidePortal("cart", env_args=["CartPole-v1"])
    env.reset(seed=0)
    container.kill()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        second = registry.get("cart")
        if second.restarts == 1 and second.state == "ready":
            break
        time.sleep(0.2)
    assert second.restarts == 1
    restarted = client.containers.get("env_portal_cart")
    assert restarted.id != container.id and restarted.ports["7000/tcp"][0]["HostPort"] == published
    with pytest.raises(PortalConnectionError):  # the step in flight is lost, not resent
        env.step(0)
    env.reset(seed=0)  # a fresh remote env on the new server
    assert env.step(0)[1] == 1.0
    env.close()
    assert "restarting" in cli("logs", "cart").stdout


def test_container_of_a_killed_supervisor_is_reaped_by_stop_and_by_the_next_start(
    client: Any, env_dir: Path, base: str
):
    def start_then_kill_supervisor() -> Tuple[registry.Record, Any]:
        record = start(env_dir, base)
        os.kill(record.supervisor_pid, signal.SIGKILL)
        assert wait_gone(record.supervisor_pid, 5)
        orphan = client.containers.get("env_portal_cart")
        assert orphan.status == "running"  # no PDEATHSIG for containers: reaping is our job
        return record, orphan

    start_then_kill_supervisor()
    done = cli("stop", "cart")
    assert done.returncode == 0 and "stopped cart" in done.stdout, done.stderr
    assert "reaping container env_portal_cart: its supervisor is gone" in done.stderr
    assert ours(client) == []

    first, orphan = start_then_kill_supervisor()
    second = start(env_dir, base)
    assert second.supervisor_pid != first.supervisor_pid
    assert client.containers.get("env_portal_cart").id != orphan.id
    assert cli("stop", "cart").returncode == 0 and ours(client) == []


def test_name_taken_by_a_foreign_container_is_refused(client: Any, env_dir: Path, base: str):
    foreign = client.containers.run(base, ["sleep", "60"], name="env_portal_cart", detach=True)
    try:
        done = cli("start", "cart", "-p", str(env_dir), "-b", "docker", "--base-image", base)
        assert done.returncode == 1 and "docker rm -f env_portal_cart" in done.stderr
        foreign.reload()
        assert foreign.status == "running"
    finally:
        foreign.remove(force=True)


def test_base_image_needs_a_declared_arg(env_dir: Path, base: str):
    (env_dir / "Dockerfile.env").write_text(f'FROM {base}\nCMD ["true"]\n')
    done = cli("build", "-e", "cart", "-p", str(env_dir), "-b", "docker", "--base-image", base)
    assert done.returncode == 1 and "ARG BASE_IMAGE" in done.stderr


def test_daemon_down_is_a_clear_error(env_dir: Path):
    env = dict(os.environ, DOCKER_HOST="unix:///nonexistent/docker.sock")
    done = subprocess.run(
        CLI + ["start", "cart", "-p", str(env_dir), "-b", "docker"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "cannot reach the Docker daemon at unix:///nonexistent/docker.sock" in done.stderr
    assert "-b mm" in done.stderr and "-b venv" in done.stderr


@pytest.mark.slow
def test_readme_example_env_serves_from_its_dockerfile(client: Any, base: str):
    example = Path(__file__).resolve().parent.parent / "examples" / "cartpole_env"
    args = ["-p", str(example), "-b", "docker", "--base-image", base, "-d"]
    done = cli("start", "cartpole", *args)
    assert done.returncode == 0, done.stderr
    agent = subprocess.run(
        [sys.executable, str(example.parent / "random_agent.py"), "cartpole"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert agent.returncode == 0 and "episode 2: return" in agent.stdout, agent.stderr
    assert cli("stop", "cartpole").returncode == 0 and ours(client) == []


@pytest.mark.slow
def test_builtin_ale_image_installs_from_the_package_index_and_serves_pong(client: Any, base: str):
    """A built-in Dockerfile.env, built for real: pip inside the build reaches the index
    with this host's CA bundle (passed in by default), and the container serves Pong."""
    done = cli("start", "ale", "-b", "docker", "--base-image", base, "-d")
    assert done.returncode == 0, done.stderr
    env = AgentSidePortal("ale", env_args=["ALE/Pong-v5"])
    obs, _ = env.reset(seed=0)
    assert obs.shape == (210, 160, 3) and obs.dtype == np.uint8
    for _ in range(50):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert env.action_space.n == 6 and not terminated
    env.close()
    assert cli("stop", "ale").returncode == 0 and ours(client) == []


# -- images from a conda lockfile: `-b docker` without a Dockerfile, and `export` ------


@pytest.fixture(scope="module")
def conda_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CartPole env with a spec.yml (no Dockerfile.env), locked against a local channel
    whose python is Debian's /usr/bin/python3.11: the one the base image has too, so the
    image needs nothing from this host."""
    debian_python = Path("/usr/bin/python3.11")
    if not debian_python.is_file():
        pytest.skip(f"{debian_python} (the base image's interpreter) is not on this host")
    root = tmp_path_factory.mktemp("conda-docker")
    channel = build_channel(root, python=debian_python)
    return locked_cartpole(root / "condacart", channel, python="3.11")


def test_env_without_dockerfile_gets_an_image_from_its_conda_lockfile(
    client: Any, conda_env: Path, base: str
):
    args = ["-p", str(conda_env), "-b", "docker", "--base-image", base]
    first = cli("build", "-e", "condacart", *args)
    assert first.returncode == 0 and "conda lockfile" in first.stderr, first.stderr
    again = cli("build", "-e", "condacart", *args)
    assert again.stdout == first.stdout and "built image" not in again.stderr
    tag = first.stdout.strip().rsplit(" ", 1)[-1]
    try:
        done = cli("start", "condacart", *args, "-d")
        assert done.returncode == 0, done.stderr
        assert client.containers.get("env_portal_condacart").image.tags == [tag]
        env = AgentSidePortal("condacart", env_args=["CartPole-v1"])
        local = gymnasium.make("CartPole-v1")
        assert_same_trajectory(env, local)
        env.close()
        assert cli("stop", "condacart").returncode == 0
    finally:
        client.images.remove(tag, force=True)


def test_exported_archive_loads_into_dockerd_and_serves_on_its_own(
    client: Any, conda_env: Path, tmp_path: Path
):
    archive = tmp_path / "condacart.tar"
    done = cli(
        "export", "condacart", "-p", str(conda_env), "--base", str(dockerhost.rootfs_tar()),
        "-o", str(archive), "--tag", "portal-env-test/exported:1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{archive}: portal-env-test/exported:1")
    with open(archive, "rb") as f:
        (image,) = client.images.load(f)
    token = "exported-image-token"
    container = None
    try:
        assert "portal-env-test/exported:1" in image.tags
        container = client.containers.run(  # the image's own command: no mounts, no host files
            "portal-env-test/exported:1",
            detach=True,
            environment={"PORTAL_ENV_HOST": "0.0.0.0", "PORTAL_ENV_TOKEN": token},
            ports={"7000/tcp": ("127.0.0.1", None)},
        )
        container.reload()
        port = container.ports["7000/tcp"][0]["HostPort"]
        while True:  # until the server answers (a hang: the suite's timeout)
            try:
                env = AgentSidePortal(
                    "x", ["CartPole-v1"], address=f"127.0.0.1:{port}", token=token, timeout=10
                )
                break
            except Exception:
                container.reload()
                assert container.status == "running", container.logs().decode()[-3000:]
                time.sleep(0.2)
        obs, _ = env.reset(seed=0)
        assert obs.shape == (4,) and env.step(0)[1] == 1.0
        env.close()
    finally:
        if container is not None:
            container.remove(force=True)
        client.images.remove("portal-env-test/exported:1", force=True)


def test_build_gets_the_hosts_proxy_and_declared_pip_settings_without_baking_proxies(
    client: Any, env_dir: Path, base: str, monkeypatch: pytest.MonkeyPatch
):
    """Proxies go in as Docker's predefined build args (kept out of `docker history`);
    pip's index settings only to a Dockerfile that declares them."""
    (env_dir / "Dockerfile.env").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nARG PIP_INDEX_URL\n"
        'RUN echo "proxy=$HTTP_PROXY index=$PIP_INDEX_URL trusted=$PIP_TRUSTED_HOST" > /seen\n'
        "COPY portal-env-ca.pem /ca.pem\n"
    )
    ca = env_dir.parent / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot a real one\n-----END CERTIFICATE-----\n")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("PIP_INDEX_URL", "http://index.invalid/simple")
    monkeypatch.setenv("PIP_TRUSTED_HOST", "index.invalid")  # not declared: not passed
    args = ["-p", str(env_dir), "-b", "docker", "--base-image", base, "--ca-bundle", str(ca)]
    done = cli("build", "-e", "cart", *args)
    assert done.returncode == 0, done.stderr
    tag = done.stdout.strip().rsplit(" ", 1)[-1]
    seen = client.containers.run(tag, ["cat", "/seen", "/ca.pem"], remove=True).decode()
    assert "proxy=http://proxy.invalid:3128 index=http://index.invalid/simple trusted=\n" in seen
    assert "not a real one" in seen
    history = " ".join(str(layer.get("CreatedBy")) for layer in client.images.get(tag).history())
    assert "proxy.invalid" not in history
