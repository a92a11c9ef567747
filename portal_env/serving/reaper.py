"""Reaping without an init: a supervisor adopts its server's orphans and reaps them.

In a container started without an init (`docker run IMAGE portal-env start ...`, a
Kubernetes pod, `apptainer exec --pid`), PID 1 may be the supervisor itself, or a
program that never calls wait(); then a process whose parent exits before it stays a
zombie for good. So a supervisor process makes itself the subreaper of its server's
descendants (Linux PR_SET_CHILD_SUBREAPER): a worker or helper process the server leaves
behind becomes the supervisor's child, and the supervisor reaps it when it exits, as
PID 1 would. The server itself is left to its handle, which waits for it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import time
from typing import Collection, List

from ..runtimes.base import child_pids

logger = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the reaper of its descendants' orphans; whether it is (or is PID 1)."""
    if os.getpid() == 1:
        return True
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        logger.info("cannot become a child subreaper (errno %d)", ctypes.get_errno())
        return False
    return True


def reap(keep: Collection[int] = ()) -> List[int]:
    """Wait for this process's exited children except those in keep (whose owners wait
    for them, e.g. a subprocess.Popen); the pids reaped."""
    reaped = []
    for pid in child_pids(os.getpid()):
        if pid in keep:
            continue
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped.append(pid)
        except ChildProcessError:  # reaped meanwhile by whoever owns it
            continue
    if reaped:
        logger.debug("reaped orphaned processes %s", reaped)
    return reaped


def reap_until_none(timeout: float) -> None:
    """Reap exiting children until none is left, for at most timeout seconds (processes
    just killed take a moment to exit)."""
    deadline = time.monotonic() + timeout
    while True:
        reap()
        if not child_pids(os.getpid()) or time.monotonic() >= deadline:
            return
        time.sleep(0.02)
