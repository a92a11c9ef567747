"""A local `file://` conda channel of real packages, made at test time (no conda-forge here).

- `python`: symlinks to this machine's interpreter (or to a given one, e.g.
  `/usr/bin/python3.11`, which is also in the Docker tests' bookworm base image)
  plus a `pyvenv.cfg` at the prefix root, which makes the prefix's `bin/python`
  an isolated interpreter whose `sys.prefix` is the prefix (the way a venv works).
- noarch python packages repackaged from real pure-Python wheels
  (`cloudpickle`, `typing-extensions`, `farama-notifications`, `pip`).
- `portal-test-activate`: a noarch generic package with an `etc/conda/activate.d`
  script (it exports a variable, the install prefix through a prefix placeholder,
  and prepends its own `bin/` to PATH) and a tool in that `bin/`, to check that
  activation and prefix rewriting reach the server.
- a `python` package for `osx-arm64` too (never installed here), for two-platform locks.

Each package holds what conda-build writes: `info/index.json` (arch/platform null
for noarch), `info/paths.json` (paths_version 1; every entry with `_path`,
`path_type`, `sha256`, `size_in_bytes`, a softlink's of its target as conda-build
hashes it; `prefix_placeholder` and `file_mode` where a file holds the
placeholder), `info/files`, `info/has_prefix`, and `info/link.json` for noarch.
micromamba checks these fields; py-rattler is more lenient.

Indexed with py-rattler's `index_fs`. Used by tests/test_conda.py, test_export.py
and benchmarks/conda_runtime.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

WHEELS = (
    "cloudpickle==3.1.1",
    "typing-extensions==4.12.2",
    "farama-notifications==0.0.4",
    "pip==24.2",  # `micromamba create -f LOCK` installs a lock's pip entries with it
)
TIMESTAMP = 1_700_000_000_000  # ms; fixed, so the channel (and every lock of it) is stable
ACTIVATE_VAR = "PORTAL_TEST_ACTIVATED"
PREFIX_VAR = "PORTAL_TEST_INSTALLED_AT"  # the install prefix, written by prefix rewriting
TOOL = "portal-test-tool"  # on PATH only when the activation's PATH change is applied
PLACEHOLDER = "/opt/anaconda1anaconda2anaconda3"  # conda-build's classic prefix placeholder
OTHER_PLATFORM = "osx-arm64"
_ARCH = {"64": "x86_64", "32": "x86", "aarch64": "aarch64", "arm64": "arm64", "ppc64le": "ppc64le"}
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# contents, or ("symlink", target), or ("exec", contents) for an executable file
File = Union[bytes, Tuple[str, Union[str, bytes]]]


def subdir() -> str:
    """This machine's conda platform, e.g. linux-64."""
    import rattler

    return str(rattler.Subdir.current())


def build_channel(
    root: Path, python: Optional[Union[str, Path]] = None, more_wheels: Optional[Path] = None
) -> Path:
    """Make (once) and index the channel under root; returns the channel directory.

    python: an interpreter for the `python` package to point at instead of this one
    (its version is asked from it); that channel is root/channel-<version>-<hash of path>.
    more_wheels: a directory of wheels for that Python (e.g. numpy, gymnasium, msgpack)
    made conda packages too: noarch for pure ones, this platform's for binary ones. With
    them a lock needs no pip section, so a prefix installs with no package index at all.
    """
    interpreter = _interpreter(python)
    extra = sorted(Path(more_wheels).glob("*.whl")) if more_wheels is not None else []
    channel = root / "channel"
    if python is not None or extra:
        key = str(interpreter.path) + "".join(f"\0{wheel.name}" for wheel in extra)
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        channel = root / f"channel-{interpreter.version}-{digest}"
    if (channel / "noarch" / "repodata.json").is_file():
        return channel
    wheels = root / "wheels"
    _download_wheels(wheels)
    platform = subdir()
    for name in (platform, OTHER_PLATFORM, "noarch"):
        (channel / name).mkdir(parents=True, exist_ok=True)
    _write_python(channel / platform, platform, interpreter)
    if OTHER_PLATFORM != platform:
        _write_python(channel / OTHER_PLATFORM, OTHER_PLATFORM, interpreter)
    for wheel in sorted(wheels.glob("*.whl")):
        _write_noarch_from_wheel(channel / "noarch", wheel)
    short = ".".join(interpreter.version.split(".")[:2])
    for wheel in extra:
        if wheel.name.endswith("-none-any.whl"):
            _write_noarch_from_wheel(channel / "noarch", wheel)
        else:
            _write_binary_from_wheel(channel / platform, platform, wheel, short)
    _write_activate_package(channel / "noarch")
    import asyncio

    import rattler.index

    asyncio.run(rattler.index.index_fs(channel))
    return channel


def _download_wheels(target: Path) -> None:
    if target.is_dir() and len(list(target.glob("*.whl"))) == len(WHEELS):
        return
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    command += ["--only-binary=:all:", "-d", str(target), *WHEELS]
    subprocess.run(command, check=True, capture_output=True)


