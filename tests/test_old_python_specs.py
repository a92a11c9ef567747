"""A venv or conda spec that asks for a Python older than portal-env's fails at once,
naming the pin and the docker route (those backends run portal-env's own server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import cli

ENV_MAIN = (
    "import gym\nfrom portal_env import EnvSidePortal\nEnvSidePortal(env_factory=gym.make).run()\n"
)


@pytest.mark.parametrize("backend", ["venv", "mm"])
@pytest.mark.parametrize("pin,version", [("python=2.7", "2.7"), ("python 3.6.*", "3.6")])
def test_an_old_python_pin_fails_at_once_naming_the_docker_route(tmp_path, backend, pin, version):
    env_dir = tmp_path / "old"
    env_dir.mkdir()
    (env_dir / "env_main.py").write_text(ENV_MAIN)
    spec = env_dir / "spec.yml"
    spec.write_text(
        f"channels: [conda-forge]\ndependencies:\n  - {pin}\n  - pip:\n    - gym==0.15.7\n"
    )
    cache = tmp_path / "cache"
    done = cli("start", "old", "-p", str(env_dir), "-b", backend, env=_env(cache), timeout=120)
    assert done.returncode == 1
    message = " ".join(done.stderr.split())
    assert f"{spec} asks for Python {version}" in message and f"-b {backend}" in message
    assert "Python 3.8 or newer" in message and "-b docker" in message
    assert "Dockerfile.env FROM an old base image" in message
    assert "examples/ancient_cartpole" in message and "Traceback" not in done.stderr
    assert list(cache.glob("venv/*")) + list(cache.glob("conda/*")) == []  # nothing was built
    assert not (env_dir / "spec.venv.lock.txt").exists()  # nor locked


def _env(cache: Path) -> dict:
    import os

    return dict(os.environ, PORTAL_ENV_CACHE_DIR=str(cache))
