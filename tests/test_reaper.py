"""Without an init (a container's PID 1 that never waits), orphans of a server would stay
zombies: the supervisor adopts them (PR_SET_CHILD_SUBREAPER) and reaps them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from portal_env.serving import reaper, registry

from .conftest import CLI, wait_gone

pytestmark = pytest.mark.usefixtures("reap_portals")

# Before serving, the server leaves an orphan behind: a child that forks a grandchild and
# exits at once (the way a daemon starts). The grandchild exits once told to.
ORPHAN_MAKER = """\
import os, time
child = os.fork()
if child == 0:
    if os.fork() == 0:
        pid_file = os.environ["ORPHAN_PID_FILE"]
        with open(pid_file + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(pid_file + ".tmp", pid_file)
        while not os.path.exists(pid_file + ".exit"):
            time.sleep(0.05)
        os._exit(0)
    os._exit(0)
os.waitpid(child, 0)
"""


def _state(pid: int) -> str:
    """The process state letter of pid (R, S, Z, ...), or '' once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux prctl")
def test_supervisor_adopts_and_reaps_the_orphans_of_its_server(cartpole_dir: Path, tmp_path):
    main = cartpole_dir / "env_main.py"
    main.write_text(ORPHAN_MAKER + main.read_text())
    pid_file = tmp_path / "orphan.pid"
    env = dict(os.environ, ORPHAN_PID_FILE=str(pid_file))
    command = CLI + ["start", "-p", str(cartpole_dir), "orphans", "-b", "venv", "-d"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    record = registry.get("orphans")
    orphan = int(pid_file.read_text())
    assert _ppid(orphan) == record.supervisor_pid  # adopted by the supervisor, not init
    (tmp_path / "orphan.pid.exit").touch()
    deadline = time.monotonic() + 10
    while _state(orphan) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _state(orphan) == "", f"the orphan {orphan} is {_state(orphan)!r}: not reaped"
    assert subprocess.run(CLI + ["stop", "orphans"], timeout=60).returncode == 0
    assert wait_gone(record.supervisor_pid, 10)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux prctl")
def test_reap_leaves_children_that_others_wait_for():
    # This test process is no subreaper: reap() only looks at its own children.
    kept = subprocess.Popen(["true"])
    other = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while (_state(kept.pid) != "Z" or _state(other.pid) != "Z") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert reaper.reap(keep={kept.pid}) == [other.pid]
    assert _state(other.pid) == "" and kept.wait(5) == 0  # kept's owner still gets its code
