"""Safe layer unpacking, run against both snapshotters (the ``store`` fixture's two kinds).

Layers are built here with tarfile; each image is looked at through a real
container root (an overlay mount or a copy) made from its snapshots.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from shim.protocol import InvalidArgument, MoorError
from supervisor.images import ImageStore
from test_images import (CAPABILITY, MTIME, assert_canary_untouched, assert_store_empty,  # noqa: F401
                         canary, entry, layer_tar, one_image_archive, root, snapshot_of, store,
                         tree)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking sets owners, so it needs root")


def import_layers(store: ImageStore, tmp_path: Path, layers: list[bytes], **kwargs):
    [image] = store.import_archive(one_image_archive(tmp_path / "image.tar", layers, **kwargs))
    return image


# Whiteouts across several layers.

def test_whiteout_removes_file_two_layers_down(store: ImageStore, tmp_path: Path):
    first = layer_tar([entry("bin", "dir"), entry("etc", "dir"), entry("etc/old", data=b"1")])
    second = layer_tar([entry("etc", "dir"), entry("etc/middle", data=b"2")])
    third = layer_tar([entry("etc", "dir"), entry("etc/.wh.old")])

    view = snapshot_of(store, import_layers(store, tmp_path, [first, second, third]))

    assert tree(view) == ["bin/", "etc/", "etc/middle"]


def test_opaque_folder_hides_every_lower_layer(store: ImageStore, tmp_path: Path):
    first = layer_tar([entry("bin", "dir"), entry("app", "dir"), entry("app/a", data=b"a")])
    second = layer_tar([entry("app", "dir"), entry("app/b", data=b"b")])
    third = layer_tar([entry("app", "dir"), entry("app/.wh..wh..opq"), entry("app/c", data=b"c")])

    view = snapshot_of(store, import_layers(store, tmp_path, [first, second, third]))

    assert tree(view / "app") == ["c"]


def test_file_added_again_after_whiteout(store: ImageStore, tmp_path: Path):
    first = layer_tar([entry("bin", "dir"), entry("conf", data=b"first")])
    second = layer_tar([entry(".wh.conf")])
    third = layer_tar([entry("conf", data=b"third")])

    view = snapshot_of(store, import_layers(store, tmp_path, [first, second, third]))

    assert (view / "conf").read_bytes() == b"third"


def test_whiteout_markers_never_visible(store: ImageStore, tmp_path: Path):
    first = layer_tar([entry("bin", "dir"), entry("d", "dir"), entry("d/x", data=b"x")])
    second = layer_tar([entry("d", "dir"), entry("d/.wh..wh..opq"), entry(".wh.missing")])

    view = snapshot_of(store, import_layers(store, tmp_path, [first, second]))

    assert tree(view) == ["bin/", "d/"]


# Links.

def test_hardlink_in_same_layer_shares_inode(store: ImageStore, tmp_path: Path):
    layer = layer_tar([entry("bin", "dir"), entry("bin/tool", data=b"tool", mode=0o755),
                       entry("bin/alias", "hardlink", link="bin/tool")])

    view = snapshot_of(store, import_layers(store, tmp_path, [layer]))

    assert os.lstat(view / "bin/alias").st_ino == os.lstat(view / "bin/tool").st_ino
    assert os.lstat(view / "bin/tool").st_nlink == 2
    assert (view / "bin/alias").read_bytes() == b"tool"


@pytest.mark.parametrize("target", ["/etc/host-only", "../../../../etc/host-only"],
                         ids=["absolute", "relative"])
def test_symlink_out_of_root_stays_link(store: ImageStore, tmp_path: Path, canary: Path,
                                        target: str):
    layer = layer_tar([entry("bin", "dir"), entry("out", "symlink", link=target),
                       entry("canary-link", "symlink", link=str(canary / "canary"))])

    view = snapshot_of(store, import_layers(store, tmp_path, [layer]))

    assert os.readlink(view / "out") == target
    assert os.readlink(view / "canary-link") == str(canary / "canary")
    assert_canary_untouched(canary)


def test_file_replaces_lower_symlink(store: ImageStore, tmp_path: Path, canary: Path):
    first = layer_tar([entry("bin", "dir"), entry("conf", "symlink", link=str(canary / "canary"))])
    second = layer_tar([entry("conf", data=b"image")])

    view = snapshot_of(store, import_layers(store, tmp_path, [first, second]))

    assert not (view / "conf").is_symlink()
    assert (view / "conf").read_bytes() == b"image"
    assert_canary_untouched(canary)


# Names.

@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "/etc/escape"],
                         ids=["dotdot", "inner-dotdot", "absolute"])
def test_unsafe_name_error_names_entry(store: ImageStore, root: Path, tmp_path: Path,
                                       name: str):
    layer = layer_tar([entry("bin", "dir"), entry(name, data=b"x")])

    with pytest.raises(InvalidArgument) as raised:
        import_layers(store, tmp_path, [layer])

    assert repr(name) in str(raised.value)
    assert_store_empty(store, root)


def test_long_names_unpack(store: ImageStore, tmp_path: Path):
    longest = "n" * 255
    deep = "/".join(["d" * 200] * 12)
    layer = layer_tar([entry("bin", "dir"), entry(longest, data=b"long"),
                       entry(f"{deep}/{longest}", data=b"deep")])

    view = snapshot_of(store, import_layers(store, tmp_path, [layer]))

    assert (view / longest).read_bytes() == b"long"
    fd = os.open(view, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for component in deep.split("/"):
            child = os.open(component, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        assert os.listdir(fd) == [longest]
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", ["n" * 256, ".wh." + "n" * 300], ids=["entry", "whiteout"])
def test_too_long_name_rejected(store: ImageStore, root: Path, tmp_path: Path, name: str):
    first = layer_tar([entry("bin", "dir")])
    second = layer_tar([entry(name, data=b"x")])

    with pytest.raises(MoorError) as raised:
        import_layers(store, tmp_path, [first, second])

    assert name[:40] in str(raised.value)
    assert_store_empty(store, root)


# Metadata.

def test_special_files_and_metadata(store: ImageStore, tmp_path: Path):
    layer = layer_tar([
        entry("bin", "dir"),
        entry("bin/su", data=b"ELF", mode=0o4755, uid=0, gid=0),
        entry("bin/wall", data=b"ELF", mode=0o2755, uid=0, gid=5),
        entry("dev", "dir"), entry("dev/zero", "char", mode=0o666, device=(1, 5)),
        entry("run", "dir"), entry("run/pipe", "fifo", mode=0o600, uid=33, gid=33),
    ])

    view = snapshot_of(store, import_layers(store, tmp_path, [layer]))

    su = os.lstat(view / "bin/su")
    assert stat.S_IMODE(su.st_mode) == 0o4755
    assert su.st_mtime == MTIME
    wall = os.lstat(view / "bin/wall")
    assert (stat.S_IMODE(wall.st_mode), wall.st_gid) == (0o2755, 5)
    zero = os.lstat(view / "dev/zero")
    assert stat.S_ISCHR(zero.st_mode)
    assert zero.st_rdev == os.makedev(1, 5)
    pipe = os.lstat(view / "run/pipe")
    assert stat.S_ISFIFO(pipe.st_mode)
    assert (pipe.st_uid, pipe.st_gid) == (33, 33)


def test_layer_overlay_xattrs_dropped(store: ImageStore, tmp_path: Path):
    """Overlay metadata written by a layer must not make a folder opaque to the kernel."""
    first = layer_tar([entry("bin", "dir"), entry("etc", "dir"), entry("etc/dir", "dir"),
                       entry("etc/dir/keep", data=b"keep")])
    second = layer_tar([
        entry("etc", "dir"),
        entry("etc/dir", "dir", xattrs={"trusted.overlay.opaque": b"y"}),
        entry("etc/pinger", data=b"ELF", mode=0o755,
              xattrs={"security.capability": CAPABILITY}),
        entry("etc/sneaky", data=b"s", xattrs={"trusted.overlay.redirect": b"/etc"}),
    ])

    view = snapshot_of(store, import_layers(store, tmp_path, [first, second]))

    assert (view / "etc/dir/keep").read_bytes() == b"keep"
    assert os.getxattr(view / "etc/pinger", "security.capability") == CAPABILITY
    assert (view / "etc/sneaky").read_bytes() == b"s"


# Compression and failures.

def test_zstd_layer_unpacks(store: ImageStore, tmp_path: Path):
    plain = layer_tar([entry("bin", "dir"), entry("bin/z", data=b"zstd")])
    compressed = subprocess.run(["zstd", "-q", "-c"], input=plain, capture_output=True,
                                check=True, timeout=30).stdout

    view = snapshot_of(store, import_layers(store, tmp_path, [plain], zstd_blobs=[compressed]))

    assert (view / "bin/z").read_bytes() == b"zstd"


def test_failed_upper_layer_leaves_nothing(store: ImageStore, root: Path, tmp_path: Path):
    good = layer_tar([entry("bin", "dir"), entry("bin/sh", data=b"sh")])
    bad = layer_tar([entry("ok", data=b"ok"), entry("../bad", data=b"x")])

    with pytest.raises(InvalidArgument, match="'../bad'"):
        import_layers(store, tmp_path, [good, bad])

    assert_store_empty(store, root)
    assert os.listdir(store.snapshots.folder) == []
