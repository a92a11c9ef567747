"""Serve gymnasium's MuJoCo environments (HalfCheetah-v5, Ant-v5, Humanoid-v5, ...).

Start it:  portal-env start mujoco -b venv
Use it:    AgentSidePortal("mujoco", env_args=["HalfCheetah-v5"],
                           env_kwargs={"render_mode": "rgb_array"})
"""

import os

# The server has no display: MuJoCo's default GL backend (GLFW) cannot render
# without one, so render_mode="rgb_array" uses EGL (headless; Mesa's software
# EGL is enough). Set MUJOCO_GL yourself (e.g. osmesa) to choose another.
# It must be set before mujoco is imported.
os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium  # noqa: E402  (after MUJOCO_GL)

from portal_env import EnvSidePortal  # noqa: E402

if __name__ == "__main__":
    EnvSidePortal(env_factory=gymnasium.make).run()
