"""portal-env on a Ray cluster: env servers on many nodes, agents stepping them directly.

    from portal_env import ray as pray

    with pray.launch("ale", backend="venv", num_servers=4, placement="spread") as fleet:
        vec = fleet.make_vec(num_envs=32, env_args=["ALE/Pong-v5"])  # one gymnasium VectorEnv
        env = fleet.make(env_args=["ALE/Pong-v5"])                    # one AgentSidePortal
        fleet.endpoints, fleet.token  # [(node id, "host:port")] and the token, for other agents

Needs the extra `portal-env[ray]`; `import portal_env` never imports Ray. Ray places,
starts, watches and restarts the servers (one thin launcher actor each, the server a
child process in the env's runtime); steps never pass through Ray.
"""

from __future__ import annotations

from .fleet import Fleet, ServerInfo, launch

__all__ = ["Fleet", "ServerInfo", "launch"]
