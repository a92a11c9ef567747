"""A ring of shared slots through which large observations reach the agent uncopied.

The agent's shared mapping holds a scratch slot (0) and `slots` more, each the
size of one observation (a vector env's: one batch of them). Before each step
the agent names a slot nobody references any more; the server (or a vector
env's workers) writes the observation there, and the agent hands out a
read-only view of it instead of a copy. A slot is reused only once every view
of it is gone (its owner array's reference count says so), so an observation
the user keeps never changes. When every slot is still referenced (observations
stored in a list, say), the step uses the scratch slot and the agent copies, as
without a ring.
"""

from __future__ import annotations

import os
import sys
from typing import Any, List, Optional

import numpy as np

from ..errors import PortalEnvError

RING_VAR = "PORTAL_ENV_OBS_RING"  # slots to ask for; 0: writable copies, as before rings
RING_SLOTS = 4  # default: views a user can hold at once before steps fall back to copies
RING_BYTES = 32 << 20  # at most this much shared memory for the ring


def slots_for(capacity: int) -> int:
    """How many ring slots an observation of capacity bytes gets (0: no ring)."""
    raw = os.environ.get(RING_VAR, "")
    try:
        wanted = min(15, max(0, int(raw))) if raw else RING_SLOTS
    except ValueError:
        raise PortalEnvError(
            f"{RING_VAR}={raw!r} is not a whole number of slots (0 turns the ring off)"
        ) from None
    return min(wanted, RING_BYTES // capacity) if capacity else 0


class Ring:
    """The agent's side: which slots are free, and the views handed out."""

    def __init__(self, mapping: Any, capacity: int, slots: int) -> None:
        self._mapping = mapping
        self.capacity = capacity
        self.slots = slots
        self._owners: List[Optional[np.ndarray]] = [None] * (slots + 1)
        self._next = 1

    def free_slot(self) -> int:
        """A slot no view references, trying them in turn; 0 (scratch: copy) if none is."""
        for _ in range(self.slots):
            k = self._next
            self._next = k % self.slots + 1
            # References: the list, `owner` here, getrefcount's argument; any more are views.
            owner = self._owners[k]
            if owner is None or sys.getrefcount(owner) <= 3:
                return k
        return 0

    def view(self, k: int, dtype: np.dtype, count: int, shape: tuple) -> np.ndarray:
        """A read-only view of slot k; every view derived from it keeps the slot taken."""
        owner = np.frombuffer(self._mapping, dtype, count, k * self.capacity)
        owner.flags.writeable = False
        self._owners[k] = owner
        return owner.reshape(shape)
