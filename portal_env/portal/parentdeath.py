"""Have the kernel SIGKILL this process when its parent exits (Linux `prctl`).

For a child that must not outlive what it runs from or reports to: a supervisor's server,
a server under ch-run (which holds the mount of a SquashFS image), a vector env's worker.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Optional

_PR_SET_PDEATHSIG = 1
# Loaded here, not in a child between fork and exec, where the dynamic loader's lock may
# be held by a thread that no longer exists.
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent(parent_pid: Optional[int] = None) -> int:
    """Ask for SIGKILL at the parent's exit: 0, or the errno if the kernel refused (and 0
    off Linux, where there is no such request). Given the parent's pid, exit at once if
    the parent has already gone (it died before the request took effect)."""
    if _libc is None:
        return 0
    failed = _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0
    error = ctypes.get_errno() if failed else 0
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
    return error
