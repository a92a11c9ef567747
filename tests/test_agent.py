"""AgentSidePortal against a real server process: the whole gymnasium API."""

from __future__ import annotations

import os
import signal
import threading
import time

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from portal_env import AgentSidePortal, AuthenticationError, PortalConnectionError, RemoteEnvError
from tests import envs


def assert_identical(a, b, path="value"):
    """Same type, dtype, shape and bits, recursively."""
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, (
            f"{path}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        )
        if a.dtype == object:
            assert_identical(a.tolist(), b.tolist(), path)
        else:
            assert a.tobytes() == b.tobytes(), f"{path}: array contents differ"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for key in a:
            assert_identical(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}[{i}]")
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), f"{path}: {a!r} != {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def process_state(pid):
    """The one-letter state of pid from /proc (R, S, T for stopped, ...)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def run_trajectory(env, seed, steps):
    """Seeded reset and `steps` steps with seeded actions; every return value."""
    env.action_space.seed(seed)
    out = [env.reset(seed=seed)]
    for _ in range(steps):
        result = env.step(env.action_space.sample())
        out.append(result)
        if result[2] or result[3]:
            out.append(env.reset())
    return out


@pytest.mark.parametrize(
    "env_id", ["CartPole-v1", "Pendulum-v1", "PortalTest/Rich-v0", "MountainCarContinuous-v0"]
)
def test_gymnasium_check_env_passes(server, env_id):
    with AgentSidePortal("custom", env_args=[env_id], **server.kwargs()) as env:
        check_env(env, skip_render_check=True)


@pytest.mark.parametrize(
    "env_id,steps",
    [("CartPole-v1", 300), ("PortalTest/Rich-v0", 40), ("PortalTest/Typed-v0", 60)],
)
def test_seeded_trajectory_is_bit_identical_to_in_process(server, env_id, steps):
    local = envs.make(env_id)
    remote = AgentSidePortal("custom", env_args=[env_id], **server.kwargs())
    try:
        assert_identical(run_trajectory(remote, 42, steps), run_trajectory(local, 42, steps))
    finally:
        remote.close()
        local.close()


def test_spaces_metadata_and_render(server):
    env = AgentSidePortal(
        "custom", ["PortalTest/Rich-v0"], {"render_mode": "rgb_array"}, **server.kwargs()
    )
    local = envs.make("PortalTest/Rich-v0", render_mode="rgb_array")
    assert env.observation_space == local.observation_space
    assert isinstance(env.observation_space, gymnasium.spaces.Dict)
    assert env.action_space == local.action_space
    assert env.metadata == local.metadata
    assert env.render_mode == "rgb_array"
    assert env.remote_spec_id == "PortalTest/Rich-v0"
    env.reset(seed=1)
    env.step(env.action_space.sample())
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.shape == (8, 6, 3) and (frame == 1).all()
    env.close()


def test_call_get_attr_and_set_attr(server):
    env = AgentSidePortal("custom", ["PortalTest/Rich-v0"], **server.kwargs())
    assert env.call("double", 21) == 42
    assert env.call("double", 2, scale=5) == 10
    assert env.get_attr("label") == "initial"
    env.set_attr("label", "changed")
    assert env.call("label") == "changed"  # not callable: read, as gymnasium's vector call does
    env.close()


def test_remote_exception_carries_type_and_traceback_and_server_lives_on(server):
    env = AgentSidePortal("custom", ["PortalTest/Faulty-v0"], **server.kwargs())
    env.reset()
    with pytest.raises(RemoteEnvError) as caught:
        env.step(1)
    err = caught.value
    assert err.remote_type == "ZeroDivisionError"
    assert "step failed on purpose" in str(err)
    assert "_explode" in err.remote_traceback and "envs.py" in err.remote_traceback
    with pytest.raises(RemoteEnvError, match="KeyError"):
        env.render()
    assert env.step(0)[1] == 0.0  # the same instance still works
    env.close()
    with pytest.raises(RemoteEnvError, match="factory failed on purpose"):
        AgentSidePortal("custom", ["PortalTest/Faulty-v0"], {"fail_in": "init"}, **server.kwargs())
    bad_reset = AgentSidePortal(
        "custom", ["PortalTest/Faulty-v0"], {"fail_in": "reset"}, **server.kwargs()
    )
    with pytest.raises(RemoteEnvError, match="ValueError: reset failed on purpose"):
        bad_reset.reset()
    bad_reset.close()
    with AgentSidePortal("custom", ["CartPole-v1"], **server.kwargs()) as other:
        other.reset(seed=0)
    with pytest.raises(RemoteEnvError, match="NameNotFound|not found|doesn't exist"):
        AgentSidePortal("custom", ["NoSuchEnv-v0"], **server.kwargs())
    assert server.proc.poll() is None


def test_wrong_token_is_refused_with_a_clear_error(server):
    with pytest.raises(AuthenticationError, match="refused the token"):
        AgentSidePortal("custom", ["CartPole-v1"], address=server.address, token="wrong")
    with AgentSidePortal("custom", ["CartPole-v1"], **server.kwargs()) as env:
        env.reset()


def test_nothing_listening_gives_connection_error():
    with pytest.raises(PortalConnectionError, match="cannot connect"):
        AgentSidePortal("custom", ["CartPole-v1"], address="127.0.0.1:1", token="x")


@pytest.mark.timeout(60)  # noticed at once, not after the 300 s call timeout
def test_server_killed_mid_episode_gives_a_connection_error(server):
    env = AgentSidePortal("custom", ["CartPole-v1"], **server.kwargs())
    env.reset(seed=0)
    env.step(0)
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    with pytest.raises(PortalConnectionError, match="lost the connection.*not resent"):
        env.step(0)
    with pytest.raises(PortalConnectionError, match="was lost earlier"):
        env.step(0)  # never silently resent on a new connection
    env.close()
    env.close()  # idempotent


@pytest.mark.timeout(60)  # the 1 s timeout given, not the 300 s default
def test_server_hung_mid_call_times_out(server):
    env = AgentSidePortal("custom", ["CartPole-v1"], timeout=1.0, **server.kwargs())
    env.reset(seed=0)
    os.kill(server.proc.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while process_state(server.proc.pid) != "T" and time.monotonic() < deadline:
        time.sleep(0.01)  # SIGSTOP takes effect asynchronously
    try:
        with pytest.raises(PortalConnectionError, match="timed out"):
            env.step(0)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    env.close()


def test_reset_after_server_restart_makes_a_fresh_remote_env(tmp_path):
    from tests.conftest import start_server

    first = start_server(tmp_path)
    port = first.address.rsplit(":", 1)[1]
    env = AgentSidePortal("custom", ["CartPole-v1"], **first.kwargs())
    env.reset(seed=0)
    first.proc.kill()
    first.proc.wait()
    with pytest.raises(PortalConnectionError):
        env.step(0)
    second = start_server(tmp_path, {"PORTAL_ENV_PORT": port, "PORTAL_ENV_TOKEN": first.token})
    try:
        obs, _ = env.reset(seed=0)
        assert obs.shape == (4,)
        env.step(0)
    finally:
        env.close()
        second.stop()


def test_sixteen_megabyte_observation(server):
    env = AgentSidePortal("custom", ["PortalTest/Big-v0"], **server.kwargs())
    local = envs.make("PortalTest/Big-v0")
    obs, _ = env.reset(seed=3)
    expected, _ = local.reset(seed=3)
    assert obs.nbytes == 16 * 1024 * 1024
    assert obs.flags.writeable and obs.flags.aligned
    np.testing.assert_array_equal(obs, expected)
    obs2 = env.step(0)[0]
    np.testing.assert_array_equal(obs2, local.step(0)[0])
    env.close()


def test_two_agents_on_one_server_at_once(server):
    results = {}

    def agent(seed):
        with AgentSidePortal("custom", ["CartPole-v1"], **server.kwargs()) as env:
            results[seed] = run_trajectory(env, seed, 200)

    threads = [threading.Thread(target=agent, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for seed in (1, 2):
        assert_identical(results[seed], run_trajectory(gymnasium.make("CartPole-v1"), seed, 200))


def test_agents_from_two_processes(server):
    import subprocess
    import sys

    code = (
        "from portal_env import AgentSidePortal\n"
        f"env = AgentSidePortal('custom', ['CartPole-v1'], address={server.address!r}, "
        f"token={server.token!r})\n"
        "env.reset(seed=0)\n"
        "for _ in range(100): env.step(env.action_space.sample())\n"
        "env.close(); print('done')\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    assert [p.communicate(timeout=60)[0].strip() for p in procs] == ["done", "done"]


def test_large_observations_travel_through_shared_memory_that_leaves_no_file(server):
    import glob

    before = set(glob.glob("/dev/shm/portal-env-*"))
    env = AgentSidePortal("custom", ["ALE/Pong-v5"], **server.kwargs())
    local = envs.make("ALE/Pong-v5")
    assert env._client.layout.shm is not None  # 100 KB frames: shared memory engaged
    assert set(glob.glob("/dev/shm/portal-env-*")) == before  # unlinked at once
    assert_identical(run_trajectory(env, 5, 30), run_trajectory(local, 5, 30))
    obs = env.step(0)[0]
    obs2 = env.step(0)[0]
    assert obs is not obs2 and not obs.flags.writeable  # a view into a ring slot (obsring)
    kept = obs.copy()
    for _ in range(10):  # the slot of a view still referenced is never reused
        env.step(0)
    assert np.array_equal(obs, kept)
    env.close()


def test_small_observations_use_no_shared_memory(server):
    with AgentSidePortal("custom", ["CartPole-v1"], **server.kwargs()) as env:
        assert env._client.layout.shm is None


def test_dict_observations_share_memory_and_stay_exact(server):
    env = AgentSidePortal("custom", ["PortalTest/Screen-v0"], **server.kwargs())
    local = envs.make("PortalTest/Screen-v0")
    assert env._client._channel.shm is not None  # 230 KB screens: shared memory engaged
    assert_identical(run_trajectory(env, 4, 40), run_trajectory(local, 4, 40))
    obs, _ = env.reset(seed=1)
    screen = obs["screen"]
    screen[:] = 7  # the agent's own copy: later messages do not touch it
    env.step(0)
    assert (screen == 7).all() and screen.flags.writeable
    env.close()
