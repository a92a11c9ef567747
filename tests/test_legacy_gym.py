"""Old gym APIs, converted by the small server, against Shimmy as the oracle.

A venv with gym 0.26.2 (and one with gym 0.25.2) and Shimmy, made once and cached under
~/.cache/portal-env-test or $PORTAL_ENV_TEST_CACHE, runs the small server with only the
shim `portal_env` on its path, as an old runtime does; the agent here must see exactly
what Shimmy's GymV26CompatibilityV0 / GymV21CompatibilityV0 give in-process in that
venv: the same gymnasium spaces and the same seeded trajectories (obs, reward,
terminated, truncated, info). One known difference is normalised, as the README says:
old gym's OrderedDict observations arrive as dicts (order kept).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

import gymnasium
import pytest

from portal_env import AgentSidePortal
from portal_env.legacy import gymapi
from portal_env.portal.spaces import encode_space
from portal_env.runtimes import legacy_shim
from portal_env.runtimes.commands import uv_bin

from . import dockerhost
from .conftest import ServerProcess, start_server
from .gymnasium_spaces import all_spaces
from .test_agent import assert_identical
from .test_spaces import assert_same_space

SCRIPT = Path(__file__).resolve().parent / "gym_compat_envs.py"
# gym 0.25/0.26 need numpy < 2; Shimmy needs the agent's gymnasium.
COMMON = ("numpy==1.26.4", "shimmy==2.0.1", f"gymnasium=={gymnasium.__version__}", "msgpack>=1,<2")
GYMS = {"0.26": ("gym==0.26.2", *COMMON), "0.25": ("gym==0.25.2", *COMMON)}
# gym 0.22-0.25 (reset(seed=, return_info=), 4-value steps): Shimmy has no wrapper of its
# own for them; its V21 one drives them through seed() and reset(), the oracle here.
SPECS_025 = {"v25:CartPole-v1": 300, "v25:Pendulum-v1": 210}
SPECS = {
    "v26:CartPole-v1": 300,
    "v26:Pendulum-v1": 210,  # past its 200-step limit: truncated
    "v26:FrozenLake-v1": 60,
    "v26:Blackjack-v1": 40,
    "v21:CartPole-v1": 300,
    "v21:Pendulum-v1": 210,  # TimeLimit.truncated becomes truncated
    "v21:spaces": 12,
}


def gym_python(gym: str = "0.26") -> Path:
    """The Python of a cached venv holding GYMS[gym] (made with uv, once)."""
    packages = GYMS[gym]
    key = hashlib.sha256("\n".join(packages).encode()).hexdigest()[:16]
    uv = uv_bin()

    def install(into: Path) -> None:  # a venv is movable before first use of its scripts only
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(into)], check=True)
        python = str(into / "bin" / "python")
        subprocess.run([uv, "pip", "install", "-q", "--python", python, *packages], check=True)

    venv = dockerhost.made_once(dockerhost.CACHE / f"venv-gym{gym.replace('.', '')}-{key}", install)
    return venv / "bin" / "python"


def small_server(tmp: Path, gym: str) -> ServerProcess:
    """The small server in a gym venv, with the shim package as its only portal_env."""
    shim = legacy_shim.shim_dir(tmp / "shim")
    env = {"PYTHONPATH": f"{shim}:{SCRIPT.parent}"}
    return start_server(tmp, env, script=SCRIPT, python=str(gym_python(gym)))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    handle = small_server(tmp_path_factory.mktemp("gym026"), "0.26")
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def server025(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    handle = small_server(tmp_path_factory.mktemp("gym025"), "0.25")
    yield handle
    handle.stop()


def shimmy_view(spec: str, seed: int, steps: int, gym: str = "0.26") -> Any:
    done = subprocess.run(
        [str(gym_python(gym)), str(SCRIPT), "record", spec, str(seed), str(steps)],
        capture_output=True,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(SCRIPT.parent)),
    )
    return pickle.loads(done.stdout)  # our own subprocess's output


def plain(value: Any) -> Any:
    """value with old gym's OrderedDicts as dicts (what Gymnasium's Dict samples are)."""
    if isinstance(value, OrderedDict):
        return {k: plain(v) for k, v in value.items()}
    if type(value) is dict:
        return {k: plain(v) for k, v in value.items()}
    if type(value) in (tuple, list):
        return type(value)(plain(v) for v in value)
    return value


@pytest.mark.parametrize("spec", SPECS)
def test_spaces_and_seeded_trajectory_match_shimmy(server, spec):
    assert_matches_shimmy(server, spec, SPECS[spec], "0.26")


@pytest.mark.parametrize("spec", SPECS_025)
def test_gym_025_spaces_and_seeded_trajectory_match_shimmy(server025, spec):
    assert_matches_shimmy(server025, spec, SPECS_025[spec], "0.25")


def assert_matches_shimmy(server: ServerProcess, spec: str, steps: int, gym: str) -> None:
    oracle = shimmy_view(spec, 11, steps, gym)
    with AgentSidePortal("old-gym", [spec], **server.kwargs()) as env:
        assert_same_space(oracle["observation_space"], env.observation_space)
        assert_same_space(oracle["action_space"], env.action_space)
        ours = [env.reset(seed=11)]
        for action in oracle["actions"]:
            result = env.step(action)
            ours.append(result)
            if result[2] or result[3]:
                ours.append(env.reset())
    assert_identical(plain(ours), plain(oracle["trajectory"]))
    assert any(step[2] or step[3] for step in ours if len(step) == 5)  # episodes ended
    assert "portal-env small server (Python 3." in server.log.read_text()


def test_an_old_env_renders_with_the_render_mode_it_was_made_with(server):
    kwargs = {"render_mode": "rgb_array"}
    with AgentSidePortal("old-gym", ["v21:CartPole-v1"], kwargs, **server.kwargs()) as env:
        assert env.render_mode == "rgb_array"
        env.reset(seed=0)
        frame = env.render()  # render(mode="rgb_array") on the old env
        assert frame.shape == (2, 2, 3) and frame.dtype.name == "uint8"


def test_the_small_servers_space_descriptions_are_encode_spaces():
    """Both servers describe a space in one form: the small server's describer (run here on
    gymnasium spaces) gives what the main server's encode_space gives, for every space
    gymnasium's own test list holds that old gym has a class for."""
    for space in all_spaces():
        if type(space).__name__ == "OneOf":
            continue
        assert_identical(gymapi.describe_space(space), encode_space(space))
