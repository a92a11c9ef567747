"""make_vec with worker processes: shards stepped at once, exact results, clean ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from portal_env import RemoteEnvError, make_vec
from portal_env.portal.vector import workers
from portal_env.portal.vector.hosted import HostedVectorEnv
from portal_env.portal.vector.shard import InstanceError
from tests import envs
from tests.conftest import ROOT, pid_alive, start_server, wait_gone
from tests.test_agent import assert_identical
from tests.test_vector import local_vec, vec_trajectory


def child_pids(pid):
    """Direct children of pid, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return sorted(out)


def shared_files(pids):
    """Files under /dev/shm that the processes map: (path, deleted) pairs."""
    found = set()
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split(None, 5)
            if len(fields) == 6 and fields[5].startswith("/dev/shm/"):
                path = fields[5]
                found.add((path.replace(" (deleted)", ""), path.endswith("(deleted)")))
    return found


def maps_batch(pid):
    """Whether pid maps a shared observation batch (an anonymous memfd)."""
    return "/memfd:portal-env-batch" in Path(f"/proc/{pid}/maps").read_text()


def test_split_is_contiguous_and_balanced():
    assert workers.split(5, 3) == [range(0, 2), range(2, 4), range(4, 5)]
    assert workers.split(3, 3) == [range(0, 1), range(1, 2), range(2, 3)]
    assert workers.split(7, 2) == [range(0, 4), range(4, 7)]
    assert workers.available_cores() >= 1


@pytest.mark.parametrize("num_workers", [2, 3, 4])
@pytest.mark.parametrize(
    "env_id,num_envs,steps",
    [("CartPole-v1", 5, 220), ("PortalTest/Rich-v0", 5, 20), ("PortalTest/Typed-v0", 5, 45)],
)
def test_sharded_trajectory_is_bit_identical_to_sync_vector_env(
    server, env_id, num_envs, steps, num_workers
):
    remote = make_vec("custom", num_envs, [env_id], num_workers=num_workers, **server.kwargs())
    local = local_vec(env_id, num_envs)
    # the server thread steps the first shard; 1, 2, 3 forked workers the others
    assert len(child_pids(server.proc.pid)) == num_workers - 1
    expected = vec_trajectory(local, 3, steps)
    assert_identical(vec_trajectory(remote, 3, steps), expected)
    # Episodes end in different shards within these steps: autoreset ran across shards.
    ends = np.array([step[2] | step[3] for step in expected[1:]])
    assert ends[:, 0].any() and ends[:, -1].any()
    remote.close()
    local.close()
    assert wait_gone_all(child_pids(server.proc.pid), 0)


def test_by_default_cheap_envs_step_in_the_server_and_slow_ones_in_workers(server):
    cores = workers.available_cores()
    with make_vec("custom", 4, ["PortalTest/Slow-v0"], **server.kwargs()) as cheap:
        assert cheap.reset(seed=0)[0].shape == (4, 2)
        assert child_pids(server.proc.pid) == []  # the probe's instance is gone too
    slow = {"delay": 0.002}  # 4 x 2 ms a batch: workers pay off
    with make_vec("custom", 4, ["PortalTest/Slow-v0"], slow, **server.kwargs()) as vec:
        vec.reset(seed=0)
        assert len(child_pids(server.proc.pid)) == (min(cores, 4) - 1 if cores > 1 else 0)


def wait_gone_all(pids, seconds=10.0):
    return all(wait_gone(pid, seconds) for pid in pids)


@pytest.mark.parametrize("screen_into", [False, True])
@pytest.mark.parametrize("num_workers", [2, 3])
def test_pong_sharded_matches_sync_vector_env(server, num_workers, screen_into):
    kwargs = {"screen_into": True} if screen_into else {}
    remote = make_vec(
        "custom", 5, ["ALE/Pong-v5"], kwargs, num_workers=num_workers, **server.kwargs()
    )
    local = local_vec("ALE/Pong-v5", 5)
    assert remote._client.layout.shm is not None  # frames reach the agent by shared memory
    assert_identical(vec_trajectory(remote, 1, 30), vec_trajectory(local, 1, 30))
    # with the hook, ALE wrote each step's frame straight into the agent's mapping
    writes = remote.get_attr("portal_screen_writes") if screen_into else (0,) * 5
    assert all(w >= 29 for w in writes) == screen_into, writes
    remote.close()


def test_grayscale_frames_are_written_into_the_servers_shared_batch(server, monkeypatch):
    """A batch that takes the socket, not the agent's memory: with the hook, ALE writes
    the frames straight into the shared batch the worker and the server hold."""
    from portal_env.portal import sharedmem

    monkeypatch.setattr(sharedmem, "MIN_BYTES", 1 << 40)  # as for an agent on another host
    kwargs = {"obs_type": "grayscale"}
    remote = make_vec(
        "custom", 2, ["ALE/Pong-v5"], dict(kwargs, screen_into=True), num_workers=2,
        **server.kwargs(),
    )  # fmt: skip
    assert remote._client.layout.shm is None
    local = local_vec("ALE/Pong-v5", 2, **kwargs)
    assert_identical(vec_trajectory(remote, 2, 30), vec_trajectory(local, 2, 30))
    assert all(w >= 29 for w in remote.get_attr("portal_screen_writes"))  # server's, worker's
    remote.close()
    local.close()


