"""The small server of old runtimes and the protocol constants it shares stay Python 2.7
and 3.5+ code: vermin (a static checker of the minimum Python a file needs) holds them to
it, since only Python 2.7, 3.9 and 3.11 interpreters run here."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

from portal_env.runtimes import legacy_shim

from .conftest import ROOT


def vermin(*files: str) -> subprocess.CompletedProcess:
    """vermin's verdict on files for Python 2.7 and 3.5 onwards (the console script)."""
    command = [os.path.join(sysconfig.get_path("scripts"), "vermin"), "-t=2.7-", "-t=3.5-"]
    command += ["--violations", "--no-tips", "--eval-annotations", *files]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT)


def test_the_small_server_and_the_protocol_run_on_python_2_7_and_3_5(tmp_path):
    done = vermin(*(str(path) for path in legacy_shim._files().values()))
    assert done.returncode == 0, done.stdout + done.stderr
    newer = tmp_path / "newer.py"  # the check can fail: an f-string needs 3.6
    newer.write_text('name = "x"\nprint(f"{name}")\n')
    assert vermin(str(newer)).returncode != 0


def test_the_shim_holds_every_module_the_small_server_imports(tmp_path):
    """The shim package alone (no gymnasium, no full portal_env) imports EnvSidePortal."""
    shim = legacy_shim.shim_dir(tmp_path)
    names = sorted(str(p.relative_to(shim)) for p in shim.rglob("*.py"))
    assert "portal_env/portal/protocol.py" in names and "portal_env/legacy/server.py" in names
    code = (
        "import sys, portal_env; from portal_env import EnvSidePortal; "
        "assert 'gymnasium' not in sys.modules; print(portal_env.__file__)"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": f"{shim}:{_numpy_and_msgpack()}"},
        cwd=tmp_path,  # not the checkout, whose portal_env is the full package
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(shim / "portal_env" / "__init__.py")


def _numpy_and_msgpack() -> str:
    from pathlib import Path

    import msgpack
    import numpy

    dirs = {str(Path(module.__file__).parent.parent) for module in (numpy, msgpack)}
    return ":".join(sorted(dirs))
