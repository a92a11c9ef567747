"""Whether busy-polling can pay off right now: only while the machine has a spare core.

A receiver that polls instead of blocking saves a wake-up (tens of microseconds
on a virtual machine), but only if the peer it waits for is running on another
core meanwhile. When every core is taken (workers stepping envs, other jobs),
polling steals the very core the peer needs, so a receiver then blocks at once.
The kernel's count of runnable tasks (the fourth field of /proc/loadavg,
"running/total") tells; it is read at most every CHECK_S seconds.
"""

from __future__ import annotations

import os
import time

CHECK_S = 0.02
_LOADAVG = "/proc/loadavg"
_cores = os.cpu_count() or 1
_state = {"until": 0.0, "spare": True}


def runnable() -> int:
    """Tasks running or waiting for a core right now, this one included; 0 if unknown."""
    try:
        with open(_LOADAVG, "rb") as f:
            return int(f.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return 0


def spare_core() -> bool:
    """True unless every core is busy (more runnable tasks than cores); cached CHECK_S.

    The count is smoothed over checks: one task more for an instant (a kernel
    thread, a timer) does not stop spinning, a busy machine does at once.
    """
    now = time.monotonic()
    if now >= _state["until"]:
        count = runnable()
        excess = (_state.get("excess", 0.0) + (count - _cores if count else 0)) / 2
        _state["excess"] = excess
        _state["spare"] = excess < 0.75
        _state["until"] = now + CHECK_S
    return _state["spare"]


def deadline(start_ns: int, limit_ns: int, usual_ns: int) -> int:
    """Until when (perf_counter_ns) a receiver that began waiting at start_ns polls; 0: block.

    Adaptive: only while what it waits for usually comes within limit_ns, for
    about twice that usual wait, and only while the machine has a spare core; so
    a slow peer (a long env step, an agent thinking) costs no spinning at all.
    """
    if not limit_ns or usual_ns >= limit_ns or not spare_core():
        return 0
    return start_ns + min(limit_ns, 2 * usual_ns + 50_000)
