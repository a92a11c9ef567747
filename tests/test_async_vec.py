"""EnvPool-style make_vec(batch_size=M): send/recv with env ids, and step_async/step_wait."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from portal_env import RemoteEnvError, make_vec
from tests.conftest import wait_gone
from tests.test_agent import assert_identical
from tests.test_vector import local_vec, vec_trajectory
from tests.test_workers import child_pids


def per_instance_actions(vec, num_envs, steps, seed):
    """A fixed action sequence for each instance, independent of stepping order."""
    rngs = [np.random.default_rng(seed + i) for i in range(num_envs)]
    n = int(vec.single_action_space.n)
    return [[int(rng.integers(n)) for _ in range(steps)] for rng in rngs]


def sync_columns(env_id, num_envs, actions, seed):
    """Each instance's (obs, reward, terminated, truncated) sequence under SyncVectorEnv."""
    local = local_vec(env_id, num_envs)
    obs, _ = local.reset(seed=seed)
    columns = [[(obs[i], 0.0, False, False)] for i in range(num_envs)]
    for t in range(len(actions[0])):
        obs, rew, term, trunc, _ = local.step(np.array([a[t] for a in actions]))
        for i in range(num_envs):
            columns[i].append((obs[i], float(rew[i]), bool(term[i]), bool(trunc[i])))
    local.close()
    return columns


@pytest.mark.parametrize(
    "env_id,num_envs,num_workers,batch_size,steps",
    [("CartPole-v1", 5, 2, 2, 60), ("CartPole-v1", 4, 0, 3, 40), ("ALE/Pong-v5", 3, 3, 1, 15)],
)
def test_each_instance_follows_its_sync_vector_env_trajectory(
    server, env_id, num_envs, num_workers, batch_size, steps
):
    vec = make_vec(
        "custom",
        num_envs,
        [env_id],
        num_workers=num_workers,
        batch_size=batch_size,
        **server.kwargs(),
    )
    actions = per_instance_actions(vec, num_envs, steps, seed=11)
    expected = sync_columns(env_id, num_envs, actions, seed=4)
    got = [[] for _ in range(num_envs)]
    vec.async_reset(seed=4)
    while any(len(g) < steps + 1 for g in got):
        obs, rew, term, trunc, info = vec.recv()
        ids = info["env_id"]
        assert ids.dtype == np.int32 and len(ids) == batch_size
        assert obs.shape[0] == batch_size and rew.dtype == np.float64
        for row, i in enumerate(ids):
            got[i].append((obs[row], float(rew[row]), bool(term[row]), bool(trunc[row])))
        more = [i for i in ids if len(got[i]) <= steps]
        if more:
            vec.send(np.array([actions[i][len(got[i]) - 1] for i in more]), more)
        pending = [i for i in range(num_envs) if len(got[i]) <= steps and i not in more]
        if len(more) + len(pending) < batch_size:
            break  # the rest is fewer than a batch: done
    for i in range(num_envs):
        n = len(got[i])
        assert n >= steps + 2 - batch_size
        assert_identical([tuple(x) for x in got[i]], [tuple(x) for x in expected[i][:n]])
    vec.close()


@pytest.mark.timeout(120)
def test_a_slow_instance_does_not_hold_up_the_others(server, tmp_path):
    vec = make_vec(
        "custom", 4, ["PortalTest/Slow-v0"], num_workers=4, batch_size=2, **server.kwargs()
    )
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    vec.set_attr("gate", [None, str(gate), None, None])  # instance 1's step waits for it
    vec.set_attr("delay", [0.0, 1e-3, 0.0, 0.0])  # a tag in each obs: rows match ids
    vec.async_reset(seed=0)
    first = [vec.recv()[4]["env_id"], vec.recv()[4]["env_id"]]
    assert sorted(np.concatenate(first).tolist()) == [0, 1, 2, 3]
    vec.send(np.zeros(4, np.int64))
    held, released = [], []
    for _ in range(10):  # instance 1 is held: only the fast ones can come back
        obs, _, _, _, info = vec.recv()
        ids = info["env_id"].tolist()
        held.append(ids)
        assert obs[:, 1].tolist() == [1e-3 if i == 1 else 0.0 for i in ids]
        vec.send(np.zeros(len(ids), np.int64), ids)
    with open(gate, "wb"):  # release instance 1 (opening waits for its step to wait)
        pass
    while not released or 1 not in released[-1]:  # the fast ones cycle until it is back
        obs, _, _, _, info = vec.recv()
        ids = info["env_id"].tolist()
        released.append(ids)
        assert obs[:, 1].tolist() == [1e-3 if i == 1 else 0.0 for i in ids]
        if 1 not in ids:
            vec.send(np.zeros(len(ids), np.int64), ids)
    assert all(1 not in ids and len(ids) == 2 for ids in held)
    vec.close()


