"""Layer snapshots: sharing between images, overlay stacking, garbage collection, restarts."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from shim.protocol import NotFound
from supervisor.images import ImageStore
from supervisor.images._db import SnapshotRecord, SnapshotTable
from test_images import (ArchiveBuilder, entry, layer_tar, one_image_archive, root,  # noqa: F401
                         store, tree)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="snapshots need root to mount")


def base_layer() -> bytes:
    return layer_tar([entry("bin", "dir"), entry("bin/sh", data=b"sh", mode=0o755),
                      entry("etc", "dir"), entry("etc/base", data=b"base")])


def top_layer(name: str) -> bytes:
    return layer_tar([entry("etc", "dir"), entry(f"etc/{name}", data=name.encode())])


def busybox_layer() -> bytes:
    """Return a layer with the host's static busybox as bin/busybox, sh and sleep."""
    return layer_tar([entry("bin", "dir"),
                      entry("bin/busybox", data=Path("/bin/busybox").read_bytes(), mode=0o755),
                      entry("bin/sh", "symlink", link="busybox"),
                      entry("bin/sleep", "symlink", link="busybox"),
                      entry("etc", "dir"), entry("etc/base", data=b"base")])


def two_images(tmp_path: Path, runnable: bool = False) -> Path:
    """Write an archive of images one:latest and two:latest, sharing their base layer."""
    base = busybox_layer() if runnable else base_layer()
    builder = ArchiveBuilder()
    builder.tag(builder.add_image([base, top_layer("one")]), "one:latest")
    builder.tag(builder.add_image([base, top_layer("two")]), "two:latest")
    return builder.write(tmp_path / "two.tar")


def mount_options(target: Path) -> str:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(target):
            return fields[-1]
    raise AssertionError(f"{target} is not mounted")


def test_images_share_base_snapshot(store: ImageStore, tmp_path: Path):
    one, two = store.import_archive(two_images(tmp_path))

    chain_one = store.snapshots.chain(one.snapshot)
    chain_two = store.snapshots.chain(two.snapshot)

    assert len(chain_one) == 2
    assert chain_one[1] == chain_two[1]
    assert len(os.listdir(store.snapshots.folder)) == 3


def test_overlay_layer_folder_holds_only_its_layer(tmp_path: Path):
    store = ImageStore(tmp_path / "root", tmp_path / "root/moorage.db", "overlayfs")
    one, _ = store.import_archive(two_images(tmp_path))

    top = store.snapshots.path(one.snapshot)

    assert tree(top) == ["etc/", "etc/one"]


def test_overlay_root_stacks_layers(tmp_path: Path):
    store = ImageStore(tmp_path / "root", tmp_path / "root/moorage.db", "overlayfs")
    one, _ = store.import_archive(two_images(tmp_path))
    dest = tmp_path / "containers/c1/rootfs"

    store.prepare_rootfs(one, dest)
    try:
        lowers = [str(store.snapshots.path(n)) for n in store.snapshots.chain(one.snapshot)]
        assert f"lowerdir={':'.join(lowers)}" in mount_options(dest)
        assert tree(dest) == ["bin/", "bin/sh", "etc/", "etc/base", "etc/one"]
    finally:
        store.remove_rootfs(dest)


def test_container_write_keeps_snapshot(store: ImageStore, tmp_path: Path):
    one, _ = store.import_archive(two_images(tmp_path))
    first = tmp_path / "containers/c1/rootfs"
    second = tmp_path / "containers/c2/rootfs"
    store.prepare_rootfs(one, first)
    store.prepare_rootfs(one, second)

    (first / "etc/base").write_text("changed")
    (first / "etc/one").unlink()

    assert (second / "etc/base").read_text() == "base"
    assert (second / "etc/one").read_text() == "one"
    for name in store.snapshots.chain(one.snapshot):
        assert "changed" not in [p.read_text() for p in store.snapshots.path(name).rglob("base")]
    store.remove_rootfs(first)
    store.remove_rootfs(second)


