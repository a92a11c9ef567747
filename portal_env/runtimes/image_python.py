"""Which Python an env image serves with, so its containers get the portal_env it can run.

A Dockerfile.env image whose server runs on Python < 3.8 (say, `CMD ["python2.7",
"env_main.py"]` over a bullseye base) cannot import portal-env itself; its
containers get the small server's package instead (`legacy_shim`). The version is
asked of the interpreter the image's command starts (else `python`, `python3`),
once per image id: an id names its content, so the answer is cached for good.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from pathlib import Path
from typing import Any, List, Optional, Tuple

from .. import config
from . import legacy_shim
from .base import Reporter
from .cache import package_dir

logger = logging.getLogger(__name__)

_PROBE = "import sys; print('%d.%d' % sys.version_info[:2])"
_FALLBACKS = ("python", "python3", "python2")


def interpreters(image: Any) -> List[str]:
    """The interpreters to ask, in order: the one the image's command starts, if it starts
    one, then the usual names."""
    settings = image.attrs.get("Config") or {}
    command = list(settings.get("Entrypoint") or []) + list(settings.get("Cmd") or [])
    if command[:2] in (["/bin/sh", "-c"], ["sh", "-c"]) and len(command) > 2:
        command = shlex.split(command[2])
    first = [command[0]] if command and "python" in os.path.basename(command[0]) else []
    return first + [name for name in _FALLBACKS if name not in first]


def python_version(docker_client: Any, tag: str) -> Optional[Tuple[int, int]]:
    """(major, minor) of the Python the image serves with (cached per image id), or None
    if no interpreter answers."""
    image = docker_client.images.get(tag)
    cached = config.cache_dir() / "image-python" / image.id.replace(":", "-")
    if cached.is_file():
        return tuple(json.loads(cached.read_text()))  # type: ignore[return-value]
    for python in interpreters(image):
        output = _ask(docker_client, image.id, python)
        if output is None:
            continue  # no such interpreter in the image (or it fails): try the next
        major, _, minor = output.strip().partition(".")
        version = (int(major), int(minor))
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(version))
        logger.debug("image %s serves with %s, Python %d.%d", tag, python, *version)
        return version
    return None


def _ask(docker_client: Any, image_id: str, python: str) -> Optional[str]:
    """What python prints for the probe in a throwaway container of the image, or None if
    it does not run there. The container goes whatever happens: `containers.run(...,
    remove=True)` leaves behind one whose command cannot start (no such interpreter)."""
    import docker

    container = docker_client.containers.create(
        image_id, [python, "-c", _PROBE], entrypoint="", network_mode="none"
    )
    try:
        container.start()
        if container.wait().get("StatusCode") != 0:
            return None
        return container.logs(stdout=True, stderr=False).decode()
    except docker.errors.APIError:
        return None
    finally:
        container.remove(force=True)


def server_package(docker_client: Any, tag: str, reporter: Reporter) -> Path:
    """The directory whose `portal_env` the image's containers import: this host's package,
    or the small server's where the image's Python is older than 3.8."""
    version = python_version(docker_client, tag)
    if version is None:  # e.g. a Python only its entrypoint script sets up: as before
        logger.warning(
            "no Python answered in image %s (asked: %s, without its entrypoint); its "
            "containers get this host's portal_env, which needs Python >= 3.8",
            tag,
            ", ".join(interpreters(docker_client.images.get(tag))),
        )
        return package_dir()
    if not legacy_shim.needs_shim(version):
        return package_dir()
    legacy_shim.check_supported(version, f"image {tag}")
    reporter.note(
        f"image {tag} serves with Python {version[0]}.{version[1]}: its containers get the "
        "small server of old runtimes (no shared memory, no vector envs)"
    )
    return legacy_shim.shim_dir()
