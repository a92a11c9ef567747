"""`import portal_env` stays light: no heavy tools on the agent's import path."""

import subprocess
import sys

HEAVY = ["docker", "conda_lock", "rattler", "uv", "rich", "click", "torch", "pydantic", "ray"]


def test_import_pulls_in_no_heavy_tools():
    code = "import sys, portal_env; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    loaded = set(subprocess.check_output([sys.executable, "-c", code], text=True).split())
    assert "portal_env" in loaded and "gymnasium" in loaded
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_the_fleet_package_imports_ray_only_when_launching():
    code = "import sys, portal_env.fleet, portal_env.fleet.launcher; print('ray' in sys.modules)"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "False"
