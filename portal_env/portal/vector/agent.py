"""make_vec: N remote env instances as one gymnasium VectorEnv, stepped in one round trip."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import gymnasium
import numpy as np
from gymnasium.vector.utils import batch_space

from .. import fastpath, spaces
from ..agent import make_remote
from ..client import DEFAULT_TIMEOUT, Client
from .flight import Flight


class PortalVectorEnv(gymnasium.vector.VectorEnv):
    """N instances of a remote env with gymnasium 1.x next-step autoreset.

    Attributes:
        num_workers: The processes the server steps the instances with (0: its
            connection thread alone), as asked or as its cost model picked
            (vector.costmodel); None from a server too old to say.
        sizing: What the server measured to pick the default: the env's step time
            (``step_s``) and a hand-off to a worker (``handoff_s``), in seconds;
            empty when num_workers was given.
    """

    def __init__(
        self,
        env_name: str,
        num_envs: int,
        env_args: Optional[Sequence[Any]] = None,
        env_kwargs: Optional[Dict[str, Any]] = None,
        agent_in_docker: bool = False,
        address: Optional[str] = None,
        token: Optional[str] = None,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        num_workers: Optional[int] = None,
        batch_size: Optional[int] = None,
    ) -> None:
        self.env_name = env_name
        self.num_envs = num_envs
        self.batch_size = num_envs if batch_size is None else batch_size
        if not isinstance(self.batch_size, int) or not 1 <= self.batch_size <= num_envs:
            raise ValueError(
                f"batch_size must be from 1 to num_envs={num_envs}, got {batch_size!r}"
            )
        self._all_ids = list(range(num_envs))
        self._flight = Flight(num_envs)
        self._ahead = False  # a recv is posted whose reply is not read yet
        self._client = Client.for_env(env_name, address, token, agent_in_docker, timeout)
        args, kwargs = list(env_args or []), dict(env_kwargs or {})
        # num_workers None: the server picks (its cost model, vector.costmodel)
        description = make_remote(
            self._client, env_name, args, kwargs, num_envs, num_workers, self.batch_size
        )
        self.single_observation_space = spaces.decode_space(description["observation_space"])
        self.single_action_space = spaces.decode_space(description["action_space"])
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = dict(description["metadata"])
        autoreset_mode = getattr(gymnasium.vector, "AutoresetMode", None)
        if autoreset_mode is not None:
            self.metadata["autoreset_mode"] = autoreset_mode.NEXT_STEP
        self.render_mode = description["render_mode"]
        self.num_workers: Optional[int] = description.get("num_workers")
        self.sizing: Dict[str, float] = dict(description.get("sizing") or {})
        self._client.adopt_layout(
            fastpath.VectorLayout(self.single_observation_space, self.single_action_space, num_envs)
        )

    def reset(
        self,
        *,
        seed: Optional[Union[int, List[Optional[int]]]] = None,
        options: Optional[Dict[str, Any]] = None,
    ) -> Tuple[Any, Dict[str, Any]]:
        self._flight.check_idle("reset")
        obs, infos = self._client.call("reset", self._seeds(seed), options)
        return obs, self._merge(infos)

    def _seeds(self, seed: Optional[Union[int, List[Optional[int]]]]) -> List[Optional[int]]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, (int, np.integer)):
            return [int(seed) + i for i in range(self.num_envs)]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"reset(seed=...) got {len(seeds)} seeds for {self.num_envs} envs")
        return seeds

    def step(self, actions: Any) -> Tuple[Any, Any, Any, Any, Dict[str, Any]]:
        if self._flight.count:
            self._flight.check_idle("step")
        obs, rewards, terminations, truncations, infos = self._client.step(actions)
        return obs, rewards, terminations, truncations, self._merge(infos)

    def step_async(self, actions: Any) -> None:
        """Start a step of every instance; step_wait() returns it. Work done in between
        (e.g. the agent's inference) overlaps the envs' steps."""
        self._flight.check_idle("step_async")
        self._client.step_send(actions)

    def step_wait(self) -> Tuple[Any, Any, Any, Any, Dict[str, Any]]:
        """The result of the step step_async() started."""
        obs, rewards, terminations, truncations, infos = self._client.step_receive()
        return obs, rewards, terminations, truncations, self._merge(infos)

    # -- EnvPool-style asynchronous stepping ------------------------------------------------

    def async_reset(
        self,
        *,
        seed: Optional[Union[int, List[Optional[int]]]] = None,
        options: Optional[Dict[str, Any]] = None,
    ) -> None:
        """Reset every instance without waiting; recv() returns them as they finish."""
        self._flight.check_idle("async_reset")
        self._client.post("async_reset", self._seeds(seed), options)
        self._flight.reset_all()

    def send(self, actions: Any, env_ids: Optional[Sequence[int]] = None) -> None:
        """Step the instances env_ids (default: all) with actions[k] for env_ids[k];
        returns at once. A bad id raises ValueError here; an env's exception raises from
        a later recv()."""
        ids = self._all_ids if env_ids is None else [int(i) for i in env_ids]
        self._flight.claim(ids, actions)
        self._client.post("send", ids, actions)

    def recv(self) -> Tuple[Any, Any, Any, Any, Dict[str, Any]]:
        """The first batch_size instances to finish: obs, rewards, terminations,
        truncations and infos batched along the first axis, info["env_id"] their ids.

        Observations of a fixed-size array space come as a read-only view of a ring
        slot of shared memory on the same host (see "What an agent may keep").
        """
        try:
            if self._ahead:  # posted by the last recv(); the server may have sent it already
                self._ahead = False
                reply = self._client.take_posted("recv")
            else:
                reply = self._client.call_next("recv", self.batch_size, self._free_slot())
        except Exception:
            self._flight.lost()
            raise
        obs, rewards, terminations, truncations, infos, ids = reply
        if type(obs) is int:  # the server wrote the batch into the ring slot we named
            obs = self._ring_view(obs, len(ids))
        self._flight.received(ids.tolist())
        if self._flight.can_post_ahead(self.batch_size):
            self._client.post("recv", self.batch_size, self._free_slot())
            self._ahead = True
        merged = self._merge(infos, len(ids))
        merged["env_id"] = ids
        return obs, rewards, terminations, truncations, merged

    def _free_slot(self) -> int:
        """A ring slot for a recv() batch's observations (obsring); 0: none, copy."""
        layout = self._client.layout
        return layout.ring.free_slot() if layout is not None and layout.ring is not None else 0

    def _ring_view(self, slot: int, rows: int) -> np.ndarray:
        layout = self._client.layout
        per_row = layout.obs.count // self.num_envs
        shape = (rows,) + layout.obs.shape[1:]
        return layout.ring.view(slot, layout.obs.dtype, rows * per_row, shape)

    def _merge(self, infos: List[Dict[str, Any]], rows: Optional[int] = None) -> Dict[str, Any]:
        merged = merge_scalar_infos(infos)
        if merged is not None:
            return merged
        merged = {}
        target: Any = self if rows is None or rows == self.num_envs else _InfoRows(rows)
        for i, info in enumerate(infos):
            if info:
                merged = target._add_info(merged, info, i)
        return merged

    def render(self) -> Optional[Tuple[Any, ...]]:
        self._flight.check_idle("render")
        return self._client.call("render")

    def call(self, name: str, *args: Any, **kwargs: Any) -> Tuple[Any, ...]:
        self._flight.check_idle("call")
        return self._client.call("call", name, list(args), kwargs)

    def get_attr(self, name: str) -> Tuple[Any, ...]:
        self._flight.check_idle("get_attr")
        return self._client.call("get_attr", name)

    def set_attr(self, name: str, values: Union[List[Any], Tuple[Any, ...], Any]) -> None:
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"set_attr got {len(values)} values for {self.num_envs} envs")
        self._flight.check_idle("set_attr")
        self._client.call("set_attr", name, list(values))

    def close_extras(self, **kwargs: Any) -> None:
        self._client.close()

    def __enter__(self) -> PortalVectorEnv:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def merge_scalar_infos(infos: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """gymnasium's merged infos, made column by column, for the usual case: every instance
    reports the same keys with numbers of one type each (ALE's lives, MuJoCo's rewards).

    None for anything else, which gymnasium's own per-instance merge then handles.
    """
    first = infos[0] if infos else None
    if not first or type(first) is not dict:
        return None
    keys = tuple(first)
    if "final_obs" in first or any(f"_{key}" in first for key in keys):
        return None  # gymnasium stores these differently (objects; a mask overwritten)
    if any(type(info) is not dict or tuple(info) != keys for info in infos):
        return None
    merged: Dict[str, Any] = {}
    for key in keys:
        column = [info[key] for info in infos]
        kind = type(column[0])
        if not (kind in (int, float, bool) or issubclass(kind, np.number)):
            return None
        if any(type(value) is not kind for value in column):
            return None
        merged[key] = np.array(column, dtype=kind)
        merged[f"_{key}"] = np.ones(len(infos), dtype=np.bool_)
    return merged


class _InfoRows:
    """gymnasium's info merging for a batch of rows other than num_envs (a recv() batch)."""

    _add_info = gymnasium.vector.VectorEnv._add_info

    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs
