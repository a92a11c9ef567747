"""`runtimes.unpack`: an image archive into a directory, layer by layer, with whiteouts, and
never a byte outside the directory. Archives are written by `oci` from tars made here."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import List, Tuple, Union

import pytest

from portal_env.errors import BuildError
from portal_env.runtimes import oci, unpack

# (name, content) for a file, (name, None) for a directory, (name, "->target") for a symlink
Entry = Tuple[str, Union[bytes, str, None]]


def layer(blobs: Path, entries: List[Entry], devices: List[str] = ()) -> oci.Layer:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content[2:]
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
        for name in devices:
            info = tarfile.TarInfo(name)
            info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            tar.addfile(info)
    buffer.seek(0)
    return oci.layer_from_tar(buffer, blobs)


def archive(tmp_path: Path, *layers_entries: List[Entry], env=("A=1",)) -> Path:
    blobs = tmp_path / "blobs"
    layers = [layer(blobs, entries) for entries in layers_entries]
    base = oci.Base(tmp_path, layers[:1])
    out = tmp_path / "image.tar"
    oci.write_archive(out, base, layers[1:], {"Env": list(env)}, "portal-env-test/unpack:1")
    return out


def test_layers_apply_in_order_with_whiteouts_and_charliecloud_files(tmp_path: Path):
    image = archive(
        tmp_path,
        [("d", None), ("d/a", b"a"), ("d/b", b"b"), ("x", b"x"), ("keep", b"1"), ("etc", None)],
        [("d", None), ("d/c", b"c"), ("d/.wh..wh..opq", b""), (".wh.x", b""), ("keep", b"2")],
        env=("PATH=/opt/portal-env/env/bin:/usr/bin", "PYTHONPATH=/opt/portal-env/lib"),
    )
    root = tmp_path / "root"
    config = unpack.unpack(image, root)
    assert sorted(p.name for p in (root / "d").iterdir()) == ["c"]  # opaque: this layer's only
    assert not (root / "x").exists() and not (root / ".wh.x").exists()
    assert (root / "keep").read_bytes() == b"2"
    assert (root / "ch" / "environment").read_text() == (
        "PATH=/opt/portal-env/env/bin:/usr/bin\nPYTHONPATH=/opt/portal-env/lib\n"
    )
    assert config["config"]["Env"][1] == "PYTHONPATH=/opt/portal-env/lib"
    for name in ("dev", "proc", "sys", "tmp", "mnt/0", "mnt/9"):
        assert (root / name).is_dir(), name
    assert (root / "etc" / "hosts").is_file() and (root / "etc" / "resolv.conf").is_file()


def test_a_later_file_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path):
    image = archive(tmp_path, [("target", b"orig"), ("link", "->target")], [("link", b"new")])
    root = tmp_path / "root"
    unpack.unpack(image, root)
    assert (root / "target").read_bytes() == b"orig"
    assert not (root / "link").is_symlink() and (root / "link").read_bytes() == b"new"


def test_a_symlink_out_of_the_image_is_never_written_through(tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    image = archive(tmp_path, [("esc", f"->{outside}")], [("esc/pwned", b"!")])
    with pytest.raises(BuildError, match=f"the image {image} has a member 'esc/pwned'"):
        unpack.unpack(image, tmp_path / "root")
    assert list(outside.iterdir()) == []


def test_a_member_with_dotdot_is_refused(tmp_path: Path):
    image = archive(tmp_path, [("a", None), ("a/../../escaped", b"!")])
    with pytest.raises(BuildError, match="outside its root"):
        unpack.unpack(image, tmp_path / "root")
    assert not (tmp_path / "escaped").exists()


def test_device_nodes_are_left_out(tmp_path: Path):
    blobs = tmp_path / "blobs"
    base = oci.Base(tmp_path, [layer(blobs, [("dev", None)], devices=["dev/null", "dev/zero"])])
    out = tmp_path / "image.tar"
    oci.write_archive(out, base, [], {}, "portal-env-test/devices:1")
    root = tmp_path / "root"
    unpack.unpack(out, root)
    assert (root / "dev").is_dir() and os.listdir(root / "dev") == []


def test_not_an_archive_names_the_file(tmp_path: Path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\0" * 10)
    with pytest.raises(BuildError, match=f"cannot read the image {junk}"):
        unpack.unpack(junk, tmp_path / "root")