def test_many_layers_mount(tmp_path: Path):
    """More layers than one page of mount options can list with absolute paths."""
    store = ImageStore(tmp_path / "root", tmp_path / "root/moorage.db", "overlayfs")
    layers = [layer_tar([entry("bin", "dir")])] + [
        layer_tar([entry(f"f{index}", data=str(index).encode())]) for index in range(60)]
    [image] = store.import_archive(one_image_archive(tmp_path / "deep.tar", layers))
    dest = tmp_path / "containers/deep/rootfs"

    store.prepare_rootfs(image, dest)
    try:
        assert (dest / "f59").read_text() == "59"
        assert (dest / "f0").read_text() == "0"
    finally:
        store.remove_rootfs(dest)
    assert not os.path.ismount(dest)


# Garbage collection.

def test_removed_image_keeps_snapshots_of_roots(store: ImageStore, tmp_path: Path):
    one, _ = store.import_archive(two_images(tmp_path))
    dest = tmp_path / "containers/c1/rootfs"
    store.prepare_rootfs(one, dest)
    store.container_roots = lambda: [dest]

    store.remove("one")

    if store.snapshotter == "overlayfs":
        assert (dest / "etc/one").read_text() == "one"
        assert store.snapshots.exists(one.snapshot)
    store.remove_rootfs(dest)


def test_prune_removes_snapshots_no_root_uses(store: ImageStore, tmp_path: Path):
    one, two = store.import_archive(two_images(tmp_path))
    dest = tmp_path / "containers/c1/rootfs"
    store.prepare_rootfs(one, dest)
    store.container_roots = lambda: [dest]
    store.remove("one")
    store.remove_rootfs(dest)
    store.container_roots = list

    result = store.prune()

    assert not store.snapshots.exists(one.snapshot)
    assert store.snapshots.exists(two.snapshot)
    assert len(os.listdir(store.snapshots.folder)) == 2
    assert result["reclaimed"] >= 0


def test_prune_all_keeps_used_images(store: ImageStore, tmp_path: Path):
    one, two = store.import_archive(two_images(tmp_path))

    result = store.prune(unused_images=True, used_image_ids={two.id})

    assert result["untagged"] == ["one:latest"]
    assert [image.name for image in store.list()] == ["two:latest"]
    assert len(os.listdir(store.snapshots.folder)) == 2


def test_disk_usage_counts(store: ImageStore, tmp_path: Path):
    store.import_archive(two_images(tmp_path))

    usage = store.disk_usage()

    assert usage["images"] == 2
    assert usage["snapshots"] == 3
    assert usage["blobs"] == 7
    assert usage["snapshot_reclaimable"] == 0
    assert usage["blob_reclaimable"] == 0


def test_reopen_forgets_unrecorded_snapshot(store: ImageStore, root: Path, tmp_path: Path):
    one, _ = store.import_archive(two_images(tmp_path))
    stray = store.snapshots.folder / ("f" * 64)
    stray.mkdir()

    reopened = ImageStore(root, root / "moorage.db", store.snapshotter)

    assert not stray.exists()
    assert reopened.snapshots.exists(one.snapshot)


# Through moord.

def test_moord_restart_leaks_no_mounts(moord, tmp_path: Path):
    archive = two_images(tmp_path, runnable=True)
    moord.moor("image", "import", str(archive))
    cid = moord.moor("run", "-d", "one", "sleep", "300").stdout.decode().strip()
    moord.wait_status(cid, "running")

    moord.kill9()
    moord.start()
    moord.moor("rm", "-f", cid)

    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(moord.root) not in mounts


def test_moor_image_prune_all(moord, tmp_path: Path):
    moord.moor("image", "import", str(two_images(tmp_path)))
    cid = moord.moor("create", "two").stdout.decode().strip()

    result = moord.moor("image", "prune", "-a")

    assert b"Untagged: one:latest" in result.stdout
    assert [image["name"] for image in moord.call("image_ls")] == ["two:latest"]
    moord.moor("rm", cid)


