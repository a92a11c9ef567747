"""`import portal_env` stays light: no heavy tools on the agent's import path."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ["docker", "conda_lock", "rattler", "uv", "rich", "click", "torch", "pydantic", "ray"]


def test_import_pulls_in_no_heavy_tools():
    code = "import sys, portal_env; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    loaded = set(subprocess.check_output([sys.executable, "-c", code], text=True).split())
    assert "portal_env" in loaded and "gymnasium" in loaded
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_the_fleet_package_imports_ray_only_when_launching():
    code = "import sys, portal_env.fleet, portal_env.fleet.launcher; print('ray' in sys.modules)"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "False"


def _imports_of(module: Path) -> set:
    """Every portal_env module that module's source imports, at top level or in a function."""
    package = module.relative_to(ROOT).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            name = ".".join(base + tuple(filter(None, [node.module])))
            found |= {name} | {f"{name}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("portal_env")}


def test_configuration_sits_below_what_uses_it():
    """config and errors import no serving, runtime, fleet or CLI code, not even lazily."""
    above = ("portal_env.serving", "portal_env.runtimes", "portal_env.fleet", "portal_env.cli")
    for module in (ROOT / "portal_env" / "config.py", ROOT / "portal_env" / "errors.py"):
        upward = {name for name in _imports_of(module) if name.startswith(above)}
        assert not upward, f"{module.name} imports {sorted(upward)}"
