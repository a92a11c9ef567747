"""`portal_env.runtimes.export`: a locked conda prefix staged for /opt/portal-env, as an image.

Uses the local file:// channel of tests/conda_channel.py (its `python` wraps
this machine's interpreter); pip packages come from PyPI. tests/test_docker.py
loads an exported archive into dockerd and serves from it.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Dict

import pytest

from portal_env.errors import BuildError, CatalogError, LockError
from portal_env.runtimes import LogReporter, catalog, export, oci

from .conda_channel import ACTIVATE_VAR, PREFIX_VAR, build_channel, locked_cartpole

pytestmark = pytest.mark.conda

ROOT = Path(__file__).resolve().parent.parent
PY = "{}.{}".format(*sys.version_info[:2])
LOCK = "spec.conda-lock.yml"


@pytest.fixture(scope="module")
def locked_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CartPole's env_main.py with a spec of the local channel, locked once."""
    channel = build_channel(tmp_path_factory.mktemp("export-channel"))
    env_dir = tmp_path_factory.mktemp("export-env") / "cartpole"
    return locked_cartpole(env_dir, channel, conda=("cloudpickle", "portal-test-activate"))


@pytest.fixture
def env_dir(locked_env: Path, tmp_path: Path) -> Path:
    target = tmp_path / "cartpole"
    shutil.copytree(locked_env, target)
    (target / "__pycache__").mkdir()
    (target / "__pycache__" / "junk.pyc").write_bytes(b"x")
    return target


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("ID=portal-test\n")
    return root


def test_stage_prefix_installs_for_the_image_path(env_dir: Path, tmp_path: Path):
    staging = tmp_path / "stage" / "env"
    source = catalog.find("mycart", env_dir)
    activation = export.stage_prefix(source, env_dir / LOCK, staging, LogReporter())
    # made for the image's path: the placeholder and the PATH change name PREFIX, not staging
    assert activation.variables == {ACTIVATE_VAR: "yes-from-env", PREFIX_VAR: export.PREFIX}
    assert activation.path == f"{export.PREFIX}/opt/portal-test/bin:{export.PREFIX}/bin:${{PATH}}"

    code = "import sys, cloudpickle, gymnasium, numpy; print(sys.prefix)"
    out = subprocess.check_output([str(staging / "bin" / "python"), "-c", code], text=True)
    assert out.strip() == str(staging)  # the staged interpreter runs here

    staged, scripts = str(staging).encode(), []
    for path in staging.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.suffix != ".pyc":
            data = path.read_bytes()
            assert staged not in data, f"{path} names the staging directory"
            if path.parent == staging / "bin" and data.startswith(b"#!"):
                scripts.append(data.split(b"\n", 1)[0])
    assert scripts and all(line == f"#!{export.PREFIX}/bin/python".encode() for line in scripts)


def test_rewrite_shebangs_replaces_files_and_keeps_modes(tmp_path: Path):
    bin_dir = tmp_path / "stage" / "bin"
    bin_dir.mkdir(parents=True)
    old = str(tmp_path / "stage")
    script = bin_dir / "tool"
    script.write_text(f"#!{old}/bin/python\nprint('{old}/bin/python')\n")
    script.chmod(0o751)
    cache_copy = tmp_path / "cache-copy"
    os.link(script, cache_copy)  # as if hardlinked from the package cache
    trampoline = bin_dir / "long"
    trampoline.write_text(f"#!/bin/sh\n'''exec' '{old}/bin/python' \"$0\" \"$@\"\n' '''\nx=1\n")
    (bin_dir / "data").write_text(f"{old}/bin/python\n")
    changed = export.rewrite_shebangs(bin_dir, old, "/opt/p")
    assert changed == [trampoline, script]
    assert script.read_text() == f"#!/opt/p/bin/python\nprint('{old}/bin/python')\n"
    assert (script.stat().st_mode & 0o777) == 0o751
    assert cache_copy.read_text().startswith(f"#!{old}/")  # the cache's file is untouched
    assert "'/opt/p/bin/python'" in trampoline.read_text()
    assert (bin_dir / "data").read_text() == f"{old}/bin/python\n"


def layer_files(archive: Path) -> Dict[str, tarfile.TarInfo]:
    """Every path in the archive's image layers (later layers win)."""
    files: Dict[str, tarfile.TarInfo] = {}
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())[0]
        for name in manifest["Layers"]:
            data = gzip.decompress(tar.extractfile(name).read())
            with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                files.update({m.name: m for m in layer})
    return files


