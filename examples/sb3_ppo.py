"""Train Stable-Baselines3 PPO on an env served through a portal (the agent side needs SB3).

  portal-env start -p examples/cartpole_env cartpole -b venv -d
  python examples/sb3_ppo.py cartpole CartPole-v1 10000
  portal-env stop cartpole

The portal is an ordinary gymnasium.Env: PPO never knows that CartPole runs in
another process with its own Python environment. Any built-in works the same
way, e.g. `portal-env start ale -b venv -d` and `sb3_ppo.py ale ALE/Pong-v5`
(an image env wants PPO("CnnPolicy", ...) and many more steps).
"""

import sys
import time

from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from portal_env import AgentSidePortal


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "cartpole"
    env_id = sys.argv[2] if len(sys.argv) > 2 else "CartPole-v1"
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 10_000
    with AgentSidePortal(name, env_args=[env_id]) as portal:
        env = Monitor(portal)
        agent = PPO("MlpPolicy", env, seed=0, verbose=0)
        started = time.perf_counter()
        agent.learn(total_timesteps=steps)
        seconds = time.perf_counter() - started
        returns = list(env.get_episode_rewards())  # the training episodes, in order
        evaluated, _ = evaluate_policy(agent, env, n_eval_episodes=10)
    rate = steps / seconds
    print(f"PPO on {name}/{env_id}: {steps} steps in {seconds:.1f}s ({rate:.0f} steps/s)")
    print(f"mean return of the first 10 training episodes: {sum(returns[:10]) / 10:.1f}")
    print(f"mean return of the last 10 training episodes:  {sum(returns[-10:]) / 10:.1f}")
    print(f"mean return of the trained policy over 10 episodes: {evaluated:.1f}")


if __name__ == "__main__":
    main()
