"""Image formats: docker save archives, OCI layout folders, manifest lists, platforms, save."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from shim.protocol import FailedPrecondition, InvalidArgument
from supervisor.images import ImageStore
from supervisor.images._oci import host_platform
from test_images import (ArchiveBuilder, entry, layer_tar, root, sha256, snapshot_of,  # noqa: F401
                         store, tree)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="image tests need root")

DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def docker_save_archive(path: Path, layers: list[bytes], tags: list[str],
                        gzipped: bool = False, config: dict | None = None) -> Path:
    """Write an archive in the layout of ``docker save``: manifest.json, config, layer.tar files."""
    image_config = {"architecture": host_platform()[0], "os": "linux",
                    "config": config or {"Cmd": ["sh"]},
                    "rootfs": {"type": "layers", "diff_ids": [sha256(l) for l in layers]}}
    config_data = json.dumps(image_config).encode()
    config_name = sha256(config_data).removeprefix("sha256:") + ".json"
    with tarfile.open(path, "w") as tar:
        add_file(tar, config_name, config_data)
        names = []
        for index, layer in enumerate(layers):
            name = f"layer{index}/layer.tar"
            add_file(tar, name, gzip.compress(layer, mtime=0) if gzipped else layer)
            names.append(name)
        manifest = [{"Config": config_name, "RepoTags": tags, "Layers": names}]
        add_file(tar, "manifest.json", json.dumps(manifest).encode())
    return path


def simple_layers() -> list[bytes]:
    return [layer_tar([entry("bin", "dir"), entry("etc", "dir"), entry("etc/one", data=b"1")]),
            layer_tar([entry("etc", "dir"), entry("etc/.wh.one"), entry("etc/two", data=b"2")])]


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
def test_docker_save_archive_imports(store: ImageStore, tmp_path: Path, gzipped: bool):
    archive = docker_save_archive(tmp_path / "saved.tar", simple_layers(),
                                  ["app:1", "registry.local:5000/team/app:2"], gzipped)

    images = store.import_archive(archive)

    assert [image.name for image in images] == ["app:1", "registry.local:5000/team/app:2"]
    assert images[0].id == images[1].id
    assert tree(snapshot_of(store, images[0])) == ["bin/", "etc/", "etc/two"]


def test_docker_save_without_tags_needs_name(store: ImageStore, tmp_path: Path):
    archive = docker_save_archive(tmp_path / "saved.tar", simple_layers(), [])

    with pytest.raises(InvalidArgument, match="RepoTags"):
        store.import_archive(archive)


def test_docker_save_wrong_diff_id_rejected(store: ImageStore, root: Path, tmp_path: Path):
    layers = simple_layers()
    archive = docker_save_archive(tmp_path / "saved.tar", layers, ["bad:1"])
    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    members["layer1/layer.tar"] = layer_tar([entry("etc", "dir"), entry("etc/evil", data=b"x")])
    with tarfile.open(archive, "w") as tar:
        for name, data in members.items():
            add_file(tar, name, data)

    with pytest.raises(InvalidArgument, match="corrupt"):
        store.import_archive(archive)

    assert store.list() == []


def test_oci_layout_folder_imports(store: ImageStore, tmp_path: Path):
    builder = ArchiveBuilder()
    builder.tag(builder.add_image(simple_layers()), "folder:1")
    archive = builder.write(tmp_path / "oci.tar")
    folder = tmp_path / "layout"
    folder.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")

    [image] = store.import_archive(folder)

    assert image.name == "folder:1"
    assert tree(snapshot_of(store, image)) == ["bin/", "etc/", "etc/two"]


def platform_archive(tmp_path: Path, list_type: str) -> Path:
    """Write an archive whose one name is a manifest list of two architectures."""
    architecture = host_platform()[0]
    other = "s390x" if architecture != "s390x" else "amd64"
    builder = ArchiveBuilder()
    manifests = []
    for arch in (architecture, other):
        layer = layer_tar([entry("bin", "dir"), entry("arch", data=arch.encode())])
        manifests.append((builder.add_image([layer]), {"os": "linux", "architecture": arch}))
    index = builder.add_nested_index(manifests)
    if list_type == "docker":
        index = dict(index, mediaType=DOCKER_LIST)
        data = builder.blobs[index["digest"]]
        document = json.loads(data)
        document["mediaType"] = DOCKER_LIST
        new = json.dumps(document).encode()
        del builder.blobs[index["digest"]]
        index = builder.add_blob(DOCKER_LIST, new)
    builder.tag(index, "multi:1")
    return builder.write(tmp_path / "multi.tar")


@pytest.mark.parametrize("list_type", ["oci", "docker"])
@pytest.mark.parametrize("pick", ["host", "other"])
def test_manifest_list_platform_choice(store: ImageStore, tmp_path: Path, list_type: str,
                                       pick: str):
    architecture = host_platform()[0]
    other = "s390x" if architecture != "s390x" else "amd64"
    wanted = architecture if pick == "host" else other
    archive = platform_archive(tmp_path, list_type)

    [image] = store.import_archive(archive, platform=None if pick == "host" else f"linux/{other}")

    assert (store.snapshots.path(image.snapshot) / "arch").read_text() == wanted


def test_manifest_list_unknown_platform(store: ImageStore, tmp_path: Path):
    archive = platform_archive(tmp_path, "oci")

    with pytest.raises(FailedPrecondition, match="linux/riscv64"):
        store.import_archive(archive, platform="linux/riscv64")


@pytest.mark.parametrize("platform", ["linux", "linux//v7", "/amd64"])
def test_invalid_platform_rejected(store: ImageStore, tmp_path: Path, platform: str):
    archive = platform_archive(tmp_path, "oci")

    with pytest.raises(InvalidArgument, match="invalid platform"):
        store.import_archive(archive, platform=platform)


# Save.

def saved_pair(store: ImageStore, tmp_path: Path) -> tuple[list, Path]:
    images = store.import_archive(docker_save_archive(
        tmp_path / "in.tar", simple_layers(), ["app:1", "app:latest"]))
    target = tmp_path / "out.tar"
    store.save(["app:1", "app:latest"], target)
    return images, target


def test_save_roundtrip_keeps_tags(store: ImageStore, root: Path, tmp_path: Path):
    images, target = saved_pair(store, tmp_path)
    other = ImageStore(tmp_path / "other", tmp_path / "other/moorage.db", store.snapshotter)

    loaded = other.import_archive(target)

    assert sorted(image.name for image in loaded) == ["app:1", "app:latest"]
    assert {image.id for image in loaded} == {images[0].id}


def test_save_is_oci_layout(store: ImageStore, tmp_path: Path):
    _, target = saved_pair(store, tmp_path)
    folder = tmp_path / "layout"
    folder.mkdir()
    with tarfile.open(target) as tar:
        tar.extractall(folder, filter="data")
    (folder / "manifest.json").unlink()
    other = ImageStore(tmp_path / "other", tmp_path / "other/moorage.db", store.snapshotter)

    loaded = other.import_archive(folder)

    assert sorted(image.name for image in loaded) == ["app:1", "app:latest"]
    assert tree(snapshot_of(other, loaded[0])) == ["bin/", "etc/", "etc/two"]


def test_save_missing_folder_rejected(store: ImageStore, tmp_path: Path):
    store.import_archive(docker_save_archive(tmp_path / "in.tar", simple_layers(), ["app:1"]))

    with pytest.raises(InvalidArgument, match="does not exist"):
        store.save(["app:1"], tmp_path / "missing/out.tar")


# Through moord.

def test_moor_image_save_and_import(moord, tmp_path: Path):
    moord.moor("image", "import", str(docker_save_archive(
        tmp_path / "in.tar", simple_layers(), ["app:1"])))
    target = tmp_path / "saved.tar"

    moord.moor("image", "save", "-o", str(target), "app:1")
    moord.moor("image", "rm", "app:1")
    result = moord.moor("image", "import", str(target))

    assert result.stdout.decode().split()[0] == "app:1"


def test_moor_create_takes_image_labels(moord, tmp_path: Path):
    config = {"Cmd": ["sh"], "Labels": {"team": "images", "tier": "base"}}
    moord.moor("image", "import", str(docker_save_archive(
        tmp_path / "in.tar", simple_layers(), ["labelled:1"], config=config)))

    cid = moord.moor("create", "--label", "tier=app", "labelled:1").stdout.decode().strip()

    labels = moord.inspect(cid)["Config"]["Labels"]
    assert labels == {"team": "images", "tier": "app"}
    moord.moor("rm", cid)
