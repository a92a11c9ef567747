"""py-rattler's solve and install, each run in a child process.

py-rattler 0.28 leaves tokio tasks running after a call returns; when the
interpreter exits right after one, it crashes in finalization (measured here:
a SIGSEGV or "PyGILState_Release" abort in 20-40% of short runs). So each call
runs in a child that reports its result as JSON on stdout and leaves with
`os._exit`, skipping the finalization that crashes. Ctrl-C reaches the child
too (same process group) and the parent sees KeyboardInterrupt as usual.

Run as `python -m portal_env.runtimes.rattler_calls` with a JSON request on stdin.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

logger = logging.getLogger(__name__)


class RattlerCallError(Exception):
    """py-rattler failed in the child: its exception type name and message."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def solve(
    channels: Sequence[str], specs: Sequence[str], platform: str, virtual: Sequence[tuple]
) -> List[Dict[str, Any]]:
    """Solve specs for platform (plus noarch); the records as dicts (url, sha256, ...)."""
    request = {"call": "solve", "channels": list(channels), "specs": list(specs)}
    request.update(platform=platform, virtual=[list(v) for v in virtual])
    return _call(request)


def install(
    lock_path: str,
    platform: str,
    prefix: str,
    cache_dir: str,
    alternative_prefix: Optional[str] = None,
) -> None:
    """Install the conda packages lock_path holds for platform into prefix (hashes checked).

    With alternative_prefix, the files go to prefix but are made for a prefix at
    alternative_prefix (the path written into them), e.g. inside an image.
    """
    request = {"call": "install", "lock": lock_path, "platform": platform}
    request.update(prefix=prefix, cache_dir=cache_dir, alternative_prefix=alternative_prefix)
    _call(request)


def _call(request: Dict[str, Any]) -> Any:
    command = [sys.executable, "-m", "portal_env.runtimes.rattler_calls"]
    logger.debug("running %s <<< %s", shlex.join(command), json.dumps(request))
    done = subprocess.run(
        command, input=json.dumps(request), capture_output=True, text=True, env=_child_env()
    )
    try:
        reply = json.loads(done.stdout or "null")
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise RattlerCallError(
            "crash", f"py-rattler exited with code {done.returncode}: {done.stderr[-4000:]}"
        )
    if "error" in reply:
        raise RattlerCallError(reply["error"], reply["message"])
    return reply["result"]


def _child_env() -> Dict[str, str]:
    """Our environment, with this package importable (it may run from a source tree)."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


# -- the child side ---------------------------------------------------------------


def _solve(request: Dict[str, Any]) -> List[Dict[str, Any]]:
    import rattler

    virtual = [
        rattler.GenericVirtualPackage(
            rattler.PackageName(n), rattler.Version(v), rattler.BuildString(b)
        )
        for n, v, b in request["virtual"]
    ]
    records = asyncio.run(
        rattler.solve(
            request["channels"],
            request["specs"],
            platforms=[request["platform"], "noarch"],
            virtual_packages=virtual,
        )
    )
    return [_record(r) for r in records]


def _record(record: Any) -> Dict[str, Any]:
    return {
        "name": record.name.normalized,
        "version": str(record.version),
        "build": str(record.build),
        "depends": list(record.depends),
        "url": str(record.url),
        "md5": record.md5.hex() if record.md5 is not None else None,
        "sha256": record.sha256.hex() if record.sha256 is not None else None,
    }


def _install(request: Dict[str, Any]) -> None:
    import rattler

    environment = rattler.LockFile.from_path(request["lock"]).default_environment()
    if environment is None:
        raise ValueError(f"{request['lock']} has no default environment")
    target = [p for p in environment.platforms() if p.name == request["platform"]]
    records = environment.conda_repodata_records_for_platform(target[0]) if target else None
    if not records:
        raise ValueError(f"{request['lock']} has no conda packages for {request['platform']}")
    asyncio.run(
        rattler.install(
            records,
            target_prefix=request["prefix"],
            cache_dir=request["cache_dir"],
            show_progress=False,
            alternative_target_prefix=request.get("alternative_prefix"),
        )
    )


def _serve(request: Dict[str, Any]) -> Optional[Any]:
    calls = {"solve": _solve, "install": _install}
    return calls[request["call"]](request)


def main() -> None:
    """Answer one request from stdin; leave without interpreter finalization."""
    code = 0
    try:
        reply = {"result": _serve(json.loads(sys.stdin.read()))}
    except KeyboardInterrupt:
        os._exit(130)
    except Exception as exc:  # reported to the parent, which raises a typed error
        reply, code = {"error": type(exc).__name__, "message": str(exc)}, 2
    sys.stdout.write(json.dumps(reply))
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
