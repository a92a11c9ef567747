"""Fleets on a real two-node Ray cluster; run by tests/test_ray.py inside `unshare --net`.

Not collected on its own (no test_ prefix): Ray must run in a network namespace that has
only loopback, which a running pytest process cannot enter. test_ray.py runs this file
there as one pytest session and reports each case's outcome.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import gymnasium
import numpy as np
import pytest

from portal_env import ray as pray
from portal_env.errors import AuthenticationError, FleetError, PortalConnectionError
from portal_env.portal.agent import AgentSidePortal

from .conftest import EXAMPLE_ENV, pid_alive, wait_gone
from .raycluster import ADDRESS, RayCluster, only_loopback

CACHE = os.environ.get("PORTAL_ENV_FLEET_TEST_CACHE")  # the runtime, prebuilt with network
STATE = f"/tmp/pef-{os.getpid()}"  # the launchers' state root for this run (short: sockets)
STEPS = 200


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    if not only_loopback():
        raise RuntimeError("run ray_cases.py through tests/test_ray.py (inside unshare --net)")
    handle = RayCluster(tmp_path_factory.mktemp("ray-logs"))
    try:
        handle.start()
        yield handle
    finally:
        handle.close()
        shutil.rmtree(STATE, ignore_errors=True)


@pytest.fixture(scope="module")
def cartpole(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("env") / "cartpole_env"
    shutil.copytree(EXAMPLE_ENV, target)
    return target


@pytest.fixture(scope="module")
def fleet(cluster: RayCluster, cartpole: Path) -> Iterator[pray.Fleet]:
    with pray.launch(
        "mycart", path=cartpole, backend="venv", num_servers=2, cpus_per_server=0.5,
        placement="spread", cache_dir=CACHE, state_root=STATE,
    ) as handle:  # fmt: skip
        yield handle


def sync_trajectory(num_envs: int, seed: int, actions: np.ndarray) -> list:
    sync = gymnasium.vector.SyncVectorEnv(
        [lambda: gymnasium.make("CartPole-v1") for _ in range(num_envs)]
    )
    try:
        return [sync.reset(seed=seed)[0]] + [sync.step(a)[:4] for a in actions]
    finally:
        sync.close()


def fleet_trajectory(vec, seed: int, actions: np.ndarray) -> list:
    return [vec.reset(seed=seed)[0]] + [vec.step(a)[:4] for a in actions]


def assert_identical(ours: list, theirs: list) -> None:
    assert len(ours) == len(theirs)
    assert np.array_equal(ours[0], theirs[0]) and ours[0].dtype == theirs[0].dtype
    for step, (a, b) in enumerate(zip(ours[1:], theirs[1:])):
        for x, y in zip(a, b):
            assert np.array_equal(x, y) and x.dtype == y.dtype, f"step {step}: {x} != {y}"


def random_actions(count: int, num_envs: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, size=(count, num_envs), dtype=np.int64)


# -- the cases ---------------------------------------------------------------------


def test_the_cluster_has_two_nodes_advertised_on_loopback(cluster: RayCluster):
    nodes = cluster.alive_nodes()
    assert len(nodes) == 2
    assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}


def test_spread_servers_land_on_both_nodes_on_the_nodes_ray_address(
    cluster: RayCluster, fleet: pray.Fleet
):
    servers = fleet.servers()
    assert [s.index for s in servers] == [0, 1]
    assert len({s.node_id for s in servers}) == 2
    assert {s.node_id for s in servers} == {n["NodeID"] for n in cluster.alive_nodes()}
    assert all(s.ready and s.host == "127.0.0.1" for s in servers)
    assert all(s.address.startswith("127.0.0.1:") for s in servers)
    assert fleet.endpoints == [(s.node_id, s.address) for s in servers]
    for s in servers:  # the server is a child process of the launcher's supervisor
        assert s.server_pid not in (s.launcher_pid, s.supervisor_pid)
        assert pid_alive(s.server_pid) and pid_alive(s.supervisor_pid)


def test_a_seeded_fleet_trajectory_is_bit_identical_to_sync_vector_env(fleet: pray.Fleet):
    actions = random_actions(STEPS, 5, seed=1)
    with fleet.make_vec(num_envs=5, env_args=["CartPole-v1"]) as vec:
        assert vec.sizes == [3, 2]  # both servers hold envs
        ours = fleet_trajectory(vec, 7, actions)
    assert_identical(ours, sync_trajectory(5, 7, actions))


def test_fleet_make_is_one_env_on_one_server(fleet: pray.Fleet):
    env = fleet.make(env_args=["CartPole-v1"], server=1)
    try:
        obs, _ = env.reset(seed=3)
        expected, _ = gymnasium.make("CartPole-v1").reset(seed=3)
        assert np.array_equal(obs, expected)
    finally:
        env.close()


def test_a_wrong_token_is_refused_and_the_token_is_on_no_command_line(fleet: pray.Fleet):
    server = fleet.servers()[0]
    with pytest.raises(AuthenticationError):
        AgentSidePortal("mycart", ["CartPole-v1"], address=server.address, token="w" * 43)
    for pid in (server.launcher_pid, server.supervisor_pid, server.server_pid):
        assert fleet.token.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()


def test_a_killed_server_loses_its_step_comes_back_and_reset_works(fleet: pray.Fleet):
    actions = random_actions(60, 4, seed=2)
    with fleet.make_vec(num_envs=4, env_args=["CartPole-v1"]) as vec:
        vec.reset(seed=11)
        for a in actions[:5]:
            vec.step(a)
        before = fleet.servers()[1]
        os.kill(before.server_pid, signal.SIGKILL)
        assert wait_gone(before.server_pid, 10)
        with pytest.raises(PortalConnectionError, match="lost 1 of 2 servers") as lost:
            vec.step(actions[5])
        assert "the lost step is not resent" in str(lost.value)
        ours = fleet_trajectory(vec, 11, actions[6:])  # reset() waits for it, reconnects
        after = fleet.servers()[1]
    assert after.restarts == before.restarts + 1 and after.server_pid != before.server_pid
    assert after.launcher_pid == before.launcher_pid  # the supervisor restarted it, not Ray
    # nothing of the lost step reached the new server: the run after reset() is the same
    # as a fresh SyncVectorEnv's from the same seed
    assert_identical(ours, sync_trajectory(4, 11, actions[6:]))


def test_a_killed_launcher_is_restarted_by_ray_and_found_at_its_new_address(
    fleet: pray.Fleet,
):
    actions = random_actions(40, 4, seed=3)
    single = fleet.make(env_args=["CartPole-v1"], server=0)
    with fleet.make_vec(num_envs=4, env_args=["CartPole-v1"]) as vec:
        vec.reset(seed=5)
        single.reset(seed=5)
        before = fleet.servers()[0]
        os.kill(before.launcher_pid, signal.SIGKILL)
        # its supervisor stops the server when the launcher's lifeline closes
        assert wait_gone(before.server_pid, 30) and wait_gone(before.supervisor_pid, 30)
        with pytest.raises(PortalConnectionError, match="lost 1 of 2 servers"):
            vec.step(actions[0])
        with pytest.raises(PortalConnectionError):
            single.step(0)
        ours = fleet_trajectory(vec, 5, actions[1:])
        after = fleet.servers()[0]
        obs, _ = single.reset(seed=5)  # the single env finds the new address too
        assert np.array_equal(obs, gymnasium.make("CartPole-v1").reset(seed=5)[0])
        single.close()
    assert after.launcher_pid != before.launcher_pid and after.ready
    assert after.server_pid != before.server_pid
    assert_identical(ours, sync_trajectory(4, 5, actions[1:]))


def test_stop_leaves_no_server_process_socket_state_or_actor(fleet: pray.Fleet):
    servers = fleet.servers()
    fleet.stop()
    fleet.stop()  # idempotent
    for s in servers:
        for pid in (s.server_pid, s.supervisor_pid, s.launcher_pid):
            assert wait_gone(pid, 30), pid
        assert not Path(s.log_path).parent.parent.exists()  # the launcher's state dir
        host, port = s.address.rsplit(":", 1)
        with pytest.raises(OSError):
            __import__("socket").create_connection((host, int(port)), 2).close()
    assert _alive_launchers() == []
    with pytest.raises(FleetError, match="was stopped; launch"):
        fleet.make_vec(num_envs=2, env_args=["CartPole-v1"])


def test_driver_exit_leaves_no_server_process_or_actor(cluster: RayCluster, cartpole: Path):
    driver = textwrap.dedent(f"""
        import json, os, ray
        from portal_env import ray as pray
        ray.init(address={ADDRESS!r}, logging_level="WARNING")
        fleet = pray.launch("mycart", path={str(cartpole)!r}, backend="venv", num_servers=2,
                            cpus_per_server=0.5, cache_dir={CACHE!r}, state_root={STATE!r})
        print(json.dumps([s.__dict__ for s in fleet.servers()]), flush=True)
        os._exit(0)  # no stop(), no ray.shutdown(): the driver just ends
    """)
    out = subprocess.run(
        [sys.executable, "-c", driver], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    servers = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(servers) == 2
    for s in servers:
        for key in ("server_pid", "supervisor_pid", "launcher_pid"):
            assert wait_gone(s[key], 60), (key, s)
    deadline = time.monotonic() + 30
    while _alive_launchers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _alive_launchers() == []
    # the dead driver's placement group is freed too (Ray does it some time after the job ends)
    assert _wait_all_cpus_free(60), ray_resources()


def test_pack_places_every_server_on_one_node(cluster: RayCluster, cartpole: Path):
    # "pack" is best effort: it spreads when no single node has room, so start from a free cluster
    assert _wait_all_cpus_free(60), ray_resources()
    with pray.launch(
        "mycart", path=cartpole, backend="venv", num_servers=2, cpus_per_server=0.5,
        placement="pack", cache_dir=CACHE, state_root=STATE,
    ) as fleet:  # fmt: skip
        servers = fleet.servers()
        assert len({s.node_id for s in servers}) == 1
        # launchers killed earlier (the driver-exit case) left directories; starting swept them
        left = sorted(p.name for p in Path(STATE).iterdir())
        assert sorted(name.rsplit("-", 1)[1] for name in left) == sorted(
            str(s.launcher_pid) for s in servers
        ), left


def test_bad_arguments_are_refused_naming_the_value(cluster: RayCluster, cartpole: Path):
    with pytest.raises(FleetError, match="placement='wide'"):
        pray.launch("mycart", path=cartpole, backend="venv", placement="wide")
    with pytest.raises(FleetError, match="num_servers=0"):
        pray.launch("mycart", path=cartpole, backend="venv", num_servers=0)
    with pytest.raises(FleetError, match="could not place 3 servers of 1 CPUs"):
        pray.launch("mycart", path=cartpole, backend="venv", num_servers=3,
                    placement="strict_spread", cache_dir=CACHE, state_root=STATE)  # fmt: skip


def test_a_server_that_cannot_start_fails_the_launch_with_its_output(
    cluster: RayCluster, cartpole: Path, tmp_path: Path
):
    broken = tmp_path / "broken_env"
    shutil.copytree(cartpole, broken)  # same lockfile: the cached runtime is reused
    (broken / "env_main.py").write_text('raise SystemExit("broken on purpose")\n')
    with pytest.raises(FleetError, match="broken on purpose") as failed:
        pray.launch("broken", path=broken, backend="venv", num_servers=2, cpus_per_server=0.5,
                    cache_dir=CACHE, state_root=STATE, start_timeout=240)  # fmt: skip
    assert str(failed.value).startswith(
        "server 0 of 'broken' could not start: ServerStartError: portal 'broken' failed"
    )
    assert "File " not in str(failed.value)  # the server's output, not Ray's traceback
    # "could not start", not "was not ready within 240s": the failure ended the wait
    deadline = time.monotonic() + 30
    while _alive_launchers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _alive_launchers() == []


def test_a_stopped_raylet_s_servers_come_back_on_the_other_node(
    cluster: RayCluster, cartpole: Path
):
    """Last: it ends the second node."""
    actions = random_actions(30, 4, seed=4)
    with pray.launch(
        "mycart", path=cartpole, backend="venv", num_servers=2, cpus_per_server=0.5,
        placement="spread", cache_dir=CACHE, state_root=STATE,
    ) as fleet:  # fmt: skip
        head = ray_head_node_id()
        with fleet.make_vec(num_envs=4, env_args=["CartPole-v1"]) as vec:
            vec.reset(seed=9)
            moved = [s for s in fleet.servers() if s.node_id != head]
            assert len(moved) == 1
            cluster.stop_worker()
            assert wait_gone(moved[0].server_pid, 60)
            with pytest.raises(PortalConnectionError, match="lost 1 of 2 servers"):
                vec.step(actions[0])
            ours = fleet_trajectory(vec, 9, actions[1:])
            assert {s.node_id for s in fleet.servers()} == {head}
    assert_identical(ours, sync_trajectory(4, 9, actions[1:]))


def ray_head_node_id() -> str:
    import ray

    node = ray.get_runtime_context().get_node_id()
    heads = [n["NodeID"] for n in ray.nodes() if "node:__internal_head__" in n["Resources"]]
    assert heads == [node], "the test driver must run on the head (RayCluster.start)"
    return node


def _alive_launchers() -> list:
    """Launcher actors the GCS does not list as dead (ray.util.state needs the dashboard,
    which the test cluster does not run)."""
    from ray._private import state

    return [
        a for a in state.actors().values()
        if a["ActorClassName"].endswith("Launcher") and a["State"] != "DEAD"
    ]  # fmt: skip


def ray_resources() -> dict:
    import ray

    return {"available": ray.available_resources(), "total": ray.cluster_resources()}


def _wait_all_cpus_free(timeout: float) -> bool:
    """True once no placement group or actor holds any of the cluster's CPUs."""
    import ray

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) == ray.cluster_resources().get("CPU"):
            return True
        time.sleep(0.5)
    return False
