"""AgentSidePortal: a gymnasium.Env whose environment runs in a portal server."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, SupportsFloat, Tuple

import gymnasium

from ..errors import PortalEnvError, ProtocolError, RemoteEnvError
from . import fastpath, protocol, spaces
from .client import DEFAULT_TIMEOUT, Client


def make_remote(
    client: Client,
    env_name: str,
    env_args: List[Any],
    env_kwargs: Dict[str, Any],
    num_envs: Optional[int] = None,
    num_workers: Optional[int] = None,
    batch_size: Optional[int] = None,
) -> Dict[str, Any]:
    """Make the env on the server ("make", or "make_vec" given num_envs); a factory that
    rejects the arguments is reported with what the agent passed and what to pass instead.

    batch_size: below num_envs, the vector env is stepped EnvPool-style (send/recv).
    """
    if num_envs is None:
        op, args = "make", [env_args, env_kwargs]
    elif not client.offers(protocol.FEATURE_VECTOR):
        client.close()
        raise PortalEnvError(
            f"the portal {env_name!r} at {client.address} is served by the small server of an "
            "old runtime (Python < 3.8), which hosts single envs only, not vector envs. Use "
            "gymnasium.vector.SyncVectorEnv or AsyncVectorEnv over AgentSidePortal instances "
            f"(e.g. AsyncVectorEnv([lambda: AgentSidePortal({env_name!r}, ...)] * {num_envs}))."
        )
    else:  # num_workers None: the server picks (its cost model)
        op, args = "make_vec", [num_envs, env_args, env_kwargs]
        if batch_size is not None and batch_size < num_envs:
            args += [num_workers, batch_size]
        elif num_workers is not None:
            args += [num_workers]
    try:
        return client.call(op, *args)
    except RemoteEnvError as exc:
        client.close()  # no env was made on it
        if exc.remote_type != "TypeError":
            raise
        raise RemoteEnvError(
            exc.remote_type,
            f"the env factory of portal {env_name!r} rejected env_args={env_args!r}, "
            f"env_kwargs={env_kwargs!r}: {exc.remote_message}. Pass the arguments its "
            f"factory expects, e.g. AgentSidePortal({env_name!r}, env_args=['<env id>']) "
            "for a portal serving gymnasium.make",
            exc.remote_traceback,
        ) from None


class AgentSidePortal(gymnasium.Env):
    """A remote environment, used like any gymnasium.Env.

    Args:
        env_name: Name the portal was started under (`portal-env start NAME`).
        env_args: Positional arguments for the server's env factory,
            e.g. ["ALE/Pong-v5"] for gymnasium.make.
        env_kwargs: Keyword arguments for the server's env factory.
        agent_in_docker: The agent runs in a container on the portal_env_net network.
        address: "host:port" or "unix:/path" (default: $PORTAL_ENV_ADDRESS, else where the
            registry says the portal env_name runs).
        token: The server's token (default: $PORTAL_ENV_TOKEN, $PORTAL_ENV_TOKEN_FILE, or the
            token a local server recorded for that address).
        timeout: Seconds to wait for any one call (and for connecting) before giving up.
        allow_pickle: Accept (and send) pickled values for what the structured codec cannot
            carry (default: $PORTAL_ENV_ALLOW_PICKLE, else no). Only for a server you trust
            with a shell: unpickling runs code the server chooses.
        render_mode: Passed to the factory as env_kwargs["render_mode"] (what
            gymnasium.make(..., render_mode=...) does).
    """

    def __init__(
        self,
        env_name: str,
        env_args: Optional[Sequence[Any]] = None,
        env_kwargs: Optional[Dict[str, Any]] = None,
        agent_in_docker: bool = False,
        address: Optional[str] = None,
        token: Optional[str] = None,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        *,
        allow_pickle: Optional[bool] = None,
        render_mode: Optional[str] = None,
    ) -> None:
        self.env_name = env_name
        self.env_args: List[Any] = list(env_args or [])
        self.env_kwargs: Dict[str, Any] = dict(env_kwargs or {})
        if render_mode is not None:
            self.env_kwargs["render_mode"] = render_mode
        self._connect_args = (address, token, agent_in_docker, timeout, allow_pickle)
        self._closed = False
        self._connect()

    def _connect(self) -> None:
        """Connect, make the remote env and take its spaces and metadata."""
        self._client = Client.for_env(self.env_name, *self._connect_args)
        description = make_remote(self._client, self.env_name, self.env_args, self.env_kwargs)
        try:
            self.observation_space = spaces.decode_space(description["observation_space"])
            self.action_space = spaces.decode_space(description["action_space"])
            self.metadata = dict(description["metadata"])
            self.render_mode = description["render_mode"]
            self.remote_spec_id: Optional[str] = description["spec_id"]
        except (KeyError, TypeError, ValueError) as exc:  # not what a portal-env server sends
            self._client.close(goodbye=False)
            raise ProtocolError(
                f"malformed env description from {self._client.address}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self._client.adopt_layout(fastpath.EnvLayout(self.observation_space, self.action_space))

    def reset(
        self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None
    ) -> Tuple[Any, Dict[str, Any]]:
        """Reset the remote env; after a lost connection, starts a fresh remote env first."""
        super().reset(seed=seed)
        if self._client.broken:
            self._connect()
        obs, info = self._client.call("reset", seed, options)
        return obs, info

    def step(self, action: Any) -> Tuple[Any, SupportsFloat, bool, bool, Dict[str, Any]]:
        result = self._client.step(action)
        return result if type(result) is tuple else tuple(result)

    def render(self) -> Any:
        return self._client.call("render")

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call method `name` of the remote env (or read it, if it is not callable)."""
        return self._client.call("call", name, list(args), kwargs)

    def get_attr(self, name: str) -> Any:
        """Read attribute `name` of the remote env (searched through its wrappers)."""
        return self._client.call("get_attr", name)

    def set_attr(self, name: str, value: Any) -> None:
        """Set attribute `name` of the remote env."""
        self._client.call("set_attr", name, value)

    def close(self) -> None:
        """Close the remote env and the connection; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._client.close()

    def __repr__(self) -> str:
        return f"<AgentSidePortal {self.env_name!r} {self.env_args!r} at {self._client.address}>"