def test_misuse_is_reported_with_the_value_at_fault(server):
    vec = make_vec("custom", 3, ["CartPole-v1"], num_workers=3, batch_size=2, **server.kwargs())
    vec.async_reset(seed=0)
    first = vec.recv()[4]["env_id"]
    flying = int(({0, 1, 2} - set(first.tolist())).pop())
    with pytest.raises(RuntimeError, match="'step' while instances \\[.\\] were sent"):
        vec.step(np.zeros(3, np.int64))  # the agent knows, and says so before asking
    with pytest.raises(RuntimeError, match="'async_reset' while instances"):
        vec.async_reset()
    with pytest.raises(ValueError, match="env_id 7 is out of range for 3 envs"):
        vec.send(np.zeros(1, np.int64), [7])
    with pytest.raises(ValueError, match=f"env_id {flying} was sent an action already"):
        vec.send(np.zeros(1, np.int64), [flying])
    with pytest.raises(ValueError, match="env_ids \\[0, 0\\] name an instance twice"):
        vec.send(np.zeros(2, np.int64), [0, 0])
    with pytest.raises(ValueError, match="send got 2 actions for 1 env_ids"):
        vec.send(np.zeros(2, np.int64), first[:1])
    # none of those was sent: the instance in flight comes back with the one sent now
    vec.send(np.zeros(1, np.int64), first[:1])
    again = vec.recv()[4]["env_id"]
    assert sorted(again.tolist()) == sorted({int(first[0]), flying})
    # the server checks too (an agent of its own making): its error raises from the recv
    vec._client.post("send", [7], [0])
    with pytest.raises(RemoteEnvError, match="env_id 7 is out of range for 3 envs"):
        vec._client.call_next("recv", 2, 0)
    with pytest.raises(ValueError, match="batch_size must be from 1 to num_envs=3, got 4"):
        make_vec("custom", 3, ["CartPole-v1"], batch_size=4, **server.kwargs())
    vec.close()


def test_an_env_error_in_flight_names_the_instance(server):
    vec = make_vec(
        "custom", 4, ["PortalTest/Faulty-v0"], num_workers=2, batch_size=2, **server.kwargs()
    )
    vec.async_reset(seed=0)
    vec.recv(), vec.recv()
    vec.send(np.array([0, 0, 1, 0]))
    with pytest.raises(RemoteEnvError, match="env instance 2 raised ZeroDivisionError"):
        vec.recv()
        vec.recv()
    vec.close()


def test_a_killed_worker_in_flight_is_named(server):
    vec = make_vec(
        "custom", 4, ["PortalTest/Slow-v0"], num_workers=2, batch_size=2, **server.kwargs()
    )
    pids = vec.call("pid")
    vec.set_attr("delay", [0.0, 0.0, 5.0, 5.0])
    vec.async_reset(seed=0)
    vec.recv(), vec.recv()
    vec.send(np.zeros(4, np.int64))
    vec.recv()  # instances 0 and 1
    os.kill(pids[2], signal.SIGKILL)
    with pytest.raises(RemoteEnvError, match="running env instances 2-3 died \\(killed by SIGKILL"):
        vec.recv()
    vec.close()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_step_async_and_step_wait_equal_step(server, num_workers):
    remote = make_vec(
        "custom", 3, ["PortalTest/Rich-v0"], num_workers=num_workers, **server.kwargs()
    )
    local = local_vec("PortalTest/Rich-v0", 3)

    def overlapped(vec, seed, steps):
        vec.action_space.seed(seed)
        out = [vec.reset(seed=seed)]
        for _ in range(steps):
            vec.step_async(vec.action_space.sample())
            out.append(vec.step_wait())
        return out

    assert_identical(overlapped(remote, 2, 20), vec_trajectory(local, 2, 20))
    remote.close()


def test_recv_batches_are_read_only_views_that_never_change_while_kept(server, monkeypatch):
    vec = make_vec("custom", 4, ["ALE/Pong-v5"], num_workers=2, batch_size=2, **server.kwargs())
    vec.async_reset(seed=0)
    for _ in range(6):  # nothing kept: every batch is a view of a ring slot
        obs, _, _, _, info = vec.recv()
        assert obs.shape == (2, 210, 160, 3) and not obs.flags.writeable
        vec.send(np.zeros(2, np.int64), info["env_id"])
    kept = []
    for _ in range(8):  # more than the ring's slots: later batches come as copies
        obs, _, _, _, info = vec.recv()
        kept.append((obs, obs.copy()))
        vec.send(np.zeros(2, np.int64), info["env_id"])
    assert all(np.array_equal(view, copy) for view, copy in kept)
    assert any(not view.flags.writeable for view, _ in kept)
    assert kept[-1][0].flags.writeable  # every slot was held: the agent's own copy
    vec.close()
    monkeypatch.setenv("PORTAL_ENV_OBS_RING", "0")  # writable copies, as before rings
    vec = make_vec("custom", 2, ["ALE/Pong-v5"], num_workers=2, batch_size=1, **server.kwargs())
    vec.async_reset(seed=0)
    assert vec.recv()[0].flags.writeable
    vec.close()


def test_the_next_recv_is_posted_ahead_and_close_still_ends_cleanly(server):
    vec = make_vec(
        "custom", 6, ["PortalTest/Slow-v0"], num_workers=2, batch_size=2, **server.kwargs()
    )
    vec.async_reset(seed=0)
    ids = vec.recv()[4]["env_id"]
    assert vec._ahead  # 4 in flight: the next batch was asked for before this one returned
    with pytest.raises(RuntimeError, match="'call' while instances"):
        vec.call("pid")
    vec.send(np.zeros(2, np.int64), ids)
    seen = set()
    for _ in range(9):
        ids = vec.recv()[4]["env_id"]
        seen.update(ids.tolist())
        vec.send(np.zeros(2, np.int64), ids)
    assert seen == set(range(6))
    workers = child_pids(server.proc.pid)
    assert len(workers) == 2
    vec.close()  # with a recv posted ahead and instances in flight
    assert all(wait_gone(pid, 10) for pid in workers)


def test_a_recv_into_a_ring_slot_that_does_not_exist_is_refused(server):
    vec = make_vec("custom", 2, ["ALE/Pong-v5"], num_workers=2, batch_size=1, **server.kwargs())
    vec.async_reset(seed=0)
    with pytest.raises(RemoteEnvError, match="recv into ring slot 9 of 4"):
        vec._client.call_next("recv", 1, 9)
    got = {int(vec._client.call_next("recv", 1, 0)[5][0]) for _ in range(2)}
    assert got == {0, 1}  # the refused recv took nothing
    vec.close()
