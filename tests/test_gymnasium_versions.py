"""The space round-trip suite (test_spaces.py) under older gymnasium releases, each in a
real uv venv: env runtimes may pin any gymnasium from 0.28 on."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from portal_env.runtimes.venv import uv_bin

from .conftest import ROOT

# numpy < 2 for the 0.x releases, which use names numpy 2 removed (np.bool8).
RELEASES = {
    "0.28.1": "numpy<2",
    "0.29.1": "numpy<2",
    "1.0.0": "numpy<3",
}


@pytest.mark.slow
@pytest.mark.parametrize("version", sorted(RELEASES))
def test_spaces_round_trip_on_gymnasium(version: str, shared_cache_dir: Path):
    venv = shared_cache_dir / f"gymnasium-{version}"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([uv_bin(), "venv", "-q", "--python", "3.11", str(venv)], check=True)
        packages = [f"gymnasium=={version}", RELEASES[version], "msgpack", "pytest"]
        packages.append("pytest-timeout")
        install = [uv_bin(), "pip", "install", "-q", "--python", str(python), *packages]
        subprocess.run(install, check=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_spaces.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check = [str(python), "-c", "import gymnasium; print(gymnasium.__version__)"]
    assert subprocess.run(check, capture_output=True, text=True, env=env).stdout.strip() == version
    assert " passed" in done.stdout.splitlines()[-1]
