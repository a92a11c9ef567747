"""Where things are inside the images portal-env makes or runs (exported images, and
containers of the docker backend, which mount this host's portal_env at LIB)."""

IMAGE_ROOT = "/opt/portal-env"
PREFIX = f"{IMAGE_ROOT}/env"  # the conda prefix
LIB = f"{IMAGE_ROOT}/lib"  # holds the portal_env package
APP = f"{IMAGE_ROOT}/app"  # the env's files: env_main.py, spec.yml, its lockfile, ...
