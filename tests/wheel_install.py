"""portal-env installed from its wheel, the way users get it, and run with a read-only
package directory (as site-packages often is on a cluster, and always for an upgrade-safe
install).

- `build_wheel`: the wheel of this checkout (its tracked files, copied first, so the build
  writes nothing into the checkout).
- `venv_with`: a venv holding the wheel (and, with system_site, this Python's packages for
  its dependencies; else the given requirements, installed by uv).
- `read_only`: a command prefix that runs a command with the venv's site-packages mounted
  read-only (root: a private mount namespace, since root ignores file modes; `chmod -R
  a-w` too, which is what stops other users), optionally without network (`--net`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, List, Sequence

ROOT = Path(__file__).resolve().parent.parent
_READ_ONLY = (
    'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" '
    '&& ! touch "$1/.portal-env-write-probe" 2>/dev/null && shift && exec "$@"'
)


def build_wheel(target: Path) -> Path:
    """portal-env's wheel from this checkout's tracked files (made once per target)."""
    found = sorted(target.glob("portal_env-*.whl"))
    if found:
        return found[0]
    source = target / "src"
    files = subprocess.check_output(["git", "ls-files", "-z"], cwd=ROOT, text=True)
    for name in filter(None, files.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    command = [sys.executable, "-m", "uv", "build", "--quiet", "--wheel"]
    subprocess.run([*command, "--out-dir", str(target), str(source)], check=True, env=clean_env())
    shutil.rmtree(source)
    return next(target.glob("portal_env-*.whl"))


def requirements(wheel: Path, leave_out: Sequence[str] = ()) -> List[str]:
    """The wheel's own dependencies (Requires-Dist without extras), minus leave_out."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(name).decode().splitlines()
    found = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]
    from packaging.requirements import Requirement

    found = [req for req in found if "extra ==" not in req]
    return [req for req in found if Requirement(req).name not in leave_out]


def venv_with(wheel: Path, target: Path, system_site: bool, extra: Sequence[str] = ()) -> Path:
    """A venv at target with the wheel installed (no dependencies: with system_site they
    come from this Python; else extra lists what to install with uv). Its site-packages."""
    if not (target / "bin" / "python").exists():
        options = ["--system-site-packages"] if system_site else []
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", *options, str(target)],
                       check=True)  # fmt: skip
        uv = [sys.executable, "-m", "uv", "pip", "install", "--quiet"]
        uv += ["--python", str(target / "bin" / "python")]
        subprocess.run([*uv, "--no-deps", str(wheel)], check=True, env=clean_env())
        if extra:
            subprocess.run([*uv, *extra], check=True, env=clean_env())
    code = "import portal_env, os; print(os.path.dirname(os.path.dirname(portal_env.__file__)))"
    python = str(target / "bin" / "python")
    site = subprocess.check_output(  # not from the checkout: its cwd would come first
        [python, "-c", code], text=True, env=clean_env(), cwd=target
    ).strip()
    if not site.startswith(str(target)):
        raise RuntimeError(f"the venv at {target} imports portal_env from {site}, not its own")
    return Path(site)


def clean_env(**changes: str) -> Dict[str, str]:
    """Our environment without PYTHONPATH (a worktree's portal_env must not shadow the
    wheel's), plus changes."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(changes)
    return env


def read_only(site: Path, offline: bool = False) -> List[str]:
    """A command prefix that runs a command with site (site-packages) read-only, and with
    no network when offline; the command fails at once if site can still be written."""
    package = site / "portal_env"
    subprocess.run(["chmod", "-R", "a-w", str(package)], check=True)
    if os.geteuid() != 0:
        return ["unshare", "--net"] if offline else []
    unshare = ["unshare", "--mount"] + (["--net"] if offline else [])
    return [*unshare, "sh", "-c", _READ_ONLY, "read-only", str(site)]
