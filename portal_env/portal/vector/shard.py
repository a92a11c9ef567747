"""A contiguous run of env instances stepped one after another, as SyncVectorEnv does.

A vector env is split into shards; each runs in its own worker process (or, with
no workers, in the server thread). Next-step autoreset is kept per instance, so
a sharded run is the same sequence of env calls as gymnasium's SyncVectorEnv.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from gymnasium.vector.utils import concatenate

from .. import screenbuf
from ..hosted import EnvFactory, call, get_attr, set_attr
from .batchmem import slice_tree


class InstanceError(Exception):
    """An env instance raised: carries its index and the original error's description."""

    def __init__(self, index: int, kind: str, message: str, trace: str) -> None:
        super().__init__(
            f"env instance {index} raised {kind}: {message}\n\n"
            f"Traceback in its worker process:\n{trace.rstrip()}"
        )
        self.index, self.kind, self.message, self.trace = index, kind, message, trace


class Shard:
    """Instances first..first+count-1 of a vector env.

    Args:
        out: Views of this shard's rows of a shared batch (see batchmem), or None
            to return observations as values.
    """

    def __init__(
        self,
        factory: EnvFactory,
        args: Sequence[Any],
        kwargs: Dict[str, Any],
        first: int,
        count: int,
        out: Any = None,
    ) -> None:
        self.first = first
        self.current = first  # the instance being run, named by errors
        self.envs: List[Any] = []
        try:
            for i in range(count):
                self.current = first + i
                self.envs.append(factory(*args, **kwargs))
        except BaseException:
            self.close()
            raise
        self.space = self.envs[0].observation_space
        hooks = [screenbuf.find_hook(env) for env in self.envs]
        self._hooks = hooks if all(hooks) else None  # every env can write its obs where told
        self._targets: Dict[Tuple[int, int], List[Any]] = {}  # (address, rows): per-row views
        self.out = out
        self._rows: Optional[List[Any]] = None  # per-instance views of out, made when needed
        self.autoreset = np.zeros(count, dtype=np.bool_)

    def facts(self) -> Dict[str, Any]:
        """What the agent is told about the env: spaces, metadata, render mode, spec id."""
        env = self.envs[0]
        return {
            "observation_space": env.observation_space,
            "action_space": env.action_space,
            "metadata": dict(getattr(env, "metadata", {}) or {}),
            "render_mode": getattr(env, "render_mode", None),
            "spec_id": getattr(getattr(env, "spec", None), "id", None),
        }

    def _place(self, observations: List[Any], out: Any = None) -> Optional[List[Any]]:
        out = self.out if out is None else out
        if out is None:
            return observations
        concatenate(self.space, observations, out)
        return None

    def reset(self, seeds: Sequence[Optional[int]], options: Optional[dict]) -> Tuple[Any, Any]:
        observations, infos = [], []
        for i, (env, seed) in enumerate(zip(self.envs, seeds)):
            self.current = self.first + i
            obs, info = env.reset(seed=seed, options=options)
            observations.append(obs)
            infos.append(info)
        self.autoreset[:] = False
        return self._place(observations), infos

    def step(self, actions: Sequence[Any], out: Any = None) -> Tuple[Any, ...]:
        """Step every instance; observations go to out (this step's rows of a batch, e.g.
        in the agent's ring slot), else self.out, else back as values (then first in the
        result; None when written)."""
        n = len(self.envs)
        observations, infos = [], []
        rewards = np.zeros(n, dtype=np.float64)
        terminations = np.zeros(n, dtype=np.bool_)
        truncations = np.zeros(n, dtype=np.bool_)
        out = self.out if out is None else out
        targets = self._direct_targets(out)
        for i, (env, action) in enumerate(zip(self.envs, actions)):
            self.current = self.first + i
            if targets:
                self._hooks[i](targets[i])  # type: ignore[index]
            try:
                if self.autoreset[i]:
                    obs, info = env.reset()
                else:
                    obs, rewards[i], terminations[i], truncations[i], info = env.step(action)
            finally:
                if targets:
                    self._hooks[i](None)  # type: ignore[index]
            observations.append(obs)
            infos.append(info)
        self.autoreset = terminations | truncations
        if targets and all(obs is row for obs, row in zip(observations, targets)):
            return None, rewards, terminations, truncations, infos  # written in place
        placed = self._place(observations, out)
        return placed, rewards, terminations, truncations, infos

    def _direct_targets(self, batch: Any) -> List[Any]:
        """Each instance's row of batch, where every env can write its obs itself
        (screenbuf); else empty. Kept per place in memory (a few: the ring's slots), so a
        new view of the same rows costs no new list; the kept views hold that memory."""
        if self._hooks is None or not isinstance(batch, np.ndarray):
            return []
        key = (batch.__array_interface__["data"][0], len(batch))
        rows = self._targets.get(key)
        if rows is None:
            if len(self._targets) > 32:  # batches come from a few fixed places; never grow
                self._targets.clear()
            rows = self._targets[key] = list(batch)
        return rows

    def reset_one(self, index: int, seed: Optional[int], options: Optional[dict]) -> Tuple:
        """Reset instance index (global) alone: (index, obs or None, 0.0, False, False, info)."""
        i = index - self.first
        self.current = index
        obs, info = self.envs[i].reset(seed=seed, options=options)
        self.autoreset[i] = False
        return index, self._place_one(i, obs), 0.0, False, False, info

    def step_one(self, index: int, action: Any) -> Tuple:
        """Step instance index (global) alone, with next-step autoreset, as step() does."""
        i = index - self.first
        self.current = index
        if self.autoreset[i]:
            obs, info = self.envs[i].reset()
            reward, terminated, truncated = 0.0, False, False
        else:
            obs, reward, terminated, truncated, info = self.envs[i].step(action)
        self.autoreset[i] = bool(terminated) or bool(truncated)
        return index, self._place_one(i, obs), reward, terminated, truncated, info

    def _place_one(self, i: int, obs: Any) -> Any:
        if self.out is None:
            return obs
        if self._rows is None:
            self._rows = [slice_tree(self.out, k, k + 1) for k in range(len(self.envs))]
        concatenate(self.space, [obs], self._rows[i])
        return None

    def each(self, op: str, *args: Any) -> List[Any]:
        """op on every instance: render, call, get_attr; set_attr takes one value each."""
        results = []
        for i, env in enumerate(self.envs):
            self.current = self.first + i
            if op == "render":
                results.append(env.render())
            elif op == "call":
                results.append(call(env, *args))
            elif op == "get_attr":
                results.append(get_attr(env, *args))
            elif op == "set_attr":
                set_attr(env, args[0], args[1][i])
            else:
                raise ValueError(f"unknown per-instance op {op!r}")
        return results

    def close(self) -> None:
        envs, self.envs = self.envs, []
        for env in envs:
            env.close()
