"""The spin policy: poll only while the machine has a spare core."""

from __future__ import annotations

import pytest

from portal_env.portal import spin


@pytest.fixture
def loadavg(tmp_path, monkeypatch):
    path = tmp_path / "loadavg"
    monkeypatch.setattr(spin, "_LOADAVG", str(path))
    monkeypatch.setattr(spin, "_cores", 2)
    monkeypatch.setattr(spin, "_state", {"until": 0.0, "spare": True})
    return path


def test_the_real_count_includes_this_process():
    assert spin.runnable() >= 1


def test_no_spare_core_stops_spinning_and_is_rechecked(loadavg, monkeypatch):
    loadavg.write_text("9.18 8.78 5.95 5/139 19268\n")  # 5 runnable tasks on 2 cores
    assert spin.spare_core() is False
    loadavg.write_text("0.50 0.40 0.30 2/139 19268\n")
    assert spin.spare_core() is False  # cached for CHECK_S
    monkeypatch.setattr(spin, "_state", {"until": 0.0, "spare": False})  # CHECK_S later
    assert spin.spare_core() is True


def test_an_unreadable_count_allows_spinning(loadavg):
    assert not loadavg.exists()
    assert spin.runnable() == 0 and spin.spare_core() is True


def test_one_task_more_for_an_instant_does_not_stop_spinning(loadavg, monkeypatch):
    def check(text):
        loadavg.write_text(text)
        spin._state["until"] = 0.0  # CHECK_S later
        return spin.spare_core()

    assert check("1.0 1.0 1.0 3/139 1\n") is True  # agent, server and a passing task
    assert check("1.0 1.0 1.0 2/139 1\n") is True
    assert check("1.0 1.0 1.0 3/139 1\n") is True
    assert check("1.0 1.0 1.0 3/139 1\n") is False  # it stays: every core is busy
    assert check("1.0 1.0 1.0 2/139 1\n") is True


@pytest.mark.parametrize(
    "limit_ns, usual_ns, expected",
    [
        (200_000, 10_000, 1_000_000 + 2 * 10_000 + 50_000),  # about twice the usual wait
        (200_000, 90_000, 1_000_000 + 200_000),  # never past the limit
        (200_000, 200_000, 0),  # usually slower than the limit: block at once
        (200_000, 500_000, 0),
        (0, 10_000, 0),  # spinning turned off
    ],
)
def test_deadline_polls_for_about_twice_the_usual_wait_within_the_limit(
    loadavg, limit_ns, usual_ns, expected
):
    loadavg.write_text("0.50 0.40 0.30 1/139 19268\n")  # a spare core
    assert spin.deadline(1_000_000, limit_ns, usual_ns) == expected


def test_deadline_blocks_at_once_without_a_spare_core(loadavg):
    loadavg.write_text("9.18 8.78 5.95 5/139 19268\n")  # 5 runnable tasks on 2 cores
    assert spin.deadline(1_000_000, 200_000, 10_000) == 0
