"""A random agent on a running portal, found by name.

Usage: python examples/random_agent.py NAME [ENV_ID]
"""

import sys

from portal_env import AgentSidePortal


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "cartpole"
    env_id = sys.argv[2] if len(sys.argv) > 2 else "CartPole-v1"
    with AgentSidePortal(name, env_args=[env_id]) as env:
        for episode in range(3):
            obs, info = env.reset(seed=episode)
            total, steps, done = 0.0, 0, False
            while not done:
                obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
                total, steps, done = total + float(reward), steps + 1, terminated or truncated
            print(f"episode {episode}: return {total:.1f} in {steps} steps")


if __name__ == "__main__":
    main()
