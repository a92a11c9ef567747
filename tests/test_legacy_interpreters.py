"""The small server on the old interpreters this machine has (pyenv's Python 2.7, 3.6 and
3.7; 3.5 is not here): the protocol tests of the main server that apply, and a plain
gym <= 0.21-API env converted bit-identically to the same env run here.

Each interpreter gets numpy and msgpack once, in a cached directory (from the Python 2.7
wheelhouse of examples/ancient_cartpole for 2.7, else from the package index), installed
with the pip 20.3.4 wheel that wheelhouse holds (it runs on all three).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Iterator, List

import numpy as np
import pytest

from portal_env import AgentSidePortal, AuthenticationError, RemoteEnvError
from portal_env.portal import protocol
from portal_env.portal.wire import Address, Channel
from portal_env.runtimes import legacy_shim

from . import dockerhost
from .conftest import ROOT, ServerProcess, start_server
from .serve_plain_old import Walker
from .test_agent import assert_identical
from .test_wire import (  # noqa: F401
    test_default_server_listens_on_loopback_only,
    test_fast_step_before_make_or_unknown_kind_closes_only_that_connection,
    test_malformed_frame_closes_only_that_connection,
    test_oversized_frame_closes_only_that_connection,
    test_unauthenticated_peer_is_never_unpickled,
    test_unknown_request_is_answered_with_an_error,
)

PYENV = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
SCRIPT = ROOT / "tests" / "serve_plain_old.py"
# What each interpreter gets: numpy and msgpack releases that still support it.
PACKAGES = {
    "2.7": ["numpy==1.16.6", "msgpack==0.6.2"],
    "3.6": ["numpy==1.19.5", "msgpack==1.0.5"],
    "3.7": ["numpy==1.21.6", "msgpack==1.0.5"],
}


def interpreter(version: str) -> Path:
    found = sorted(PYENV.glob(f"{version}.*/bin/python{version}"))
    if not found:
        pytest.skip(f"no Python {version} on this machine (looked in {PYENV})")
    return found[-1]


def site_dir(version: str) -> Path:
    """A cached directory with numpy and msgpack for that Python (made once)."""
    python = interpreter(version)
    wheels = dockerhost.py27_wheelhouse()  # pip 20.3.4, and the 2.7 wheels
    key = hashlib.sha256(f"{python}\n{PACKAGES[version]}".encode()).hexdigest()[:16]
    pip = [str(python), str(next(wheels.glob("pip-20.3.4-*.whl")) / "pip"), "install", "-q"]
    source = ["--no-index", "--find-links", str(wheels)] if version == "2.7" else []

    def install(into: Path) -> None:
        command = pip + ["--target", str(into), *source, *PACKAGES[version]]
        subprocess.run(command, check=True, capture_output=True)

    return dockerhost.made_once(dockerhost.CACHE / f"site-py{version}-{key}", install)


@pytest.fixture(params=sorted(PACKAGES), ids=lambda v: f"python{v}")
def server(request, tmp_path: Path) -> Iterator[ServerProcess]:
    version = request.param
    shim = legacy_shim.shim_dir(tmp_path / "shim")
    path = f"{shim}:{site_dir(version)}:{SCRIPT.parent}"
    handle = start_server(
        tmp_path, {"PYTHONPATH": path}, script=SCRIPT, python=str(interpreter(version))
    )
    handle.version = version
    yield handle
    handle.stop()


def trajectory(env, seed: int, actions: List[int]) -> list:
    out = [env.reset(seed=seed)]
    for action in actions:
        out.append(env.step(action))
        if out[-1][2] or out[-1][3]:
            out.append(env.reset())
    return out


class InProcess:
    """The same Walker here, through the conversion the small server applies."""

    def __init__(self) -> None:
        from portal_env.legacy.gymapi import GymnasiumView

        self.view = GymnasiumView(Walker())

    def reset(self, seed=None):
        return self.view.reset(seed, None)

    def step(self, action):
        return self.view.step(action)


def test_a_plain_old_env_converts_bit_identically_and_errors_carry_the_traceback(server):
    log = server.log.read_text()
    assert f"small server (Python {server.version}." in log
    actions = np.random.default_rng(3).integers(0, 3, 80).tolist()
    with AgentSidePortal("old", ["Walker"], **server.kwargs()) as env:
        assert env.observation_space.dtype == np.float32 and env.action_space.n == 3
        ours = trajectory(env, 5, actions)
        assert any(step[3] for step in ours if len(step) == 5)  # a truncation happened
        assert ours[1][0].dtype == np.float32 and ours[1][4]["name"] == "walker"
        assert env.render().startswith("x=")  # render(mode=render_mode) on the old env
        with pytest.raises(RemoteEnvError, match="ValueError: action 7 is not 0, 1 or 2") as caught:
            env.step(7)
        assert "serve_plain_old.py" in caught.value.remote_traceback  # the env's own frame
    assert_identical(ours, trajectory(InProcess(), 5, actions))


def test_features_none_and_wrong_token_refused(server):
    channel = Channel.connect(Address.parse(server.address), server.token, 5)
    assert channel.features == protocol.FEATURES_NONE
    channel.close()
    with pytest.raises(AuthenticationError, match="refused the token"):
        AgentSidePortal("old", ["Walker"], address=server.address, token="wrong", timeout=5)
