"""Whether busy-polling can pay off right now: only while the machine has a spare core.

A receiver that polls instead of blocking saves a wake-up (tens of microseconds
on a virtual machine), but only if the peer it waits for is running on another
core meanwhile. When every core is taken (workers stepping envs, other jobs),
polling steals the very core the peer needs, so a receiver then blocks at once.
The kernel's count of runnable tasks (the fourth field of /proc/loadavg,
"running/total") tells; it is read at most every CHECK_S seconds.

Both env-side servers use this module, the small server of old runtimes too
(`portal_env.legacy`), so it stays Python 2.7 and 3.5+ code (no annotations;
`tests/test_legacy_static.py` holds it to that).
"""

import os
import time

CHECK_S = 0.02
_LOADAVG = "/proc/loadavg"
_cores = getattr(os, "cpu_count", lambda: os.sysconf("SC_NPROCESSORS_ONLN"))() or 1
_state = {"until": 0.0, "spare": True}
_monotonic = getattr(time, "monotonic", time.time)  # Python 2 has no monotonic clock

# A monotonic clock in integer nanoseconds: time.perf_counter_ns (Python 3.7+), else made.
now_ns = getattr(time, "perf_counter_ns", None) or (
    lambda: int(getattr(time, "perf_counter", time.time)() * 1e9)
)


def runnable():
    """Tasks running or waiting for a core right now, this one included; 0 if unknown."""
    try:
        with open(_LOADAVG, "rb") as f:
            return int(f.read().split()[3].split(b"/")[0])
    except (OSError, IOError, ValueError, IndexError):
        return 0


def spare_core():
    """True unless every core is busy (more runnable tasks than cores); cached CHECK_S.

    The count is smoothed over checks: one task more for an instant (a kernel
    thread, a timer) does not stop spinning, a busy machine does at once.
    """
    now = _monotonic()
    if now >= _state["until"]:
        count = runnable()
        excess = (_state.get("excess", 0.0) + (count - _cores if count else 0)) / 2.0
        _state["excess"] = excess
        _state["spare"] = excess < 0.75
        _state["until"] = now + CHECK_S
    return _state["spare"]


def deadline(start_ns, limit_ns, usual_ns):
    """Until when (now_ns) a receiver that began waiting at start_ns polls; 0: block.

    Adaptive: only while what it waits for usually comes within limit_ns, for
    about twice that usual wait, and only while the machine has a spare core; so
    a slow peer (a long env step, an agent thinking) costs no spinning at all.
    """
    if not limit_ns or usual_ns >= limit_ns or not spare_core():
        return 0
    return start_ns + min(limit_ns, 2 * usual_ns + 50000)
