"""The default num_workers: the cost model's choice, and that it follows what was measured."""

from __future__ import annotations

import os

import pytest

from portal_env import make_vec
from portal_env.portal.vector import costmodel, workers
from tests import envs
from tests.test_workers import child_pids


def test_the_model_gives_workers_only_where_they_save_the_margin():
    pong, cartpole, handoff = 230e-6, 12e-6, 100e-6
    assert costmodel.choose(8, pong, handoff, 2) == 2
    assert costmodel.choose(8, cartpole, handoff, 2) == 1
    # one step cost, two hand-offs: the decision moves with h
    step = 100e-6  # T(1) = 800 us; T(2) = 400 us + h, which must be <= 520 us
    assert costmodel.choose(8, step, 110e-6, 2) == 2
    assert costmodel.choose(8, step, 130e-6, 2) == 1
    assert costmodel.choose(8, 1.0, 0.0, 1) == 1  # one core
    assert costmodel.choose(3, 1.0, 0.0, 8) == 3  # at most a process per instance
    assert costmodel.choose(5, 1.0, 0.1, 4) == 3  # 5 on 4 processes take as long as on 3
    assert costmodel.estimate(8, step, 0.1, 1) == pytest.approx(8 * step)
    assert costmodel.estimate(8, step, 0.1, 3) == pytest.approx(3 * step + 0.1)


def test_break_even_is_where_the_choice_flips():
    for n, cores, handoff in ((8, 2, 120e-6), (4, 2, 80e-6), (16, 8, 200e-6), (5, 4, 50e-6)):
        t = costmodel.break_even(n, handoff, cores)
        assert costmodel.choose(n, t * 1.01, handoff, cores) > 1
        assert costmodel.choose(n, t * 0.99, handoff, cores) == 1
    assert costmodel.break_even(8, 1e-4, 1) is None
    assert costmodel.break_even(1, 1e-4, 4) is None


def test_a_step_is_timed_on_a_throwaway_instance():
    step = costmodel.step_seconds(envs.make, ["PortalTest/Busy-v0"], {"cost": 0.002})
    assert step >= 0.002  # a busy wait of 2 ms cannot take less


def test_an_env_that_cannot_be_probed_gets_a_process_per_core():
    def broken(*args, **kwargs):
        raise RuntimeError("no display")

    assert costmodel.step_seconds(broken, [], {}) is None
    processes, measured = costmodel.default_workers(broken, [], {}, 8, cores=2)
    assert (processes, measured) == (2, {})
    assert costmodel.default_workers(broken, [], {}, 8, cores=1) == (1, {})


def test_the_handoff_is_measured_once_through_a_real_worker(monkeypatch):
    monkeypatch.setattr(costmodel, "_handoff", {})  # this process measures afresh
    handoff = costmodel.handoff_seconds()
    assert 0 < handoff < 1.0  # a round trip, not a timeout
    assert costmodel.handoff_seconds() == handoff  # kept
    assert child_pids(os.getpid()) == []  # its worker is gone


def test_the_default_follows_the_handoff_the_server_measured(server):
    """Busy envs of a step cost well below and well above where the model flips for the
    hand-off this server measured: no workers, then a process per core."""
    n, cores = 4, workers.available_cores()
    with make_vec("custom", n, ["PortalTest/Busy-v0"], **server.kwargs()) as first:
        if cores == 1:
            assert first.num_workers == 0 and first.sizing == {}
            pytest.skip("one core: the model never gives workers")
        handoff = first.sizing["handoff_s"]
    flip = costmodel.break_even(n, handoff, cores)
    for cost, expected in ((flip / 4, 0), (flip * 4, min(cores, n))):
        with make_vec(
            "custom", n, ["PortalTest/Busy-v0"], {"cost": cost}, **server.kwargs()
        ) as vec:
            vec.reset(seed=0)
            assert vec.sizing["handoff_s"] == handoff  # measured once per server
            assert vec.sizing["step_s"] >= cost
            chosen = costmodel.choose(n, vec.sizing["step_s"], handoff, cores)
            assert vec.num_workers == (chosen if chosen > 1 else 0) == expected, (cost, vec.sizing)
            assert len(child_pids(server.proc.pid)) == max(expected - 1, 0)  # real processes
