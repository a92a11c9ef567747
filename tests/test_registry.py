"""registry: private files, atomic records, one portal per name, stale records removed."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from portal_env import config
from portal_env.errors import AlreadyRunningError, RegistryError
from portal_env.portal import client, wire
from portal_env.serving import registry


def _record(name: str = "mycart", pid: int = 0, **changes) -> registry.Record:
    pid = pid or os.getpid()
    fields = dict(
        name=name,
        backend="venv",
        env_dir="/somewhere",
        token="secret",
        supervisor_pid=pid,
        supervisor_start=registry.process_start_time(pid),
        log_path=str(registry.log_path(name)),
    )
    fields.update(changes)
    return registry.Record(**fields)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_dirs_are_0700_and_records_0600():
    registry.claim(_record())
    path = registry.portals_dir() / f"mycart@{config.node_name()}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for directory in (config.state_dir(), registry.portals_dir(), registry.logs_dir()):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_claim_twice_is_refused_with_the_stop_command():
    registry.claim(_record())
    with pytest.raises(AlreadyRunningError, match="portal-env stop mycart"):
        registry.claim(_record())


def test_record_of_a_dead_supervisor_is_removed_on_read():
    registry.write(_record(pid=_dead_pid(), supervisor_start=""))
    assert registry.get("mycart") is None
    assert not (registry.portals_dir() / f"mycart@{config.node_name()}.json").exists()
    registry.claim(_record())  # the name is free again


def test_reused_pid_is_detected_by_start_time():
    registry.write(_record(supervisor_start="1"))  # our pid, but not our start time
    assert registry.get("mycart") is None


def test_update_release_and_lookup_only_when_ready():
    registry.claim(_record())
    assert registry.lookup("mycart") is None  # still starting
    registry.update("mycart", os.getpid(), state=registry.READY, address="127.0.0.1:5")
    assert registry.lookup("mycart").address == "127.0.0.1:5"
    assert [r.name for r in registry.all_records()] == ["mycart"]
    registry.release("mycart", os.getpid() + 1)  # not the owner: kept
    assert registry.get("mycart") is not None
    registry.release("mycart", os.getpid())
    assert registry.get("mycart") is None


def test_no_temp_files_left_behind():
    registry.claim(_record())
    registry.update("mycart", os.getpid(), restarts=1)
    names = sorted(p.name for p in registry.portals_dir().iterdir())
    assert names == [".lock", f"mycart@{config.node_name()}.json"]


def test_client_endpoint_prefers_explicit_address_then_registry(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("PORTAL_ENV_ADDRESS", raising=False)
    monkeypatch.delenv("PORTAL_ENV_TOKEN", raising=False)
    registry.claim(_record(state=registry.READY, address="127.0.0.1:4321"))
    assert client.endpoint("mycart", None, None, False) == (
        wire.Address(port=4321),
        "secret",
    )
    assert client.endpoint("mycart", "127.0.0.1:9", "tok", False) == (
        wire.Address(port=9),
        "tok",
    )
    with pytest.raises(
        RegistryError, match=r"no portal named 'other' is running \(running: mycart\)"
    ):
        client.endpoint("other", None, None, False)


def test_corrupt_record_names_the_file(tmp_path: Path):
    (registry.portals_dir() / f"bad@{config.node_name()}.json").write_text("{not json")
    with pytest.raises(registry.RegistryError, match="bad@"):
        registry.get("bad")