def test_render_call_and_attributes_across_shards(server):
    vec = make_vec(
        "custom",
        5,
        ["PortalTest/Rich-v0"],
        {"render_mode": "rgb_array"},
        num_workers=2,
        **server.kwargs(),
    )
    vec.reset(seed=0)
    vec.step(vec.action_space.sample())
    frames = vec.render()
    assert isinstance(frames, tuple) and len(frames) == 5 and frames[4].shape == (8, 6, 3)
    assert vec.call("double", 3, scale=4) == (12,) * 5
    vec.set_attr("label", list("abcde"))
    assert vec.get_attr("label") == tuple("abcde")
    vec.set_attr("label", "same")
    assert vec.get_attr("label") == ("same",) * 5
    with pytest.raises(RemoteEnvError, match="env instance 0 raised AttributeError"):
        vec.get_attr("no_such_attribute")
    vec.close()


def test_pids_show_one_process_per_shard(server):
    vec = make_vec("custom", 5, ["PortalTest/Slow-v0"], num_workers=3, **server.kwargs())
    pids = vec.call("pid")
    assert pids[0] == pids[1] == server.proc.pid  # the first shard: the server's own thread
    assert pids[2] == pids[3] and len(set(pids)) == 3
    assert sorted(set(pids[2:])) == child_pids(server.proc.pid)
    vec.close()


def test_bad_num_workers_is_named(server):
    with pytest.raises(RemoteEnvError, match="num_workers must be .* num_envs=2, got 3"):
        make_vec("custom", 2, ["CartPole-v1"], num_workers=3, **server.kwargs())


def test_an_env_error_names_its_instance_and_the_worker_traceback(server):
    vec = make_vec("custom", 5, ["PortalTest/Faulty-v0"], num_workers=2, **server.kwargs())
    vec.reset(seed=0)
    with pytest.raises(RemoteEnvError) as caught:
        vec.step(np.array([0, 0, 0, 0, 1]))
    message = str(caught.value)
    assert "env instance 4 raised ZeroDivisionError: step failed on purpose" in message
    assert "_explode" in message  # the worker's own traceback
    assert vec.step(np.zeros(5, np.int64))[1].tolist() == [0.0] * 5  # still usable
    with pytest.raises(RemoteEnvError) as caught:  # in the shard of the server's own thread
        vec.step(np.array([0, 1, 0, 0, 1]))
    message = str(caught.value)
    assert "env instance 1 raised ZeroDivisionError: step failed on purpose" in message
    assert "_explode" in message and "instance 4" not in message  # the first failure only
    assert vec.step(np.zeros(5, np.int64))[1].tolist() == [0.0] * 5
    # the workers are made first: the first worker's first instance names the failure
    with pytest.raises(RemoteEnvError, match="env instance 2 raised RuntimeError: factory failed"):
        make_vec(
            "custom",
            3,
            ["PortalTest/Faulty-v0"],
            {"fail_in": "init"},
            num_workers=2,
            **server.kwargs(),
        )
    vec.close()


def test_a_worker_killed_mid_step_is_named_and_the_server_lives_on(server):
    vec = make_vec("custom", 5, ["PortalTest/Slow-v0"], num_workers=2, **server.kwargs())
    vec.reset(seed=0)
    pids = vec.call("pid")
    assert pids[0] == server.proc.pid and child_pids(server.proc.pid) == [pids[3]]
    vec.set_attr("delay", [0.0, 0.0, 0.0, 2.0, 2.0])
    outcome = {}

    def step():
        try:
            vec.step(np.zeros(5, np.int64))
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=step)
    thread.start()
    time.sleep(0.5)  # both shards stepped; the worker's sleeps in instance 3
    os.kill(pids[3], signal.SIGKILL)
    thread.join(30)
    error = outcome.get("error")
    assert isinstance(error, RemoteEnvError), outcome
    assert f"(pid {pids[3]}) running env instances 3-4 died (killed by SIGKILL)" in str(error)
    with pytest.raises(RemoteEnvError, match="env instances 3-4 died"):
        vec.step(np.zeros(5, np.int64))
    vec.close()
    assert wait_gone(pids[3]) and child_pids(server.proc.pid) == []
    assert server.proc.poll() is None
    with make_vec("custom", 2, ["CartPole-v1"], num_workers=2, **server.kwargs()) as fresh:
        fresh.reset(seed=0)


