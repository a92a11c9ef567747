"""EnvSidePortal's settings, default token, lifecycle and errors."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time

import gymnasium
import pytest

from portal_env import AgentSidePortal, EnvSidePortal, PortalEnvError, RemoteEnvError, config
from portal_env.errors import RegistryError
from portal_env.serving import registry


def test_defaults_are_loopback_7000_and_a_recorded_private_token(tmp_path):
    # Port 7000 is the seed's default; free in a test sandbox.
    portal = EnvSidePortal(env_factory=gymnasium.make, name="custom")
    try:
        assert str(portal.address) == "127.0.0.1:7000"
        token_file = tmp_path / "state" / "tokens" / "tcp-7000"
        assert token_file.read_text() == portal.token and len(portal.token) >= 32
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
        thread = threading.Thread(target=portal.run, daemon=True)
        thread.start()
        # The seed's flow: an agent of the same user finds the bare server by name.
        with AgentSidePortal("custom", ["CartPole-v1"]) as env:
            env.reset(seed=0)
            env.step(0)
        # ... or by address, with the token the server recorded for it.
        with AgentSidePortal("x", ["CartPole-v1"], address="127.0.0.1:7000") as env:
            env.reset(seed=0)
        # A name no portal has fails, though a server listens on the default port.
        with pytest.raises(
            RegistryError, match=r"no portal named 'typo' is running \(running: custom\)"
        ):
            AgentSidePortal("typo", ["CartPole-v1"])
    finally:
        portal.close()
    thread.join(5)
    assert not thread.is_alive()
    assert not token_file.exists()  # the token goes with the server
    assert registry.all_records() == []  # and so does its registration


def test_a_bare_env_main_registers_under_its_directory_name(tmp_path):
    env_dir = tmp_path / "mycart"
    env_dir.mkdir()
    (env_dir / "env_main.py").write_text(
        "import gymnasium\nfrom portal_env import EnvSidePortal\n"
        "EnvSidePortal(env_factory=gymnasium.make, port=0).run()\n"
    )
    env = dict(os.environ, PORTAL_ENV_STATE_DIR=str(tmp_path / "state"))
    env.pop("PORTAL_ENV_SUPERVISED", None)
    proc = subprocess.Popen([sys.executable, str(env_dir / "env_main.py")], env=env)
    try:
        deadline = time.monotonic() + 30
        while registry.lookup("mycart") is None and time.monotonic() < deadline:
            assert proc.poll() is None, "the server exited"
            time.sleep(0.05)
        record = registry.lookup("mycart")
        assert record is not None and record.backend == "process" and record.server_pid == proc.pid
        with AgentSidePortal("mycart", ["CartPole-v1"]) as agent:
            agent.reset(seed=1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert registry.get("mycart") is None


def test_a_factory_that_rejects_the_arguments_says_what_to_pass(server):
    with pytest.raises(RemoteEnvError, match=r"rejected env_args=\[\], env_kwargs=\{\}") as info:
        AgentSidePortal("ale", **server.kwargs())
    assert "AgentSidePortal('ale', env_args=['<env id>'])" in str(info.value)
    assert info.value.remote_type == "TypeError"


def test_settings_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PORTAL_ENV_PORT", "0")
    monkeypatch.setenv("PORTAL_ENV_TOKEN_FILE", str(tmp_path / "tok"))
    (tmp_path / "tok").write_text("from-file\n")
    monkeypatch.setenv("PORTAL_ENV_READY_FILE", str(tmp_path / "ready"))
    with EnvSidePortal(env_factory=gymnasium.make) as portal:
        assert portal.token == "from-file"
        assert portal.address.port != 0
        assert (tmp_path / "ready").read_text() == str(portal.address)


def test_arguments_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("PORTAL_ENV_PORT", "1")
    monkeypatch.setenv("PORTAL_ENV_TOKEN", "env-token")
    with EnvSidePortal(gymnasium.make, port=0, token="arg-token") as portal:
        assert portal.token == "arg-token" and portal.address.port not in (0, 1)


def test_port_in_use_is_a_clear_error():
    with EnvSidePortal(gymnasium.make, port=0, token="t") as first:
        with pytest.raises(
            PortalEnvError, match=f"cannot listen on 127.0.0.1:{first.address.port}.*port"
        ):
            EnvSidePortal(gymnasium.make, port=first.address.port, token="t")


def test_bad_port_variable_names_it(monkeypatch):
    monkeypatch.setenv("PORTAL_ENV_PORT", "seventy")
    with pytest.raises(PortalEnvError, match="PORTAL_ENV_PORT='seventy'"):
        EnvSidePortal(gymnasium.make)


def test_missing_token_tells_what_to_do():
    with pytest.raises(PortalEnvError, match="no token.*PORTAL_ENV_TOKEN"):
        AgentSidePortal("custom", ["CartPole-v1"], address="127.0.0.1:9")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_stops_cleanly_on_signals_with_an_agent_connected(server, sig):
    env = AgentSidePortal("custom", ["CartPole-v1"], **server.kwargs())
    env.reset()
    server.proc.send_signal(sig)
    assert server.proc.wait(10) == 0
    env.close()


def test_start_is_run_and_serves_in_the_foreground(tmp_path):
    ready = tmp_path / "ready"
    code = (
        "import gymnasium; from portal_env import EnvSidePortal\n"
        "EnvSidePortal(gymnasium.make).start()\n"
    )
    env = dict(
        os.environ, PORTAL_ENV_PORT="0", PORTAL_ENV_TOKEN="x", PORTAL_ENV_READY_FILE=str(ready)
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 20
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    with AgentSidePortal("custom", ["CartPole-v1"], address=ready.read_text(), token="x") as agent:
        agent.reset()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0
    assert "serving on" in proc.stderr.read()


def test_agent_address_resolution(monkeypatch):
    monkeypatch.delenv("PORTAL_ENV_ADDRESS", raising=False)
    assert config.agent_address("ale", None, False) is None  # then: the registry, by name
    assert str(config.agent_address("ale", None, True)) == "env_portal_ale:7000"
    assert str(config.agent_address("ale", "10.1.2.3:9", True)) == "10.1.2.3:9"
    monkeypatch.setenv("PORTAL_ENV_ADDRESS", "unix:/tmp/s")
    assert str(config.agent_address("ale", None, False)) == "unix:/tmp/s"


def test_spin_can_be_turned_off_on_both_sides(tmp_path, monkeypatch):
    from tests.conftest import start_server
    from tests.test_agent import assert_identical, run_trajectory

    monkeypatch.setenv("PORTAL_ENV_SPIN_US", "0")
    handle = start_server(tmp_path, {"PORTAL_ENV_SPIN_US": "0"})
    try:
        with AgentSidePortal("custom", ["CartPole-v1"], **handle.kwargs()) as env:
            assert env._client._channel.spin_ns == 0
            local = gymnasium.make("CartPole-v1")
            assert_identical(run_trajectory(env, 3, 100), run_trajectory(local, 3, 100))
    finally:
        handle.stop()


def test_bad_spin_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv("PORTAL_ENV_SPIN_US", "fast")
    with pytest.raises(PortalEnvError, match="PORTAL_ENV_SPIN_US='fast'"):
        config.spin_us()
