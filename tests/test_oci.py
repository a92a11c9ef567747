"""OCI image archives written without a daemon (portal_env/oci.py).

Most tests need no daemon: they reopen the archive and recompute every digest.
The `docker` tests load an archive into the local dockerd and run it, and read
a real `docker save` archive back as a base.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Dict, List

import pytest

from portal_env.errors import BuildError
from portal_env.runtimes import oci

from . import dockerhost

ROOT = Path(__file__).resolve().parent.parent
TAG = "portal-env-oci-try:test"


def make_rootfs(root: Path) -> Path:
    """A tiny root filesystem: dirs, a script, a private file, a symlink, a hardlink."""
    (root / "etc").mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "etc" / "os-release").write_text("ID=portal-test\n")
    (root / "etc" / "secret").write_text("s\n")
    (root / "etc" / "secret").chmod(0o600)
    (root / "bin" / "hello").write_text("#!/bin/sh\necho hello\n")
    (root / "bin" / "hello").chmod(0o755)
    (root / "bin" / "hi").symlink_to("hello")
    os.link(root / "etc" / "os-release", root / "etc" / "os-release.link")
    return root


def make_app(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "data.txt").write_text("data\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "x.pyc").write_bytes(b"junk")
    (root / "run.sh").write_text("#!/bin/sh\ncat /opt/t/app/sub/data.txt\n")
    (root / "run.sh").chmod(0o755)
    return root


def build(tmp: Path, out: Path, config=None) -> str:
    """An archive of the rootfs plus an app layer and a single-file layer."""
    blobs, rootfs, app = tmp / "blobs", tmp / "rootfs", tmp / "app"
    base = oci.read_base(rootfs if rootfs.exists() else make_rootfs(rootfs), blobs)
    app = app if app.exists() else make_app(app)
    layers = [
        oci.layer_from_dir(app, "/opt/t/app", blobs, skip=("__pycache__",)),
        oci.layer_from_sources([(app / "sub" / "data.txt", "/etc/data")], blobs),
    ]
    settings = config or {"Cmd": ["/bin/hello"], "Env": ["PATH=/bin"], "Labels": {"a": "b"}}
    return oci.write_archive(out, base, layers, settings, TAG)


def blobs_of(path: Path) -> Dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_members(blob: bytes) -> Dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        return {m.name: m for m in tar}


def test_archive_is_an_oci_layout_and_a_docker_archive(tmp_path: Path):
    out = tmp_path / "image.tar"
    digest = build(tmp_path, out)
    files = blobs_of(out)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    (entry,) = index["manifests"]
    assert entry["digest"] == digest and entry["annotations"][oci.REF_NAME] == TAG
    manifest_bytes = files[f"blobs/sha256/{digest.split(':')[1]}"]
    assert sha(manifest_bytes) == digest and entry["size"] == len(manifest_bytes)
    manifest = json.loads(manifest_bytes)
    config_bytes = files[f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}"]
    assert sha(config_bytes) == manifest["config"]["digest"]
    config = json.loads(config_bytes)
    (docker,) = json.loads(files["manifest.json"])
    assert docker["RepoTags"] == [TAG]
    assert docker["Config"] == "blobs/sha256/" + manifest["config"]["digest"].split(":")[1]
    layer_names = ["blobs/sha256/" + d["digest"].split(":")[1] for d in manifest["layers"]]
    assert docker["Layers"] == layer_names and len(layer_names) == 3
    diff_ids = []
    for descriptor, name in zip(manifest["layers"], layer_names):
        blob = files[name]
        assert sha(blob) == descriptor["digest"] and len(blob) == descriptor["size"]
        assert descriptor["mediaType"] == oci.LAYER_GZIP
        diff_ids.append(sha(gzip.decompress(blob)))
    assert config["rootfs"] == {"type": "layers", "diff_ids": diff_ids}
    assert config["architecture"] == oci.host_arch() and config["os"] == "linux"
    assert config["config"] == {"Cmd": ["/bin/hello"], "Env": ["PATH=/bin"], "Labels": {"a": "b"}}
    assert len(config["history"]) == 3

    base, app, single = (layer_members(files[n]) for n in layer_names)
    assert base["etc/secret"].mode == 0o600 and base["bin/hello"].mode == 0o755
    assert base["bin/hi"].issym() and base["bin/hi"].linkname == "hello"
    assert base["etc/os-release.link"].islnk() or base["etc/os-release"].islnk()
    assert list(app) == [
        "opt",
        "opt/t",
        "opt/t/app",
        "opt/t/app/run.sh",
        "opt/t/app/sub",
        "opt/t/app/sub/data.txt",
    ]
    assert list(single) == ["etc", "etc/data"]
    for member in [*base.values(), *app.values(), *single.values()]:
        assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
        assert member.mtime == oci.MTIME
    assert app["opt/t/app/run.sh"].mode == 0o755


def test_same_inputs_give_the_same_bytes(tmp_path: Path):
    first, second = tmp_path / "one" / "a.tar", tmp_path / "two" / "a.tar"
    build(tmp_path / "one", first)
    build(tmp_path / "two", second)
    os.utime(tmp_path / "two" / "app" / "run.sh", (1, 1))  # mtimes do not count
    again = tmp_path / "two" / "b.tar"
    build(tmp_path / "two", again)
    assert first.read_bytes() == second.read_bytes() == again.read_bytes()
    (tmp_path / "two" / "app" / "run.sh").chmod(0o700)  # modes do
    build(tmp_path / "two", again)
    assert again.read_bytes() != first.read_bytes()


def test_sources_diff_id_matches_the_written_layer(tmp_path: Path):
    app = make_app(tmp_path / "app")
    layer = oci.layer_from_dir(app, "/x", tmp_path / "blobs")
    assert oci.sources_diff_id([(app, "/x")]) == layer.diff_id
    assert sha(gzip.decompress(layer.path.read_bytes())) == layer.diff_id
    assert sha(layer.path.read_bytes()) == layer.digest


class Breaks(io.RawIOBase):
    """A tar stream that fails (like Ctrl-C) after some of its bytes."""

    def __init__(self, data: bytes, error: BaseException) -> None:
        self.data, self.error, self.given = data, error, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.given >= len(self.data) // 2:
            raise self.error
        chunk = self.data[self.given : self.given + min(len(buffer), 4096)]
        buffer[: len(chunk)] = chunk
        self.given += len(chunk)
        return len(chunk)


def test_an_interrupted_layer_leaves_no_blob(tmp_path: Path):
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as t:
        t.add(make_app(tmp_path / "app"), "app")
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    with pytest.raises(KeyboardInterrupt):
        oci.layer_from_tar(Breaks(tar.getvalue(), KeyboardInterrupt()), blobs)
    with pytest.raises(OSError):
        oci.layer_from_tar(Breaks(tar.getvalue(), OSError("disk gone")), blobs)
    assert list(blobs.iterdir()) == []


def test_a_failed_write_leaves_no_archive_or_temporary(tmp_path: Path):
    blobs = tmp_path / "blobs"
    base = oci.read_base(make_rootfs(tmp_path / "rootfs"), blobs)
    good = oci.layer_from_dir(make_app(tmp_path / "app"), "/app", blobs)
    gone = oci.Layer(tmp_path / "missing-blob", "sha256:" + "0" * 64, "sha256:" + "1" * 64, 5)
    out = tmp_path / "out" / "image.tar"
    with pytest.raises(FileNotFoundError):
        oci.write_archive(out, base, [good, gone], {}, TAG)
    assert list(out.parent.iterdir()) == []


def test_ctrl_c_during_the_write_leaves_no_archive_or_temporary(tmp_path: Path):
    """A real SIGINT while the archive is half written (blocked reading a FIFO 'blob')."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    out_dir = tmp_path / "out"
    code = (
        "import sys; from pathlib import Path; from portal_env.runtimes import oci\n"
        "tmp = Path(sys.argv[1]); blobs = tmp / 'blobs'\n"
        "base = oci.read_base(tmp / 'rootfs', blobs)\n"
        "stuck = oci.Layer(tmp / 'fifo', 'sha256:' + '0' * 64, 'sha256:' + '1' * 64, 9)\n"
        "oci.write_archive(tmp / 'out' / 'image.tar', base, [stuck], {}, 'x:y')\n"
    )
    make_rootfs(tmp_path / "rootfs")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while not (out_dir.is_dir() and list(out_dir.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(out_dir.iterdir()), "the write never started"
        time.sleep(0.2)  # now blocked opening the FIFO, with the temporary half written
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "KeyboardInterrupt" in err
    assert list(out_dir.iterdir()) == []


def test_read_base_accepts_dirs_tarballs_and_oci_archives(tmp_path: Path):
    rootfs = make_rootfs(tmp_path / "rootfs")
    from_dir = oci.read_base(rootfs, tmp_path / "b1")
    assert len(from_dir.layers) == 1 and from_dir.config == {}
    plain, packed = tmp_path / "rootfs.tar", tmp_path / "rootfs.tar.gz"
    for path, mode in ((plain, "w"), (packed, "w:gz")):
        with tarfile.open(path, mode) as tar:
            tar.add(rootfs, ".")
    from_tar = oci.read_base(plain, tmp_path / "b2")
    from_gz = oci.read_base(packed, tmp_path / "b3")
    assert from_tar.layers[0].diff_id == from_gz.layers[0].diff_id == sha(plain.read_bytes())
    assert layer_members(from_gz.layers[0].path.read_bytes())["./bin/hi"].issym()

    archive = tmp_path / "image.tar"
    build(tmp_path, archive, {"Cmd": ["/bin/hello"], "Env": ["A=1"], "WorkingDir": "/etc"})
    from_oci = oci.read_base(archive, tmp_path / "b4")
    written = oci.read_archive(archive)["config"]
    assert [layer.diff_id for layer in from_oci.layers] == written["rootfs"]["diff_ids"]
    assert from_oci.config == {"Cmd": ["/bin/hello"], "Env": ["A=1"], "WorkingDir": "/etc"}
    assert len(from_oci.history) == 3
    for path, base in (
        (rootfs, from_dir),
        (plain, from_tar),
        (packed, from_gz),
        (archive, from_oci),
    ):
        assert oci.base_diff_ids(path) == [layer.diff_id for layer in base.layers]

    # an archive of this module as a base again: the same layers, one more on top
    again = tmp_path / "again.tar"
    extra = oci.layer_from_dir(make_app(tmp_path / "app2"), "/more", tmp_path / "b4")
    oci.write_archive(again, from_oci, [extra], {"Entrypoint": None}, TAG)
    config = oci.read_archive(again)["config"]
    assert config["rootfs"]["diff_ids"] == written["rootfs"]["diff_ids"] + [extra.diff_id]
    assert config["config"]["WorkingDir"] == "/etc" and len(config["history"]) == 4


@pytest.mark.parametrize("kind", ["missing", "not-a-tar", "empty", "truncated", "bad-manifest"])
def test_bad_bases_are_named_with_what_is_accepted(tmp_path: Path, kind: str):
    path = tmp_path / "base.tar"
    if kind == "not-a-tar":
        path.write_bytes(b"this is not an archive" * 100)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        with tarfile.open(path, "w:gz") as tar:
            tar.add(make_rootfs(tmp_path / "rootfs"), ".")
            tar.addfile(tarfile.TarInfo("big"), io.BytesIO(os.urandom(1 << 16)))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "bad-manifest":
        with tarfile.open(path, "w") as tar:
            data = b'[{"Layers": []}]'
            info = tarfile.TarInfo("manifest.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(BuildError, match="root filesystem directory") as caught:
        oci.read_base(path, tmp_path / "blobs")
    assert str(path) in str(caught.value)


# -- against dockerd -------------------------------------------------------------------


@pytest.fixture
def loaded_tags():
    """Tags the test loads; removed afterwards."""
    tags: List[str] = []
    yield tags
    client = dockerhost.client()
    for tag in tags:
        try:
            client.images.remove(tag, force=True)
        except Exception:
            pass


@pytest.mark.docker
def test_docker_loads_and_runs_the_archive_and_its_save_reads_back(tmp_path: Path, loaded_tags):
    client = dockerhost.client()
    blobs = tmp_path / "blobs"
    base = oci.read_base(dockerhost.rootfs_tar(), blobs)
    app = make_app(tmp_path / "app")
    layer = oci.layer_from_dir(app, "/opt/t/app", blobs, skip=("__pycache__",))
    out = tmp_path / "image.tar"
    oci.write_archive(out, base, [layer], {"Cmd": ["/opt/t/app/run.sh"], "Env": ["A=1"]}, TAG)
    loaded_tags.append(TAG)
    with open(out, "rb") as archive:
        (image,) = client.images.load(archive)
    assert TAG in image.tags
    assert image.attrs["RootFS"]["Layers"] == [base.layers[0].diff_id, layer.diff_id]
    assert client.containers.run(TAG, remove=True) == b"data\n"  # the image's own Cmd
    script = "ls -l /opt/t/app/run.sh; test ! -e /opt/t/app/__pycache__ && echo $A"
    output = client.containers.run(TAG, ["/bin/sh", "-c", script], remove=True).decode()
    assert output.startswith("-rwxr-xr-x 1 root root") and output.endswith("1\n")

    saved = tmp_path / "saved.tar"
    with open(saved, "wb") as file:
        for chunk in image.save(named=True):
            file.write(chunk)
    from_save = oci.read_base(saved, tmp_path / "blobs2")
    assert [x.diff_id for x in from_save.layers] == [base.layers[0].diff_id, layer.diff_id]
    assert from_save.config["Cmd"] == ["/opt/t/app/run.sh"]
    assert oci.base_diff_ids(saved) == [x.diff_id for x in from_save.layers]
