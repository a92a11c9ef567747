"""The agent's view of EnvPool-style stepping: which instances are in flight.

The agent posts the next recv() before it hands a batch to the user, whenever
enough instances are in flight to fill one: the server then gathers that batch
and sends it while the user's agent thinks (on an accelerator, say), and the
user's next recv() finds it waiting. For that the agent must know what is in
flight, as the server does; after an error it no longer knows exactly (an
env's exception took its instance out of flight on the server), so it stops
posting ahead, and stops checking, until the next async_reset().
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np


class Flight:
    """Instances sent actions (or reset) and not yet returned to the user by recv()."""

    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs
        self.flying = np.zeros(num_envs, dtype=np.bool_)
        self.count = 0
        self.known = True  # False after an error, until async_reset

    def check_idle(self, op: str) -> None:
        """Raise RuntimeError if instances are in flight: op would mix with their replies."""
        if self.count and self.known:
            raise busy_error(op, self.flying)

    def reset_all(self) -> None:
        """async_reset(): every instance flies (check_idle first)."""
        self.flying[:] = True
        self.count = self.num_envs
        self.known = True

    def claim(self, ids: Sequence[int], actions: Any) -> None:
        """send(actions, ids): they fly from now on; ValueError naming a bad id (out of range,
        twice, already in flight) or a count of actions that does not match."""
        check_ids(ids, self.num_envs)
        count = _length(actions)
        if count is not None and count != len(ids):
            raise ValueError(f"send got {count} actions for {len(ids)} env_ids")
        if not self.known:
            return  # the server checks the rest
        check_not_flying(ids, self.flying)
        self.flying[list(ids)] = True
        self.count += len(ids)

    def received(self, ids: List[int]) -> None:
        self.flying[ids] = False
        self.count = int(self.flying.sum())

    def lost(self) -> None:
        """An error came back: the server may have taken instances out of flight."""
        self.known = False

    def can_post_ahead(self, batch_size: int) -> bool:
        """Whether a recv posted now can be filled by what is in flight already."""
        return self.known and self.count >= batch_size


# The checks both sides make, agent (Flight) and server (asyncsteps), with one wording.


def busy_error(op: str, flying: np.ndarray) -> RuntimeError:
    """The error for op while the instances flagged in flying are in flight."""
    return RuntimeError(
        f"'{op}' while instances {np.flatnonzero(flying).tolist()} were sent actions (or "
        "reset) and not yet received; call recv() until they are all back first"
    )


def check_ids(ids: Sequence[int], num_envs: int) -> None:
    """ValueError for an env_id out of range, or one named twice."""
    for i in ids:
        if not 0 <= i < num_envs:
            raise ValueError(f"env_id {i} is out of range for {num_envs} envs")
    if len(set(ids)) != len(ids):
        raise ValueError(f"env_ids {list(ids)} name an instance twice")


def check_not_flying(ids: Sequence[int], flying: np.ndarray) -> None:
    """ValueError for an env_id already in flight."""
    for i in ids:
        if flying[i]:
            raise ValueError(f"env_id {i} was sent an action already; recv() it first")


def _length(actions: Any) -> Optional[int]:
    """How many actions a batch holds (its first axis), if it says (Dict and Tuple batches:
    their first leaf's)."""
    while isinstance(actions, (dict, tuple)) and actions:
        actions = next(iter(actions.values())) if isinstance(actions, dict) else actions[0]
    try:
        return len(actions)
    except TypeError:
        return None
