"""The image config's Volumes and ExposedPorts in ``moor run``, ``moor inspect`` and ``moor rm``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import wait_until
from test_images import ArchiveBuilder, entry, layer_tar
from test_images_snapshots import busybox_layer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")

CONFIG = {"Cmd": ["sh"], "Volumes": {"/data": {}, "/empty": {}}, "ExposedPorts": {"8080/tcp": {}}}


def data_layer() -> bytes:
    return layer_tar([entry("bin", "dir"), entry("bin/cat", "symlink", link="busybox"),
                      entry("bin/true", "symlink", link="busybox"),
                      entry("data", "dir", mode=0o750, uid=1000, gid=1000),
                      entry("data/seed", data=b"from image", uid=1000, gid=1000),
                      entry("etc", "dir"), entry("etc/plain", data=b"plain")])


def import_image(moord, tmp_path: Path, name: str, config: dict | None = None) -> str:
    builder = ArchiveBuilder()
    builder.tag(builder.add_image([busybox_layer(), data_layer()], config=config or CONFIG), f"{name}:1")
    moord.moor("image", "import", str(builder.write(tmp_path / f"{name}.tar")))
    return f"{name}:1"


def volume_of(moord, ref: str, destination: str) -> Path:
    mounts = [m for m in moord.inspect(ref)["Mounts"] if m["Destination"] == destination]
    assert len(mounts) == 1
    return Path(mounts[0]["Source"])


def test_run_volume_starts_with_image_content(moord, tmp_path: Path):
    image = import_image(moord, tmp_path, "vol-seed")

    result = moord.moor("run", "--name", "vol-seed-c", image, "cat", "/data/seed")

    assert result.stdout == b"from image"
    source = volume_of(moord, "vol-seed-c", "/data")
    assert source.parent == moord.root / "volumes"
    assert (source / "seed").read_bytes() == b"from image"
    moord.moor("rm", "-v", "vol-seed-c")


def test_volume_keeps_image_owner_and_mode(moord, tmp_path: Path):
    image = import_image(moord, tmp_path, "vol-owner")

    moord.moor("create", "--name", "vol-owner-c", image)

    info = os.stat(volume_of(moord, "vol-owner-c", "/data"))
    assert (info.st_uid, info.st_gid) == (1000, 1000)
    assert info.st_mode & 0o7777 == 0o750
    moord.moor("rm", "-v", "vol-owner-c")


def test_volume_writes_stay_out_of_root(moord, tmp_path: Path):
    image = import_image(moord, tmp_path, "vol-write")

    moord.moor("run", "--name", "vol-write-c", image, "sh", "-c", "echo new > /empty/file")

    assert (volume_of(moord, "vol-write-c", "/empty") / "file").read_text() == "new\n"
    assert not list(moord.root.glob("containers/*/rootfs.upper/empty/file"))
    moord.moor("rm", "-v", "vol-write-c")


def test_rm_keeps_volumes_without_v(moord, tmp_path: Path):
    image = import_image(moord, tmp_path, "vol-keep")
    moord.moor("create", "--name", "vol-keep-c", image)
    source = volume_of(moord, "vol-keep-c", "/data")

    moord.moor("rm", "vol-keep-c")

    assert (source / "seed").is_file()


def test_rm_v_removes_volumes(moord, tmp_path: Path):
    image = import_image(moord, tmp_path, "vol-rmv")
    moord.moor("create", "--name", "vol-rmv-c", image)
    sources = [volume_of(moord, "vol-rmv-c", path) for path in ("/data", "/empty")]

    moord.moor("rm", "-v", "vol-rmv-c")

    assert not any(source.exists() for source in sources)


def test_run_rm_removes_volumes(moord, tmp_path: Path):
    image = import_image(moord, tmp_path, "vol-autorm")

    moord.moor("run", "--rm", image, "true")

    # moor run --rm returns once the exit is known; moord clears the remains after that.
    wait_until(lambda: not any((moord.root / "volumes").iterdir()), 30, message="the volumes to be removed")


def test_bind_replaces_image_volume(moord, tmp_path: Path):
    image = import_image(moord, tmp_path, "vol-bind")
    host = tmp_path / "host-data"
    host.mkdir()
    (host / "seed").write_text("from host")

    result = moord.moor("run", "--name", "vol-bind-c", "-v", f"{host}:/data", image, "cat", "/data/seed")

    destinations = [m["Destination"] for m in moord.inspect("vol-bind-c")["Mounts"]]
    assert result.stdout == b"from host"
    assert destinations == ["/empty"]
    moord.moor("rm", "-v", "vol-bind-c")


def test_inspect_shows_exposed_ports_and_volumes(moord, tmp_path: Path):
    image = import_image(moord, tmp_path, "vol-ports")

    moord.moor("create", "--name", "vol-ports-c", image)

    config = moord.inspect("vol-ports-c")["Config"]
    assert config["ExposedPorts"] == {"8080/tcp": {}}
    assert config["Volumes"] == {"/data": {}, "/empty": {}}
    moord.moor("rm", "-v", "vol-ports-c")


def test_volume_on_file_rejected(moord, tmp_path: Path):
    image = import_image(moord, tmp_path, "vol-file", config={"Cmd": ["sh"], "Volumes": {"/etc/plain": {}}})

    result = moord.moor("create", "--name", "vol-file-c", image, check=False)

    assert result.returncode != 0
    assert b"/etc/plain is not a folder" in result.stderr
    assert not any((moord.root / "volumes").iterdir())
    assert moord.moor("ps", "-a", "-q").stdout == b""
