"""One vector env over several real servers: found in the registry or given, seeded runs
equal to SyncVectorEnv, a lost server reported and never replayed, reset reconnects."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import gymnasium
import pytest

from portal_env import config
from portal_env.errors import PortalConnectionError, PortalEnvError
from portal_env.portal.vector import multiserver
from portal_env.portal.vector.agent import PortalVectorEnv
from portal_env.serving import registry

from .conftest import ServerProcess, start_server
from .test_agent import assert_identical
from .test_vector import local_vec, vec_trajectory


@pytest.fixture
def two_servers(tmp_path: Path):
    servers = [start_server(tmp_path), start_server(tmp_path)]
    yield servers
    for server in servers:
        server.stop()


def _register(server: ServerProcess, node: str, name: str = "custom") -> None:
    """A ready record of server as if another node had started it."""
    registry.write(
        registry.Record(
            name=name, backend="venv", env_dir="/x", token=server.token,
            supervisor_pid=server.proc.pid, log_path=str(server.log),
            address=server.address, state=registry.READY, node=node,
        )
    )  # fmt: skip


@pytest.fixture
def job_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_servers):
    monkeypatch.setenv(config.REGISTRY_DIR_VAR, str(tmp_path / "job-registry"))
    monkeypatch.setenv(config.NODE_VAR, "login")  # the learner's node has no server
    for server, node in zip(two_servers, ("n2", "n1")):
        _register(server, node)
    return two_servers


def test_split_is_even_and_larger_blocks_first():
    assert multiserver.split(64, 2) == [32, 32]
    assert multiserver.split(5, 2) == [3, 2]
    assert multiserver.split(2, 3) == [1, 1, 0]


@pytest.mark.parametrize(
    "env_id,steps",
    [("CartPole-v1", 250), ("PortalTest/Rich-v0", 30), ("PortalTest/Typed-v0", 45)],
)
def test_spread_over_every_registered_server_matches_sync_vector_env(job_registry, env_id, steps):
    vec = multiserver.make_vec("custom", num_envs=5, env_args=[env_id])
    assert isinstance(vec, multiserver.MultiServerVectorEnv)
    assert [e.node for e in vec.endpoints] == ["n1", "n2"] and vec.sizes == [3, 2]
    assert vec.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.NEXT_STEP
    local = local_vec(env_id, 5)
    got, expected = vec_trajectory(vec, 7, steps), vec_trajectory(local, 7, steps)
    assert_identical(got, expected)
    assert any(step[2].any() or step[3].any() for step in expected[1:])  # autoreset exercised
    vec.close()
    local.close()


def test_explicit_addresses_with_one_token(tmp_path: Path):
    env = {"PORTAL_ENV_TOKEN": "one-token-for-the-job"}
    servers = [start_server(tmp_path, env), start_server(tmp_path, env)]
    try:
        vec = multiserver.make_vec(
            "custom", 4, ["PortalTest/Rich-v0"], {"render_mode": "rgb_array"},
            addresses=[s.address for s in servers], token="one-token-for-the-job",
        )  # fmt: skip
        assert vec.sizes == [2, 2]
        vec.reset(seed=0)
        assert len(vec.render()) == 4
        assert vec.call("double", 3) == (6, 6, 6, 6)
        vec.set_attr("label", ["a", "b", "c", "d"])
        assert vec.get_attr("label") == ("a", "b", "c", "d")
        vec.close()
        single = multiserver.make_vec(
            "custom",
            2,
            ["CartPole-v1"],
            addresses=[servers[0].address],
            token=env["PORTAL_ENV_TOKEN"],
        )
        assert isinstance(single, PortalVectorEnv)  # one server: the plain vector env
        single.close()
    finally:
        for server in servers:
            server.stop()


def test_lost_server_is_reported_not_replayed_and_reset_reconnects(job_registry, tmp_path: Path):
    vec = multiserver.make_vec("custom", num_envs=4, env_args=["CartPole-v1"])
    vec.reset(seed=1)
    vec.step(vec.action_space.sample())
    n1 = next(s for s in job_registry if s.address == vec.endpoints[0].address)
    os.kill(n1.proc.pid, signal.SIGKILL)
    n1.proc.wait()
    with pytest.raises(
        PortalConnectionError, match=r"\(node n1\), envs 0-1 \(connection closed.*not resent"
    ):
        vec.step(vec.action_space.sample())
    with pytest.raises(PortalConnectionError, match="node n1"):  # still lost: never resent
        vec.step(vec.action_space.sample())
    replacement = start_server(tmp_path)  # what n1's supervisor does: a new server there
    try:
        _register(replacement, "n1")
        obs, _ = vec.reset(seed=1)
        local = local_vec("CartPole-v1", 4)
        assert_identical(obs, local.reset(seed=1)[0])
        assert vec.endpoints[0].node == "n1"
        vec.step(vec.action_space.sample())
        vec.close()
    finally:
        replacement.stop()


def test_no_server_anywhere_names_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(config.REGISTRY_DIR_VAR, str(tmp_path / "empty"))
    with pytest.raises(PortalEnvError, match="PORTAL_ENV_REGISTRY_DIR"):
        multiserver.make_vec("nothing", 8)


def test_min_servers_waits_for_late_servers_then_says_which_are_missing(
    job_registry, tmp_path: Path
):
    import threading

    late = start_server(tmp_path)
    try:
        timer = threading.Timer(1.0, _register, (late, "n3"))
        timer.start()
        vec = multiserver.make_vec("custom", 6, ["CartPole-v1"], min_servers=3, timeout=30)
        timer.join()
        assert [e.node for e in vec.endpoints] == ["n1", "n2", "n3"] and vec.sizes == [2, 2, 2]
        vec.close()
    finally:
        late.stop()
    with pytest.raises(PortalEnvError, match=r"only 2 of 4 servers .* nodes n1, n2"):
        multiserver.make_vec("custom", 6, ["CartPole-v1"], min_servers=4, timeout=0.5)
