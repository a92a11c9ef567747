"""Serve CartPole-v1 from a separate server process and drive it with a random agent."""

import os
import secrets
import subprocess
import sys
import tempfile
import time

from portal_env import AgentSidePortal

SERVER = (
    "import gymnasium; from portal_env import EnvSidePortal; EnvSidePortal(gymnasium.make).run()"
)


def main() -> None:
    token = secrets.token_hex(16)
    ready = os.path.join(tempfile.mkdtemp(), "ready")
    env = dict(os.environ, PORTAL_ENV_PORT="0", PORTAL_ENV_TOKEN=token, PORTAL_ENV_READY_FILE=ready)
    server = subprocess.Popen([sys.executable, "-c", SERVER], env=env)
    try:
        while not os.path.exists(ready):
            time.sleep(0.05)
        env = AgentSidePortal("cartpole", ["CartPole-v1"], address=open(ready).read(), token=token)
        obs, info = env.reset(seed=0)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            total += reward
            done = terminated or truncated
        print(f"episode return {total}")
        env.close()
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