def test_workers_and_shared_memory_go_with_a_closed_env(server):
    vec = make_vec("custom", 3, ["ALE/Pong-v5"], num_workers=3, **server.kwargs())
    vec.reset(seed=0)
    pids = child_pids(server.proc.pid)
    assert len(pids) == 2  # the server thread steps the first shard, workers the others
    files = shared_files([server.proc.pid, os.getpid(), *pids])
    assert files and all(deleted for _, deleted in files), files  # named nowhere while in use
    assert all(maps_batch(pid) for pid in [server.proc.pid, *pids])  # one nameless batch
    assert all(shared_files([pid]) for pid in pids)  # and steps go into the agent's mapping
    vec.close()
    assert wait_gone_all(pids)
    assert not any(os.path.exists(path) for path, _ in files)


AGENT = """
import sys, time
sys.path.insert(0, {root!r})
from portal_env import make_vec
vec = make_vec("custom", 3, ["ALE/Pong-v5"], num_workers=3, address={address!r}, token={token!r})
vec.reset(seed=0)
vec.step(vec.action_space.sample())
print("ready", flush=True)
time.sleep(60)
"""


def test_workers_go_when_the_agent_is_sigkilled(server):
    code = AGENT.format(root=str(ROOT), address=server.address, token=server.token)
    agent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout.readline().strip() == "ready"
        pids = child_pids(server.proc.pid)
        assert len(pids) == 2  # the server thread steps the first shard
        files = shared_files([server.proc.pid, agent.pid, *pids])
        assert files and all(deleted for _, deleted in files)
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        assert wait_gone_all(pids)
        assert server.proc.poll() is None
        assert not any(os.path.exists(path) for path, _ in files)
    finally:
        agent.kill()
        agent.wait()


def test_workers_go_when_the_server_is_sigkilled(tmp_path):
    handle = start_server(tmp_path)
    try:
        vec = make_vec("custom", 3, ["ALE/Pong-v5"], num_workers=3, **handle.kwargs())
        vec.reset(seed=0)
        pids = child_pids(handle.proc.pid)
        assert len(pids) == 2 and all(pid_alive(pid) for pid in pids)
        files = shared_files([handle.proc.pid, os.getpid(), *pids])
        handle.proc.send_signal(signal.SIGKILL)
        handle.proc.wait(10)
        assert wait_gone_all(pids)
        assert not any(os.path.exists(path) for path, _ in files)
        vec.close()
    finally:
        handle.stop()


def test_without_shared_memory_the_batch_travels_by_socket(server, monkeypatch):
    from portal_env.portal import sharedmem

    monkeypatch.setattr(sharedmem, "MIN_BYTES", 1 << 40)  # as for an agent on another host
    remote = make_vec("custom", 3, ["ALE/Pong-v5"], num_workers=2, **server.kwargs())
    assert remote._client.layout.shm is None
    assert_identical(
        vec_trajectory(remote, 5, 12), vec_trajectory(local_vec("ALE/Pong-v5", 3), 5, 12)
    )
    remote.close()


def test_a_killed_pong_worker_is_named_on_the_next_step(server):
    vec = make_vec("custom", 4, ["ALE/Pong-v5"], num_workers=2, **server.kwargs())
    vec.reset(seed=0)
    vec.step(vec.action_space.sample())
    names = {
        Path(f"/proc/{pid}/comm").read_text().strip(): pid for pid in child_pids(server.proc.pid)
    }
    assert sorted(names) == ["penv-worker-2"]  # instances 0-1: the server's own thread
    second = names["penv-worker-2"]
    os.kill(second, signal.SIGKILL)
    assert wait_gone(second)
    with pytest.raises(RemoteEnvError, match=f"\\(pid {second}\\) running env instances 2-3 died"):
        vec.step(vec.action_space.sample())
    vec.close()
    assert child_pids(server.proc.pid) == []


def test_a_failed_step_still_teaches_the_info_schema_the_other_shard_sent():
    """Step 10 changes the infos' types back (Infos-v0); instance 3 fails in that step, and
    shard 0's infos of steps 11 and 12 must still come back with their exact types."""
    vec = HostedVectorEnv(envs.make, 4, ["PortalTest/Infos-v0"], {}, num_workers=2)
    local = [envs.make("PortalTest/Infos-v0") for _ in range(2)]
    try:
        vec.reset([0, 1, 2, 3], None)
        for seed, env in enumerate(local):
            env.reset(seed=seed)
        vec.set_attr("fail_at", [None, None, None, 10])
        for t in range(1, 13):
            expected = [env.step(0)[4] for env in local]
            if t == 10:
                with pytest.raises(InstanceError, match="env instance 3 raised ValueError"):
                    vec.step(np.zeros(4, np.int64))
                continue
            assert_identical(vec.step(np.zeros(4, np.int64))[4][:2], expected)
    finally:
        vec.close()