def test_moor_system_df(moord, tmp_path: Path):
    moord.moor("image", "import", str(two_images(tmp_path)))

    lines = moord.moor("system", "df").stdout.decode().splitlines()

    assert lines[0].split() == ["TYPE", "TOTAL", "SIZE", "RECLAIMABLE"]
    assert lines[3].split()[:2] == ["Snapshots", "3"]


# A change of the snapshotter setting.

OTHER_KIND = {"overlayfs": "copy", "copy": "overlayfs"}


@pytest.mark.parametrize("first", ["overlayfs", "copy"])
def test_changed_snapshotter_unpacks_again(root: Path, tmp_path: Path, first: str):
    ImageStore(root, root / "moorage.db", first).import_archive(two_images(tmp_path))
    store = ImageStore(root, root / "moorage.db", OTHER_KIND[first])
    image = store.get("one")
    dest = tmp_path / "container" / "rootfs"

    try:
        store.prepare_rootfs(image, dest)
        store.mount_rootfs(dest)
        content = (dest / "etc/one").read_bytes()
    finally:
        store.remove_rootfs(dest)

    assert content == b"one"
    assert store.snapshots.exists(image.snapshot)
    assert (root / "snapshots" / first / image.snapshot).is_dir()


def test_prune_removes_other_kind_snapshots(root: Path, tmp_path: Path):
    ImageStore(root, root / "moorage.db", "copy").import_archive(two_images(tmp_path))
    store = ImageStore(root, root / "moorage.db", "overlayfs")
    dest = tmp_path / "container" / "rootfs"
    store.prepare_rootfs(store.get("one"), dest)
    store.remove_rootfs(dest)

    removed = store.prune()

    assert len(removed["snapshots"]) == 3
    assert list((root / "snapshots" / "copy").iterdir()) == []
    assert store.snapshots.exists(store.get("one").snapshot)


def test_unpack_again_without_blobs_names_image(root: Path, tmp_path: Path):
    first = ImageStore(root, root / "moorage.db", "copy")
    first.import_archive(two_images(tmp_path))
    image = first.get("one")
    manifest = first._content.read(image.manifest_digest)
    for layer in json.loads(manifest)["layers"]:
        first._content.delete(layer["digest"])
    store = ImageStore(root, root / "moorage.db", "overlayfs")

    with pytest.raises(NotFound, match="moor image rm one:latest"):
        store.prepare_rootfs(store.get("one"), tmp_path / "container" / "rootfs")
    assert list((root / "snapshots" / "overlayfs").iterdir()) == []


def test_snapshot_table_migrates_name_key(root: Path):
    root.mkdir()
    db = sqlite3.connect(root / "moorage.db")
    db.execute("CREATE TABLE snapshots (name TEXT PRIMARY KEY, parent TEXT NOT NULL, kind TEXT NOT NULL, "
               "size INTEGER NOT NULL)")
    db.execute("INSERT INTO snapshots VALUES ('a' , '', 'copy', 5)")
    db.commit()
    db.close()

    table = SnapshotTable(root / "moorage.db")
    table.put(SnapshotRecord("a", "", "overlayfs", 7))

    assert table.get("a", "copy") == SnapshotRecord("a", "", "copy", 5)
    assert table.get("a", "overlayfs") == SnapshotRecord("a", "", "overlayfs", 7)


def test_moord_runs_image_after_snapshotter_change(moord_factory, tmp_path: Path):
    daemon = moord_factory("--snapshotter", "overlayfs")
    daemon.moor("image", "import", str(two_images(tmp_path, runnable=True)))
    daemon.stop()
    daemon.extra_args = ("--snapshotter", "copy")
    daemon.start()

    result = daemon.moor("run", "--rm", "one", "sh", "-c", "read line < /etc/one; echo $line")

    assert result.stdout == b"one\n"
    assert list((daemon.root / "snapshots" / "copy").iterdir())
