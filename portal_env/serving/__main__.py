"""`python -m portal_env.serving JOB`: the supervisor process that lifecycle.serve() starts.

JOB is JSON: the env (name, path), its backend and options, and optionally the
read end of a pipe from the starter (`lifeline_fd`) whose closing stops the portal.
With `"token_from_env": true` the server's token is $PORTAL_ENV_TOKEN (never put on
a command line, where `ps` shows it to every user).
The runtime is already built by the starter; finding it here is a cache hit.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from .. import config
from ..errors import PortalEnvError
from . import lifecycle, supervisor


def main(job_text: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    job = json.loads(job_text)
    path = Path(job["path"]) if job.get("path") else None
    image = Path(job["image"]) if job.get("image") else None
    try:
        runtime = lifecycle.build(
            job["name"],
            path=path,
            backend=job["backend"],
            base_image=job.get("base_image"),
            ca_bundle=Path(job["ca_bundle"]) if job.get("ca_bundle") else None,
            image=image,
        )
        token = os.environ.get(config.TOKEN_VAR) if job.get("token_from_env") else None
        policy = supervisor.Policy(
            ready_timeout=job["ready_timeout"], host=job.get("host"), token=token
        )
        lifecycle.supervise(
            lifecycle.find(job["name"], path, image),
            runtime,
            policy,
            lifeline_fd=job.get("lifeline_fd"),
        )
    except PortalEnvError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
