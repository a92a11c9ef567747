"""A small /dev/shm (Docker's default is 64 MB): observations that do not fit in shared
memory go through the socket, exactly, instead of killing a process with SIGBUS.

Each case runs in a mount namespace of its own (`unshare --mount`, root) whose /dev/shm
is a fresh small tmpfs, so the machine's /dev/shm is never touched.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

from .conftest import needs_mount_namespace

ROOT = Path(__file__).resolve().parent.parent
SHM_SIZE = "8m"

# Runs inside the namespace: a server and an agent stepping 16 MB observations (a ring of
# three slots: 48 MB of shared memory asked for) and a 4-env make_vec of them (64 MB batch).
AGENT = """
import numpy as np
from portal_env import AgentSidePortal
from portal_env.portal.multivec import make_vec
from tests import envs
from tests.conftest import start_server
from pathlib import Path
import sys

server = start_server(Path(sys.argv[1]))
try:
    env = AgentSidePortal("big", ["PortalTest/Big-v0"], **server.kwargs())
    local = envs.make("PortalTest/Big-v0")
    np.testing.assert_array_equal(env.reset(seed=3)[0], local.reset(seed=3)[0])
    for action in (0, 1, 0):
        np.testing.assert_array_equal(env.step(action)[0], local.step(action)[0])
    print("shared memory in use:", env._client.layout.shm is not None)
    env.close()
    vec = make_vec("big", 4, ["PortalTest/Big-v0"], **server.kwargs())
    obs, _ = vec.reset(seed=5)
    expected = [envs.make("PortalTest/Big-v0").reset(seed=5 + i)[0] for i in range(4)]
    np.testing.assert_array_equal(obs, np.stack(expected))
    vec.step(np.zeros(4, dtype=np.int64))
    vec.close()
    print("OK")
finally:
    server.stop()
print(open(server.log).read(), file=sys.stderr)
"""


def _run_with_small_dev_shm(tmp_path: Path, script: str, size: str) -> str:
    """Run script (python, argv[1] = tmp_path) where /dev/shm is a fresh tmpfs of size;
    its stdout, then its stderr."""
    path = tmp_path / "script.py"
    path.write_text(script)
    shell = (
        f"mount -t tmpfs -o size={size},mode=1777 tmpfs /dev/shm && "
        f'exec "{sys.executable}" "{path}" "{tmp_path}"'
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", shell],
        capture_output=True, text=True, timeout=240, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    return done.stdout + "\n--- stderr\n" + done.stderr


@needs_mount_namespace
def test_observations_larger_than_dev_shm_go_through_the_socket(tmp_path: Path):
    output = _run_with_small_dev_shm(tmp_path, AGENT, SHM_SIZE)
    assert "OK" in output
    assert "shared memory in use: False" in output  # 48 MB does not fit in 8 MB
    assert "no shared memory for observations" in output  # the server said why


# Four threads of one server ask for 48 MB at once, five times over, in a 64 MB /dev/shm.
RACE = """
import errno, threading
from portal_env.portal import sharedmem

for round in range(5):
    start, made, refused = threading.Barrier(4), [], []

    def ask():
        start.wait()
        try:
            made.append(sharedmem.create(48 << 20))
        except OSError as exc:
            refused.append(exc.errno)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print("round", round, "made", len(made), "refused", refused)
    for path, mapping in made:
        mapping.close()
        sharedmem.remove(path)
"""


@needs_mount_namespace
def test_concurrent_asks_that_fit_one_at_a_time_give_one_mapping(tmp_path: Path):
    """Interleaved reservations on a nearly full tmpfs could each take part of the room
    and all fail: the first ask must get its memory, the others the socket."""
    output = _run_with_small_dev_shm(tmp_path, RACE, "64m")
    rounds = [line for line in output.splitlines() if line.startswith("round")]
    assert len(rounds) == 5, output
    enospc = [errno.ENOSPC] * 3
    assert all(line.endswith(f"made 1 refused {enospc}") for line in rounds), output
