"""The built-in envs: complete on disk, listed by `portal-env ls`, and served for real.

The serving tests start each built-in portal with the real CLI and `-b venv`
(venvs built once per session in the shared cache), then run gymnasium's
check_env, a few hundred random steps and a rendered frame on the agent side.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from portal_env import AgentSidePortal
from portal_env.runtimes import catalog, listing, lock
from portal_env.serving import registry

from .conftest import cli, wait_gone

BUILTINS = ["ale", "craftium", "flappy-bird", "mujoco", "retro", "vizdoom"]


@dataclass(frozen=True)
class Case:
    name: str
    env_id: str
    kwargs: Dict[str, Any] = field(default_factory=dict)
    obs_space: type = gymnasium.spaces.Box
    steps: int = 300


SERVED = [
    Case("ale", "ALE/Pong-v5", {"render_mode": "rgb_array"}),
    Case("mujoco", "HalfCheetah-v5", {"render_mode": "rgb_array"}),
    Case("vizdoom", "VizdoomBasic-v1", {"render_mode": "rgb_array"}, gymnasium.spaces.Dict),
    Case("retro", "Airstriker-Genesis-v0", {"render_mode": "rgb_array"}),
    Case("flappy-bird", "FlappyBird-v0", {"render_mode": "rgb_array"}),
]


# -- every built-in dir is complete (fast) -------------------------------------


def test_the_six_builtins_are_shipped():
    assert catalog.builtin_names() == BUILTINS


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_dir_is_complete(name: str):
    source = catalog.find(name)
    assert source.builtin and source.spec is not None, f"{name} has no spec"
    spec = lock.read_spec(source.spec)
    assert spec.python == "3.11" and spec.pip, f"{source.spec} has no pip: section"
    compile(source.main.read_text(), str(source.main), "exec")
    assert source.dockerfile is not None and "env_main.py" in source.dockerfile.read_text()
    venv_ok = not spec.ignored
    shipped = source.lock_dir / lock.venv_lock_name(source)
    status = lock.freshness(shipped, source.spec, lock.recorded_venv_hash)
    # every env the venv backend can install ships a lockfile made from its current spec
    assert status == ("current" if venv_ok else "missing"), f"{name}: venv lock {status}"


def test_ls_lists_each_builtin_with_backends_from_its_files():
    done = cli("ls")
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:] if line.strip()}
    assert set(BUILTINS) <= set(rows)
    assert "venv" in rows["ale"] and "shipped" in rows["ale"]
    # craftium's pip requirement is a git URL, which a conda lock cannot pin
    assert "venv" not in rows["craftium"] and "micromamba" not in rows["craftium"]
    for name in BUILTINS:
        assert "docker" in rows[name]
    assert "Example: portal-env ls" in cli("ls", "--help").stdout


def test_backends_follow_the_files(tmp_path):
    env_dir = tmp_path / "e"
    env_dir.mkdir()
    (env_dir / "env_main.py").write_text("")
    assert listing.backends(catalog.find("e", env_dir)) == []
    (env_dir / "Dockerfile.env").write_text("FROM scratch\n")
    assert listing.backends(catalog.find("e", env_dir)) == ["docker"]
    (env_dir / "Dockerfile.env").unlink()
    (env_dir / "spec.yml").write_text("dependencies:\n  - python=3.11\n  - pip:\n      - gym\n")
    images = ["charliecloud", "apptainer"]  # an image exported from the conda lock
    assert listing.backends(catalog.find("e", env_dir)) == ["venv", "micromamba", "docker", *images]
    (env_dir / "spec.yml").write_text("dependencies:\n  - python=3.11\n  - cmake\n")
    (env_dir / "Dockerfile.env").write_text("FROM scratch\n")
    assert listing.backends(catalog.find("e", env_dir)) == ["micromamba", "docker", *images]
    (env_dir / "spec.yml").write_text(
        "dependencies:\n  - cmake\n  - pip:\n      - x @ git+https://example.org/x.git\n"
    )
    assert listing.backends(catalog.find("e", env_dir)) == ["docker"]  # the Dockerfile's
    (env_dir / "Dockerfile.env").unlink()
    assert listing.backends(catalog.find("e", env_dir)) == []


# -- each runnable built-in served through the CLI (slow) ----------------------


@pytest.fixture
def portal(request, reap_portals) -> Any:
    """Start built-in `request.param` detached with -b venv; stop it after the test."""
    name = request.param
    env_dir = catalog.find(name).env_dir
    shipped = sorted(p.name for p in env_dir.iterdir())
    done = cli("start", name, "-b", "venv", "-d")
    assert done.returncode == 0, done.stderr
    record = registry.get(name)
    yield record
    cli("stop", name)
    assert wait_gone(record.server_pid, 10)
    # Servers of built-ins run in a private work dir: nothing lands in the package.
    assert sorted(p.name for p in env_dir.iterdir()) == shipped


def _frame_ok(frame: Any) -> None:
    assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8
    assert frame.ndim == 3 and frame.shape[2] == 3
    assert frame.shape[0] > 10 and frame.shape[1] > 10


def _random_steps(env: gymnasium.Env, steps: int) -> List[float]:
    env.reset(seed=0)
    env.action_space.seed(0)
    returns, total = [], 0.0
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        total += float(reward)
        if terminated or truncated:
            returns.append(total)
            total = 0.0
            env.reset()
    return returns


@pytest.mark.slow
@pytest.mark.parametrize(
    "portal, case", [(c.name, c) for c in SERVED], ids=[c.name for c in SERVED], indirect=["portal"]
)
def test_builtin_serves_a_checked_env(portal: registry.Record, case: Case):
    with AgentSidePortal(case.name, env_args=[case.env_id], env_kwargs=case.kwargs) as env:
        assert isinstance(env.observation_space, case.obs_space)
        check_env(env, skip_close_check=True)
        _random_steps(env, case.steps)
        _frame_ok(env.render())
