"""portal_env.fleet without a Ray cluster: argument checks, a missing Ray, the sweep of
dead launchers' directories. (Fleets on a real cluster: tests/test_ray.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from portal_env.errors import CatalogError, FleetError
from portal_env.fleet import launch
from portal_env.fleet.launcher import sweep

from .conftest import EXAMPLE_ENV


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_servers": 0}, "num_servers=0"),
        ({"num_servers": 2.5}, "num_servers=2.5"),
        ({"cpus_per_server": 0}, "cpus_per_server=0"),
        ({"placement": "wide"}, r"placement='wide'\): use one of 'spread', 'pack'"),
    ],
)
def test_bad_arguments_are_refused_before_ray_is_touched(options, message):
    with pytest.raises(FleetError, match=message):
        launch("mycart", path=EXAMPLE_ENV, backend="venv", **options)
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_an_unknown_env_is_refused_before_ray_is_touched():
    with pytest.raises(CatalogError, match="atri"):
        launch("atri", backend="venv")


def test_without_ray_launch_says_how_to_install_it():
    code = textwrap.dedent(f"""
        import sys
        sys.modules["ray"] = None  # as if Ray were not installed
        from portal_env import ray as pray
        from portal_env.errors import FleetError
        try:
            pray.launch("mycart", path={str(EXAMPLE_ENV)!r}, backend="venv")
        except FleetError as exc:
            print(type(exc).__name__, exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("FleetError") and "pip install 'portal-env[ray]'" in out.stdout


def test_sweep_removes_only_directories_of_dead_launchers(tmp_path: Path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = tmp_path / f"abcd1234-0-{dead.pid}"
    alive = tmp_path / f"abcd1234-1-{os.getpid()}"
    other = tmp_path / "not-a-launcher"
    for path in (gone, alive, other):
        (path / "logs").mkdir(parents=True)
    sweep(tmp_path)
    assert not gone.exists() and alive.exists() and other.exists()
    sweep(tmp_path / "missing")  # nothing there yet: no error