class Interpreter(NamedTuple):
    path: Path  # the real executable (symlinks resolved; a venv's base interpreter)
    version: str  # e.g. 3.11.2


def _interpreter(python: Optional[Union[str, Path]]) -> Interpreter:
    if python is None:
        return Interpreter(Path(sys.executable).resolve(), "{}.{}.{}".format(*sys.version_info))
    # Asked from the interpreter itself: a venv's python must point at its base, and
    # `home` in pyvenv.cfg must be the directory of the real binary, which the stdlib
    # is found from (lib/pythonX.Y next to its bin/).
    script = (
        "import os, sys; print(os.path.realpath(getattr(sys, '_base_executable', '')"
        " or sys.executable)); print('%d.%d.%d' % sys.version_info[:3])"
    )
    try:
        done = subprocess.run([str(python), "-c", script], capture_output=True, text=True)
    except OSError as error:
        raise ValueError(f"cannot run the interpreter {python} for the channel: {error}") from None
    lines = done.stdout.split()
    if done.returncode != 0 or len(lines) != 2:
        raise ValueError(f"interpreter {python} did not report its path and version: {done.stderr}")
    return Interpreter(Path(lines[0]), lines[1])


def _write_python(target: Path, platform: str, interpreter: Interpreter) -> None:
    version = interpreter.version
    short = ".".join(version.split(".")[:2])
    host = interpreter.path
    files: Dict[str, File] = {
        f"bin/python{short}": ("symlink", str(host)),
        "bin/python3": ("symlink", f"python{short}"),
        "bin/python": ("symlink", f"python{short}"),
        "pyvenv.cfg": (
            f"home = {host.parent}\ninclude-system-site-packages = false\nversion = {version}\n"
        ).encode(),
        f"lib/python{short}/site-packages/README.portal-test": b"site-packages of a test prefix\n",
    }
    index = {"name": "python", "version": version, "build": "0_portal_test", "build_number": 0}
    index.update(depends=[], subdir=platform, license="PSF-2.0", timestamp=TIMESTAMP)
    os_name, _, arch = platform.partition("-")
    index.update(arch=_ARCH.get(arch, arch), platform=os_name)
    _write_package(target / f"python-{version}-0_portal_test.tar.bz2", index, files)


