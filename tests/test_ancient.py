"""Python 2.7 end to end: gym 0.15.7's CartPole-v1 served from a Debian 11 (bullseye)
container by the small server, to an agent on this host's Python 3 and gymnasium 1.x.

The image is examples/ancient_cartpole built by `portal-env start -b docker` over a
local bullseye minbase (python2.7 2.7.18), with the Python 2.7 wheelhouse its
fetch_wheels.sh downloads on this host (no index inside builds).
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, List

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import portal_env
from portal_env import AgentSidePortal, AuthenticationError, PortalEnvError, RemoteEnvError
from portal_env.runtimes import docker as docker_backend
from portal_env.serving import registry

from . import dockerhost
from .conftest import cli

pytestmark = pytest.mark.docker

# Run by python2.7 in the image: the same env stepped directly, as gym 0.15.7 has it.
RECORD = """
import json, sys
import gym
env = gym.make("CartPole-v1")
out = []
for seed, actions in json.loads(sys.argv[1]):
    env.seed(seed)
    obs = env.reset()
    steps = [[obs.tobytes().encode("hex"), obs.dtype.str]]
    for action in actions:
        obs, reward, done, info = env.step(action)
        steps.append([obs.tobytes().encode("hex"), obs.dtype.str, reward, done, sorted(info)])
        if done:
            truncated = info.get("TimeLimit.truncated", False)
            obs = env.reset()
            steps.append([obs.tobytes().encode("hex"), obs.dtype.str, truncated])
    out.append(steps)
print(json.dumps(out))
"""


@pytest.fixture(scope="module", autouse=True)
def private_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One state dir for the module (its portal serves every test), kept from the user's."""
    previous = os.environ.get("PORTAL_ENV_STATE_DIR")
    os.environ["PORTAL_ENV_STATE_DIR"] = str(tmp_path_factory.mktemp("ancient-state"))
    yield
    if previous is None:
        os.environ.pop("PORTAL_ENV_STATE_DIR", None)
    else:
        os.environ["PORTAL_ENV_STATE_DIR"] = previous


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[registry.Record]:
    """`portal-env start ancient -p <the example> -b docker --base-image <bullseye>`."""
    docker_client = dockerhost.client()
    base = dockerhost.bullseye_image()
    env_dir = dockerhost.ancient_env(tmp_path_factory.mktemp("ancient") / "ancient_cartpole")
    done = cli("start", "ancient", "-p", str(env_dir), "-b", "docker", "--base-image", base, "-d")
    assert done.returncode == 0, done.stderr
    assert "serves with Python 2.7: its containers get the small server" in done.stderr
    record = registry.get("ancient")
    assert record is not None and record.state == "ready"
    yield record
    cli("stop", "ancient")
    for image in docker_client.images.list("portal-env/ancient"):
        docker_client.images.remove(image.id, force=True)


def recorded(image: str, runs: List[Any]) -> List[Any]:
    """The trajectories python2.7 in image gives for runs [(seed, actions), ...]."""
    output = dockerhost.client().containers.run(
        image, ["python2.7", "-c", RECORD, json.dumps(runs)], entrypoint="", remove=True
    )
    return json.loads(output.decode())


def image_of(record: registry.Record) -> str:
    return dockerhost.client().containers.get(record.container).image.id


def test_seeded_trajectories_are_bit_identical_to_python27_running_the_env(portal):
    rng = np.random.default_rng(7)
    runs = [(seed, rng.integers(0, 2, 120).tolist()) for seed in (0, 42)]
    expected = recorded(image_of(portal), runs)
    with AgentSidePortal("ancient", ["CartPole-v1"]) as env:
        space = env.observation_space
        for (seed, actions), steps in zip(runs, expected):
            obs, info = env.reset(seed=seed)
            _same_obs(obs, steps[0], space)
            assert info == {}
            at = 1
            for action in actions:
                obs, reward, terminated, truncated, info = env.step(action)
                hex_obs, dtype, their_reward, done, keys = steps[at]
                _same_obs(obs, [hex_obs, dtype], space)
                assert type(reward) is float and reward == their_reward
                assert terminated or truncated if done else not (terminated or truncated)
                assert "TimeLimit.truncated" not in info  # popped into `truncated`, as Shimmy
                at += 1
                if done:
                    assert truncated == steps[at][2] and terminated == (not steps[at][2])
                    _same_obs(env.reset()[0], steps[at][:2], space)
                    at += 1
            assert at == len(steps)


def _same_obs(obs: np.ndarray, recorded_obs: List[str], space: Any) -> None:
    """obs is python2.7's own observation, bit for bit, in the Box's dtype (float32)."""
    theirs = np.frombuffer(bytes.fromhex(recorded_obs[0]), np.dtype(recorded_obs[1]))
    assert theirs.dtype == np.float64  # gym 0.15.7's CartPole: float64 in a float32 Box
    assert obs.dtype == space.dtype == np.float32
    assert obs.tobytes() == theirs.astype(np.float32).tobytes()


def test_check_env_passes_and_spaces_come_from_gym_exactly(portal):
    with AgentSidePortal("ancient", ["CartPole-v1"]) as env:
        check_env(env, skip_render_check=True)
        high = np.array([4.8, np.finfo(np.float32).max, 0.41887903, np.finfo(np.float32).max])
        assert env.observation_space.dtype == np.float32 and env.observation_space.shape == (4,)
        assert np.array_equal(env.observation_space.high, high.astype(np.float32))
        assert env.action_space == portal_env.portal.spaces.decode_space(
            {"type": "Discrete", "n": 2, "start": 0, "dtype": "<i8"}
        )
        assert env.remote_spec_id == "CartPole-v1"
        assert env.metadata["render.modes"] == ["human", "rgb_array"]  # gym's, as Shimmy keeps


def test_an_env_exception_arrives_with_its_python2_traceback(portal):
    with AgentSidePortal("ancient", ["CartPole-v1"]) as env:
        env.reset(seed=0)
        with pytest.raises(RemoteEnvError) as caught:
            env.step(7)  # gym 0.15.7 asserts the action is in its space
        error = caught.value
        assert error.remote_type == "AssertionError" and "invalid" in error.remote_message
        assert "python2.7" in error.remote_traceback
        assert "gym/envs/classic_control/cartpole.py" in error.remote_traceback
        assert env.step(0)[1] == 1.0  # the same env lives on


def test_wrong_token_and_vector_envs_are_refused(portal):
    with pytest.raises(AuthenticationError, match="refused the token"):
        AgentSidePortal("ancient", ["CartPole-v1"], token="not-the-token", timeout=10)
    with pytest.raises(PortalEnvError, match="hosts single envs only"):
        portal_env.make_vec("ancient", 2, env_args=["CartPole-v1"])


def test_the_image_python_is_probed_from_its_command(portal):
    from portal_env.runtimes import image_python

    tag = dockerhost.client().images.list("portal-env/ancient")[0].tags[0]
    assert image_python.python_version(dockerhost.client(), tag) == (2, 7)
    assert image_python.interpreters(dockerhost.client().images.get(tag))[0] == "python2.7"


def test_stop_leaves_nothing_behind(portal):
    docker_client = dockerhost.client()
    token_path = docker_backend.token_file("ancient")
    assert token_path.is_file()
    done = cli("stop", "ancient")
    assert done.returncode == 0, done.stderr
    assert registry.get("ancient") is None and not token_path.exists()
    label = f"{docker_backend.LABEL_PORTAL}=ancient"
    assert docker_client.containers.list(all=True, filters={"label": label}) == []