def test_export_image_writes_the_prefix_lib_and_app(env_dir: Path, rootfs: Path, tmp_path: Path):
    source = catalog.find("mycart", env_dir)
    tag = export.image_tag(source, rootfs, reporter=LogReporter())
    out = tmp_path / "out" / "image.tar"
    result = export.export_image(source, out, rootfs, reporter=LogReporter())
    assert result.path == out and result.tag == tag and tag.startswith("portal-env/mycart:")
    assert result.size == out.stat().st_size and list(out.parent.iterdir()) == [out]
    files = layer_files(out)
    for path in (
        "opt/portal-env/env/bin/python",
        "opt/portal-env/lib/portal_env/__init__.py",
        "opt/portal-env/app/env_main.py",
        f"opt/portal-env/app/{LOCK}",
        "opt/portal-env/app/spec.yml",
        "etc/os-release",
    ):
        assert path in files, path
    assert not any("__pycache__" in name for name in files)
    assert not any("/builtin/" in name for name in files if name.startswith("opt/portal-env/lib"))

    archive = oci.read_archive(out)
    assert archive["index"]["manifests"][0]["digest"] == result.digest
    config = archive["config"]["config"]
    assert config["Cmd"] == [f"{export.PREFIX}/bin/python", f"{export.APP}/env_main.py"]
    assert config["WorkingDir"] == export.APP
    env = dict(item.split("=", 1) for item in config["Env"])
    tool_bin = f"{export.PREFIX}/opt/portal-test/bin"  # the activation script's PATH change
    assert env["PATH"].startswith(f"{tool_bin}:{export.PREFIX}/bin:/usr/local/sbin")
    assert env["PYTHONPATH"] == export.LIB and env["CONDA_PREFIX"] == export.PREFIX
    assert env["PYTHONUNBUFFERED"] == env["PYTHONNOUSERSITE"] == "1"
    assert env[ACTIVATE_VAR] == "yes-from-env"
    labels = config["Labels"]
    assert labels[export.ENV_LABEL] == "mycart" and labels[export.INPUTS_LABEL][:12] in tag
    assert list((Path(os.environ["PORTAL_ENV_CACHE_DIR"]) / "export-tmp").iterdir()) == []

    # the tag follows the inputs: an edited env file gives another tag
    (env_dir / "env_main.py").write_text((env_dir / "env_main.py").read_text() + "# edit\n")
    assert export.image_tag(source, rootfs, reporter=LogReporter()) != tag


def test_a_stale_lock_is_refused_with_the_relock_command(env_dir: Path, rootfs: Path, tmp_path):
    with open(env_dir / "spec.yml", "a") as f:
        f.write("# edited\n")
    source = catalog.find("mycart", env_dir)
    with pytest.raises(LockError, match=r"portal-env lock mycart -p .* -b mm"):
        export.export_image(source, tmp_path / "image.tar", rootfs, reporter=LogReporter())
    assert not (tmp_path / "image.tar").exists()


def test_missing_spec_and_bad_base_are_named(env_dir: Path, tmp_path: Path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(env_dir / "env_main.py", bare)
    with pytest.raises(CatalogError, match="has no spec.yml"):
        export.export_image(
            catalog.find("bare", bare), tmp_path / "x.tar", bare, reporter=LogReporter()
        )
    missing = tmp_path / "no-such-base.tar"
    source = catalog.find("mycart", env_dir)
    with pytest.raises(BuildError, match=r"no-such-base\.tar.*root filesystem directory"):
        export.export_image(source, tmp_path / "x.tar", missing, reporter=LogReporter())
    with pytest.raises(BuildError, match=r"no-such-base\.tar.*root filesystem directory"):
        export.image_tag(source, missing, reporter=LogReporter())
    assert not (tmp_path / "x.tar").exists()


def test_ctrl_c_while_staging_leaves_no_staging_or_archive(env_dir: Path, rootfs: Path, tmp_path):
    started, out, cache = tmp_path / "started", tmp_path / "image.tar", tmp_path / "cache"
    (env_dir / "env_setup.py").write_text(
        f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\ntime.sleep(60)\n"
    )
    code = (
        "import sys\nfrom portal_env.runtimes import LogReporter, catalog, export\n"
        "try:\n    export.export_image(catalog.find('mycart', sys.argv[1]), "
        "sys.argv[2], sys.argv[3], reporter=LogReporter())\nexcept KeyboardInterrupt:\n"
        "    sys.exit(130)\n"
    )
    env = dict(os.environ, PORTAL_ENV_CACHE_DIR=str(cache))
    command = [sys.executable, "-c", code, str(env_dir), str(out), str(rootfs)]
    proc = subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists() and list((cache / "export-tmp").iterdir())  # staging now
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert list((cache / "export-tmp").iterdir()) == [] and not out.exists()


def test_bytecode_stays_valid_for_the_images_fixed_mtimes(tmp_path: Path):
    """Layers give every file mtime oci.MTIME; a .pyc checked by timestamp must say so too,
    or Python recompiles it in every new container. A stale .pyc is left stale."""
    import py_compile

    package = tmp_path / "prefix" / "lib" / "pkg"
    package.mkdir(parents=True)
    fresh, stale = package / "fresh.py", package / "stale.py"
    fresh.write_text("X = 1\n")
    stale.write_text("Y = 1\n")
    for source in (fresh, stale):
        py_compile.compile(str(source), doraise=True)
    stale.write_text("Y = 22\n")  # changed after compiling: its .pyc no longer matches
    assert export.align_bytecode(tmp_path / "prefix", oci.MTIME) == 1

    layer = oci.layer_from_dir(tmp_path / "prefix", "/p", tmp_path / "blobs")
    out = tmp_path / "unpacked"
    with tarfile.open(layer.path) as tar:
        tar.extractall(out)
    for name, valid in (("fresh", True), ("stale", False)):
        source = out / "p" / "lib" / "pkg" / f"{name}.py"
        (pyc,) = (source.parent / "__pycache__").glob(f"{name}.*.pyc")
        header = pyc.read_bytes()[:16]
        stamp, size = int.from_bytes(header[8:12], "little"), int.from_bytes(header[12:], "little")
        assert source.stat().st_mtime == oci.MTIME
        assert (stamp == oci.MTIME and size == source.stat().st_size) is valid