def _write_noarch_from_wheel(target: Path, wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        files: Dict[str, File] = {
            f"site-packages/{info.filename}": zf.read(info)
            for info in zf.infolist()
            if not info.is_dir()
        }
    name, version = wheel.name.split("-")[:2]
    name = name.lower().replace("_", "-")
    index = {"name": name, "version": version, "build": "py_0", "build_number": 0}
    index.update(depends=["python >=3.8"], noarch="python", subdir="noarch")
    index.update(license="unknown", timestamp=TIMESTAMP, arch=None, platform=None)
    link = {"noarch": {"type": "python"}, "package_metadata_version": 1}
    _write_package(target / f"{name}-{version}-py_0.tar.bz2", index, files, link)


def _write_binary_from_wheel(target: Path, platform: str, wheel: Path, short: str) -> None:
    """A platform package of a binary wheel (e.g. numpy for cp311): its files under
    lib/pythonX.Y/site-packages, depending on that Python."""
    with zipfile.ZipFile(wheel) as zf:
        files: Dict[str, File] = {
            f"lib/python{short}/site-packages/{info.filename}": (
                ("exec", zf.read(info)) if (info.external_attr >> 16) & 0o111 else zf.read(info)
            )
            for info in zf.infolist()
            if not info.is_dir()
        }
    name, version = wheel.name.split("-")[:2]
    name = name.lower().replace("_", "-")
    build = f"py{short.replace('.', '')}_0"
    index = {"name": name, "version": version, "build": build, "build_number": 0}
    os_name, _, arch = platform.partition("-")
    index.update(depends=[f"python {short}.*"], subdir=platform, license="unknown")
    index.update(timestamp=TIMESTAMP, arch=_ARCH.get(arch, arch), platform=os_name)
    _write_package(target / f"{name}-{version}-{build}.tar.bz2", index, files)


def _write_activate_package(target: Path) -> None:
    script = (
        f'export {ACTIVATE_VAR}=yes-from-$(basename "$CONDA_PREFIX")\n'
        f"export {PREFIX_VAR}={PLACEHOLDER}\n"
        'export PATH="$CONDA_PREFIX/opt/portal-test/bin:$PATH"\n'
    )
    tool = f'#!/bin/sh\necho "{TOOL} of {PLACEHOLDER}"\n'
    files: Dict[str, File] = {
        "etc/conda/activate.d/portal-test.sh": script.encode(),
        f"opt/portal-test/bin/{TOOL}": ("exec", tool.encode()),
    }
    index = {"name": "portal-test-activate", "version": "1.0", "build": "0", "build_number": 0}
    index.update(depends=[], noarch="generic", subdir="noarch", timestamp=TIMESTAMP)
    index.update(license="MIT", arch=None, platform=None)
    link = {"noarch": {"type": "generic"}, "package_metadata_version": 1}
    _write_package(target / "portal-test-activate-1.0-0.tar.bz2", index, files, link)


def _path_entry(files: Dict[str, File], name: str) -> dict:
    """A paths.json entry as conda-build writes it: a softlink gets its target's sha256
    and size (the empty file's when the target is not on this machine)."""
    content = files[name]
    if isinstance(content, tuple) and content[0] == "symlink":
        data = _link_target(files, name)
        return {
            "_path": name,
            "path_type": "softlink",
            "sha256": hashlib.sha256(data).hexdigest() if data is not None else _EMPTY_SHA256,
            "size_in_bytes": len(data) if data is not None else 0,
        }
    data = content[1] if isinstance(content, tuple) else content
    assert isinstance(data, bytes)
    entry = {"_path": name, "path_type": "hardlink", "sha256": hashlib.sha256(data).hexdigest()}
    entry["size_in_bytes"] = len(data)
    if PLACEHOLDER.encode() in data:
        entry.update(prefix_placeholder=PLACEHOLDER, file_mode="text")
    return entry


def _link_target(files: Dict[str, File], name: str, depth: int = 0) -> Optional[bytes]:
    """The bytes a symlink of the package resolves to (in the package or on this host)."""
    content = files.get(name)
    if not isinstance(content, tuple) or content[0] != "symlink":
        data = content[1] if isinstance(content, tuple) else content
        return data if isinstance(data, bytes) else None
    link = str(content[1])
    if link.startswith("/"):
        return Path(link).read_bytes() if Path(link).is_file() else None
    if depth > 8:
        return None
    inside = os.path.normpath(os.path.join(os.path.dirname(name), link))
    return _link_target(files, inside, depth + 1)


def _write_package(
    path: Path, index: dict, files: Dict[str, File], link: Optional[dict] = None
) -> None:
    paths: List[dict] = [_path_entry(files, name) for name in sorted(files)]
    has_prefix = [f"{PLACEHOLDER} text {p['_path']}\n" for p in paths if "prefix_placeholder" in p]
    info: Dict[str, File] = {
        "info/index.json": json.dumps(index, indent=2, sort_keys=True).encode(),
        "info/paths.json": json.dumps(
            {"paths": paths, "paths_version": 1}, indent=2, sort_keys=True
        ).encode(),
        "info/files": "".join(f"{name}\n" for name in sorted(files)).encode(),
    }
    if has_prefix:
        info["info/has_prefix"] = "".join(has_prefix).encode()
    if link is not None:
        info["info/link.json"] = json.dumps(link, indent=2, sort_keys=True).encode()
    with tarfile.open(path, "w:bz2") as tar:
        for name, content in sorted({**info, **files}.items()):
            _add(tar, name, content)
    os.utime(path, (TIMESTAMP / 1000, TIMESTAMP / 1000))


def _add(tar: tarfile.TarFile, name: str, content: File) -> None:
    member = tarfile.TarInfo(name)
    member.mtime = TIMESTAMP // 1000
    if isinstance(content, tuple) and content[0] == "symlink":
        member.type, member.linkname, member.mode = tarfile.SYMTYPE, str(content[1]), 0o777
        tar.addfile(member)
    else:
        data = content[1] if isinstance(content, tuple) else content
        assert isinstance(data, bytes)
        member.size = len(data)
        member.mode = 0o755 if isinstance(content, tuple) else 0o644
        tar.addfile(member, io.BytesIO(data))


def write_spec(
    env_dir: Path,
    channel: Path,
    conda=("cloudpickle",),
    pip=("gymnasium",),
    python: str = "{}.{}".format(*sys.version_info[:2]),
) -> Path:
    """A spec.yml in env_dir: python plus conda packages of channel, and a pip section."""
    lines = ["channels:", f"  - {channel.as_uri()}", "dependencies:", f"  - python={python}"]
    lines += [f"  - {dep}" for dep in conda] + ["  - pip:"] + [f"      - {dep}" for dep in pip]
    (env_dir / "spec.yml").write_text("\n".join(lines) + "\n")
    return env_dir / "spec.yml"


def locked_cartpole(env_dir: Path, channel: Path, **spec: object) -> Path:
    """env_dir made a CartPole env (the example's env_main.py) with a spec of channel,
    conda-locked by the tool (`portal-env lock -b mm`)."""
    env_dir.mkdir(parents=True)
    example = Path(__file__).resolve().parent.parent / "examples" / "cartpole_env"
    (env_dir / "env_main.py").write_bytes((example / "env_main.py").read_bytes())
    write_spec(env_dir, channel, **spec)
    command = [
        sys.executable,
        "-m",
        "portal_env.cli",
        "lock",
        "mycart",
        "-p",
        str(env_dir),
        "-b",
        "mm",
    ]
    done = subprocess.run(command + ["-b", "mm"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"locking {env_dir} failed:\n{done.stderr}")
    return env_dir
