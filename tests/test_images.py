"""Tests of supervisor.images against real files, tar archives and a real busybox."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from shim.protocol import AlreadyExists, FailedPrecondition, InvalidArgument, MoorError, NotFound
from supervisor.images import Image, ImageStore
from supervisor.images._oci import host_platform

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="image tests set owners and make device nodes, so they need root")

BUSYBOX = Path("/bin/busybox")
MTIME = 1_600_000_000
# VFS capability v2 with CAP_NET_RAW (bit 13) permitted; the bytes contain NULs.
CAPABILITY = bytes([1, 0, 0, 2, 0, 0x20, 0, 0]) + bytes(12)


# Helpers that build layers and OCI archives.

def entry(name: str, kind: str = "file", data: bytes = b"", mode: int | None = None,
          uid: int = 0, gid: int = 0, link: str = "", xattrs: dict | None = None,
          device: tuple[int, int] = (0, 0)) -> tuple[tarfile.TarInfo, bytes | None]:
    """Return one tar entry; kind is file, dir, symlink, hardlink, char or fifo."""
    types = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}
    info = tarfile.TarInfo(name)
    info.type = types[kind]
    info.mode = 0o755 if kind == "dir" else 0o644
    if mode is not None:
        info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = MTIME
    info.linkname = link
    info.devmajor, info.devminor = device
    if xattrs:
        info.pax_headers = {f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape")
                            for key, value in xattrs.items()}
    if kind == "file":
        info.size = len(data)
        return info, data
    return info, None


def layer_tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """Return an uncompressed PAX tar of the entries, in the order given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ArchiveBuilder:
    """Writes an OCI image layout (oci-layout, index.json, blobs/sha256) as a tar archive."""

    LAYER = "application/vnd.oci.image.layer.v1.tar"
    MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    INDEX = "application/vnd.oci.image.index.v1+json"

    def __init__(self):
        self.blobs: dict[str, bytes] = {}
        self.index: list[dict] = []
        self.layer_digests: list[str] = []
        self.config_digest = ""

    def add_blob(self, media_type: str, data: bytes) -> dict:
        digest = sha256(data)
        self.blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def add_image(self, layers: list[bytes], gzipped: list[bool] | None = None,
                  config: dict | None = None, zstd_blobs: list[bytes] | None = None) -> dict:
        """Store layers, config and manifest blobs; return the manifest descriptor.

        ``zstd_blobs`` gives zstd blobs of the layers, which then replace the tar data.
        """
        gzipped = gzipped or [False] * len(layers)
        descriptors = []
        for index, (layer, compress) in enumerate(zip(layers, gzipped)):
            if zstd_blobs:
                descriptors.append(self.add_blob(self.LAYER + "+zstd", zstd_blobs[index]))
            elif compress:
                compressed = gzip.compress(layer, mtime=0)
                descriptors.append(self.add_blob(self.LAYER + "+gzip", compressed))
            else:
                descriptors.append(self.add_blob(self.LAYER, layer))

        image_config = {"architecture": host_platform()[0], "os": "linux",
                        "created": "2024-05-01T12:00:00.123456789Z",
                        "config": config or {"Cmd": ["sh"]},
                        "rootfs": {"type": "layers", "diff_ids": [sha256(l) for l in layers]}}
        config_descriptor = self.add_blob("application/vnd.oci.image.config.v1+json",
                                          json.dumps(image_config).encode())
        self.layer_digests = [descriptor["digest"] for descriptor in descriptors]
        self.config_digest = config_descriptor["digest"]
        manifest = {"schemaVersion": 2, "mediaType": self.MANIFEST,
                    "config": config_descriptor, "layers": descriptors}
        return self.add_blob(self.MANIFEST, json.dumps(manifest).encode())

    def tag(self, descriptor: dict, ref: str | None, platform: dict | None = None) -> None:
        """List a manifest or index in index.json, with an optional ref.name annotation."""
        listed = dict(descriptor)
        if ref is not None:
            listed["annotations"] = {"org.opencontainers.image.ref.name": ref}
        if platform is not None:
            listed["platform"] = platform
        self.index.append(listed)

    def add_nested_index(self, manifests: list[tuple[dict, dict]]) -> dict:
        """Store an index of (manifest descriptor, platform) pairs; return its descriptor."""
        listed = [dict(descriptor, platform=platform) for descriptor, platform in manifests]
        index = {"schemaVersion": 2, "mediaType": self.INDEX, "manifests": listed}
        return self.add_blob(self.INDEX, json.dumps(index).encode())

    def write(self, path: Path) -> Path:
        files = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
                 "index.json": json.dumps({"schemaVersion": 2, "mediaType": self.INDEX,
                                           "manifests": self.index}).encode()}
        for digest, data in self.blobs.items():
            files["blobs/sha256/" + digest.removeprefix("sha256:")] = data

        with tarfile.open(path, "w") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return path


def one_image_archive(path: Path, layers: list[bytes], ref: str = "test:latest",
                      gzipped: list[bool] | None = None,
                      zstd_blobs: list[bytes] | None = None) -> Path:
    builder = ArchiveBuilder()
    builder.tag(builder.add_image(layers, gzipped, zstd_blobs=zstd_blobs), ref)
    return builder.write(path)


def tree(root: Path) -> list[str]:
    """List every path below root, relative and sorted, folders with a trailing slash."""
    found = []
    for directory, folders, files in os.walk(root):
        base = Path(directory).relative_to(root)
        found += [f"{base / name}/" for name in folders]
        found += [str(base / name) for name in files]
    return sorted(path.removeprefix("./") for path in found)


# Fixtures.

@pytest.fixture
def root(tmp_path: Path):
    path = tmp_path / "root"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def unmount_under(folder: Path) -> None:
    for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
        target = line.split()[4]
        if target.startswith(str(folder) + "/"):
            subprocess.run(["umount", "-l", target], capture_output=True, timeout=30)


@pytest.fixture(params=["copy", "overlayfs"])
def store(request, root: Path, tmp_path: Path):
    """A store of each snapshotter kind; teardown unmounts any view or root left mounted."""
    yield ImageStore(root, root / "moorage.db", request.param)
    unmount_under(tmp_path)


rootfs_store = store


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A host folder outside the store root, holding one file that must stay untouched."""
    path = tmp_path / "canary"
    path.mkdir()
    (path / "canary").write_text("untouched")
    return path


def assert_canary_untouched(canary: Path) -> None:
    assert os.listdir(canary) == ["canary"]
    assert (canary / "canary").read_text() == "untouched"


def assert_store_empty(store: ImageStore, root: Path) -> None:
    assert store.list() == []
    assert os.listdir(store.snapshots.folder) == []
    assert os.listdir(root / "blobs" / "sha256") == []
    assert os.listdir(root / "blobs" / "ingest") == []


def snapshot_of(store: ImageStore, image: Image) -> Path:
    """Return the image's tree as containers see it: a fresh container root made from it."""
    dest = Path(tempfile.mkdtemp(prefix="view-", dir=store.snapshots.folder.parent.parent.parent))
    dest.rmdir()
    store.prepare_rootfs(image, dest)
    return dest


@pytest.fixture
def small_rootfs(tmp_path: Path) -> Path:
    """A folder with bin/, a setuid program, a symlink, a hard link and a fifo."""
    folder = tmp_path / "rootfs"
    (folder / "bin").mkdir(parents=True)
    (folder / "etc").mkdir()
    (folder / "bin/prog").write_text("#!/bin/sh\necho prog\n")
    os.chown(folder / "bin/prog", 0, 0)
    os.chmod(folder / "bin/prog", 0o4755)
    (folder / "etc/conf").write_text("key=value\n")
    os.chown(folder / "etc/conf", 1234, 4321)
    os.link(folder / "etc/conf", folder / "etc/conf-twin")
    os.symlink("/bin/prog", folder / "bin/alias")
    os.mkfifo(folder / "etc/pipe")
    os.setxattr(folder / "etc/conf", "user.note", b"hello")
    return folder


# import_rootfs and ensure_busybox.

def test_import_rootfs_small_folder(store: ImageStore, root: Path, small_rootfs: Path):
    image = store.import_rootfs("small", small_rootfs, {"Cmd": ["/bin/prog"]})

    assert image.name == "small:latest"
    assert image.config == {"Cmd": ["/bin/prog"]}
    assert image.id.startswith("sha256:")
    snapshot = snapshot_of(store, image)
    assert tree(snapshot) == ["bin/", "bin/alias", "bin/prog", "etc/", "etc/conf",
                              "etc/conf-twin", "etc/pipe"]
    assert stat.S_IMODE(os.lstat(snapshot / "bin/prog").st_mode) == 0o4755
    assert os.readlink(snapshot / "bin/alias") == "/bin/prog"
    conf = os.lstat(snapshot / "etc/conf")
    assert (conf.st_uid, conf.st_gid, conf.st_nlink) == (1234, 4321, 2)
    assert conf.st_ino == os.lstat(snapshot / "etc/conf-twin").st_ino
    assert stat.S_ISFIFO(os.lstat(snapshot / "etc/pipe").st_mode)
    assert os.getxattr(snapshot / "etc/conf", "user.note") == b"hello"


def test_import_rootfs_writes_oci_blobs(store: ImageStore, root: Path, small_rootfs: Path):
    image = store.import_rootfs("small:v1", small_rootfs)

    blob_dir = root / "blobs" / "sha256"
    for path in blob_dir.iterdir():
        assert sha256(path.read_bytes()) == "sha256:" + path.name
    manifest = json.loads((blob_dir / image.manifest_digest.removeprefix("sha256:")).read_bytes())
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["digest"] == image.id
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    config = json.loads((blob_dir / image.id.removeprefix("sha256:")).read_bytes())
    assert config["rootfs"]["diff_ids"] == [manifest["layers"][0]["digest"]]
    assert config["os"] == "linux"


def test_import_rootfs_busybox_folder(store: ImageStore, root: Path, tmp_path: Path):
    busybox_image = store.ensure_busybox()
    copy = tmp_path / "copy"
    shutil.copytree(snapshot_of(store, busybox_image), copy, symlinks=True)

    image = store.import_rootfs("mybox:1", copy, {"Cmd": ["sh"]})

    result = subprocess.run(["chroot", str(snapshot_of(store, image)), "/bin/sh", "-c", "echo ok"],
                            capture_output=True, text=True, timeout=30)
    assert result.stdout == "ok\n"
    assert {i.name for i in store.list()} == {"busybox:latest", "mybox:1"}


def test_ensure_busybox_runs_shell(store: ImageStore, root: Path):
    image = store.ensure_busybox()

    snapshot = snapshot_of(store, image)
    result = subprocess.run(["chroot", str(snapshot), "/bin/sh", "-c", "echo ok"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
    assert image.config["Cmd"] == ["sh"]
    path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert image.config["Env"] == [path]
    assert stat.S_IMODE(os.lstat(snapshot / "tmp").st_mode) == 0o1777
    assert "user:x:1000:1000:" in (snapshot / "etc/passwd").read_text()
    assert os.readlink(snapshot / "bin/ls") == "busybox"


def test_ensure_busybox_idempotent(store: ImageStore):
    first = store.ensure_busybox()
    second = store.ensure_busybox()

    assert second == first
    assert len(store.list()) == 1


def test_ensure_busybox_rejects_dynamic(store: ImageStore, root: Path):
    with pytest.raises(FailedPrecondition, match="busybox-static") as raised:
        store.ensure_busybox(busybox=Path("/bin/ls"))

    assert "/bin/ls" in str(raised.value)
    assert_store_empty(store, root)


def test_import_rootfs_requires_bin(store: ImageStore, root: Path, tmp_path: Path):
    folder = tmp_path / "nobin"
    (folder / "etc").mkdir(parents=True)

    with pytest.raises(InvalidArgument, match="no /bin") as raised:
        store.import_rootfs("nobin", folder)

    assert str(folder) in str(raised.value)
    assert_store_empty(store, root)


@pytest.mark.parametrize("folder_name", ["missing", "file"])
def test_import_rootfs_rejects_non_folder(store: ImageStore, tmp_path: Path, folder_name: str):
    (tmp_path / "file").write_text("x")

    with pytest.raises(InvalidArgument, match=folder_name):
        store.import_rootfs("x", tmp_path / folder_name)


@pytest.mark.parametrize("name", [
    "Busybox", "bad name", "a//b", "-lead", "trail-", "x:", "x:-tag", "x@sha256:" + "a" * 64,
    "", "repo:" + "t" * 129, "a" * 256,
])
def test_import_rootfs_rejects_invalid_name(store: ImageStore, root: Path, small_rootfs: Path,
                                            name: str):
    with pytest.raises(InvalidArgument, match="invalid image name"):
        store.import_rootfs(name, small_rootfs)

    assert_store_empty(store, root)


def test_import_rootfs_accepts_bin_symlink(store: ImageStore, root: Path, tmp_path: Path):
    folder = tmp_path / "merged-usr"
    (folder / "usr/bin").mkdir(parents=True)
    (folder / "usr/bin/tool").write_text("tool")
    os.symlink("usr/bin", folder / "bin")

    image = store.import_rootfs("merged", folder)

    assert os.readlink(snapshot_of(store, image) / "bin") == "usr/bin"
    assert (snapshot_of(store, image) / "usr/bin/tool").read_text() == "tool"


@pytest.mark.parametrize("name, expected", [
    ("busybox", "busybox:latest"),
    ("localhost:5000/team/app:v1.2", "localhost:5000/team/app:v1.2"),
    ("example.com/a_b__c-d.e:Tag_1", "example.com/a_b__c-d.e:Tag_1"),
])
def test_import_rootfs_accepts_name(store: ImageStore, small_rootfs: Path, name: str,
                                    expected: str):
    assert store.import_rootfs(name, small_rootfs).name == expected


def test_import_rootfs_moves_tag(store: ImageStore, root: Path, small_rootfs: Path,
                                 tmp_path: Path):
    other = tmp_path / "other"
    (other / "bin").mkdir(parents=True)
    (other / "bin/other").write_text("other")
    old = store.import_rootfs("app:1", small_rootfs)

    new = store.import_rootfs("app:1", other)

    assert store.get("app:1") == new
    assert not (store.snapshots.folder / old.snapshot).exists()
    assert not (root / "blobs/sha256" / old.manifest_digest.removeprefix("sha256:")).exists()
    assert os.listdir(store.snapshots.folder) == [new.snapshot]


# import_archive.

def lower_layer() -> bytes:
    return layer_tar([
        entry("bin", "dir"), entry("bin/sh", data=b"sh", mode=0o755),
        entry("app", "dir"), entry("app/old.txt", data=b"old\n"),
        entry("app/olddir", "dir"), entry("app/olddir/x", data=b"x\n"),
        entry("etc", "dir"), entry("etc/keep", data=b"keep"), entry("etc/gone", data=b"gone"),
        entry("etc/gonedir", "dir"), entry("etc/gonedir/file", data=b"f"),
        entry("var", "dir"), entry("var/old", data=b"old"),
    ])


def upper_layer(marker_first: bool) -> bytes:
    """Return a layer with an opaque app/ and a whited-out var/ that it adds again.

    ``marker_first`` puts each marker before the entries of the same folder, else after.
    """
    opaque = entry("app/.wh..wh..opq")
    app = [entry("app/new.txt", data=b"new\n"), entry("app/newdir", "dir"),
           entry("app/newdir/y", data=b"y\n")]
    whiteout = entry(".wh.var")
    var = [entry("var", "dir"), entry("var/new", data=b"new")]
    if marker_first:
        app.insert(0, opaque)
        var.insert(0, whiteout)
    else:
        app.append(opaque)
        var.append(whiteout)

    return layer_tar([entry("app", "dir")] + app + var + [
        entry("etc", "dir"), entry("etc/.wh.gone"), entry("etc/.wh.gonedir"),
        entry("etc/added", data=b"added"),
    ])


@pytest.mark.parametrize("marker_first", [False, True], ids=["marker-last", "marker-first"])
@pytest.mark.parametrize("gzipped", [[True, False], [False, True]],
                         ids=["gzip-lower", "gzip-upper"])
def test_import_archive_applies_whiteouts(store: ImageStore, root: Path, tmp_path: Path,
                                          marker_first: bool, gzipped: list[bool]):
    archive = one_image_archive(tmp_path / "image.tar", [lower_layer(), upper_layer(marker_first)],
                                gzipped=gzipped)

    [image] = store.import_archive(archive)

    snapshot = snapshot_of(store, image)
    assert tree(snapshot) == ["app/", "app/new.txt", "app/newdir/", "app/newdir/y", "bin/",
                              "bin/sh", "etc/", "etc/added", "etc/keep", "var/", "var/new"]
    assert (snapshot / "app/new.txt").read_text() == "new\n"
    assert image.name == "test:latest"
    assert image.config == {"Cmd": ["sh"]}


def test_import_archive_gnu_tar_layer(store: ImageStore, root: Path, tmp_path: Path):
    folder = tmp_path / "folder"
    (folder / "bin").mkdir(parents=True)
    (folder / "bin/tool").write_text("tool")
    os.chmod(folder, 0o751)
    layer = subprocess.run(["tar", "-C", str(folder), "--numeric-owner", "-cf", "-", "."],
                           capture_output=True, check=True, timeout=30).stdout
    assert b"./bin/tool" in layer

    archive = one_image_archive(tmp_path / "image.tar", [layer], gzipped=[True])
    [image] = store.import_archive(archive)

    snapshot = snapshot_of(store, image)
    assert tree(snapshot) == ["bin/", "bin/tool"]
    assert stat.S_IMODE(os.lstat(snapshot).st_mode) == 0o751


def test_import_archive_restores_metadata(store: ImageStore, root: Path, tmp_path: Path):
    layer = layer_tar([
        entry("bin", "dir"), entry("bin/ping", data=b"ELF", mode=0o4755, uid=0, gid=0,
                                   xattrs={"security.capability": CAPABILITY}),
        entry("home", "dir", mode=0o750, uid=1000, gid=1000),
        entry("home/note", data=b"n", mode=0o600, uid=1000, gid=1001,
              xattrs={"user.note": b"hello", "trusted.overlay.redirect": b"/etc",
                      "security.selinux": b"system_u:object_r:etc_t:s0\0"}),
        entry("dev", "dir"), entry("dev/null", "char", mode=0o666, device=(1, 3)),
        entry("run", "dir"), entry("run/fifo", "fifo", mode=0o620),
    ])
    archive = one_image_archive(tmp_path / "image.tar", [layer], gzipped=[True])

    [image] = store.import_archive(archive)

    snapshot = snapshot_of(store, image)
    ping = os.lstat(snapshot / "bin/ping")
    assert stat.S_IMODE(ping.st_mode) == 0o4755
    assert ping.st_mtime == MTIME
    assert os.getxattr(snapshot / "bin/ping", "security.capability") == CAPABILITY
    home = os.lstat(snapshot / "home")
    assert (stat.S_IMODE(home.st_mode), home.st_uid, home.st_gid) == (0o750, 1000, 1000)
    assert home.st_mtime == MTIME
    note = os.lstat(snapshot / "home/note")
    assert (stat.S_IMODE(note.st_mode), note.st_uid, note.st_gid) == (0o600, 1000, 1001)
    assert os.listxattr(snapshot / "home/note") == ["user.note"]
    null = os.lstat(snapshot / "dev/null")
    assert stat.S_ISCHR(null.st_mode)
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    assert stat.S_IMODE(os.lstat(snapshot / "run/fifo").st_mode) == 0o620
    assert stat.S_ISFIFO(os.lstat(snapshot / "run/fifo").st_mode)


def test_import_archive_hardlink_to_symlink(store: ImageStore, root: Path, tmp_path: Path):
    host_file = tmp_path / "host-file"
    host_file.write_text("host-secret")
    layer = layer_tar([
        entry("bin", "dir"), entry("tmp", "dir", mode=0o1777), entry("tmp/target"),
        entry("tmp/sym", "symlink", link="/tmp/target"),
        entry("tmp/twin", "hardlink", link="tmp/sym"),
        entry("tmp/hostsym", "symlink", link=str(host_file)),
        entry("tmp/hosttwin", "hardlink", link="tmp/hostsym"),
        entry("tmp/dangling", "symlink", link="/nowhere/at/all"),
        entry("tmp/dangtwin", "hardlink", link="tmp/dangling"),
    ])

    [image] = store.import_archive(one_image_archive(tmp_path / "image.tar", [layer]))

    snapshot = snapshot_of(store, image)
    for source, twin, target in [("sym", "twin", "/tmp/target"),
                                 ("hostsym", "hosttwin", str(host_file)),
                                 ("dangling", "dangtwin", "/nowhere/at/all")]:
        linked = os.lstat(snapshot / "tmp" / twin)
        assert stat.S_ISLNK(linked.st_mode), twin
        assert linked.st_ino == os.lstat(snapshot / "tmp" / source).st_ino, twin
        assert linked.st_nlink == 2, twin
        assert os.readlink(snapshot / "tmp" / twin) == target
    assert os.lstat(host_file).st_nlink == 1
    assert host_file.read_text() == "host-secret"


def test_import_archive_picks_host_platform(store: ImageStore, root: Path, tmp_path: Path):
    architecture, _ = host_platform()
    other = "s390x" if architecture != "s390x" else "amd64"
    builder = ArchiveBuilder()
    images = []
    for arch in (other, architecture):
        layer = layer_tar([entry("bin", "dir"), entry("arch", data=arch.encode())])
        images.append((builder.add_image([layer]), {"os": "linux", "architecture": arch}))
    builder.tag(builder.add_nested_index(images), "example.com/multi:2")
    archive = builder.write(tmp_path / "multi.tar")

    [image] = store.import_archive(archive)

    assert image.name == "example.com/multi:2"
    assert (snapshot_of(store, image) / "arch").read_text() == architecture


def test_import_archive_rejects_foreign_platform(store: ImageStore, root: Path, tmp_path: Path):
    builder = ArchiveBuilder()
    manifest = builder.add_image([layer_tar([entry("bin", "dir")])])
    builder.tag(builder.add_nested_index([(manifest, {"os": "windows", "architecture": "amd64"})]),
                "win:1")

    with pytest.raises(FailedPrecondition, match="windows/amd64"):
        store.import_archive(builder.write(tmp_path / "win.tar"))

    assert_store_empty(store, root)


@pytest.mark.parametrize("ref, name, expected", [
    ("latest", "myimg", "myimg:latest"),
    ("v2", "registry.local:5000/team/app", "registry.local:5000/team/app:v2"),
    ("docker.io/library/busybox:1.36", None, "docker.io/library/busybox:1.36"),
    ("busybox:1.36", "renamed", "renamed:1.36"),
    ("busybox:1.36", "renamed:x", "renamed:x"),
])
def test_import_archive_names_images(store: ImageStore, tmp_path: Path, ref: str,
                                     name: str | None, expected: str):
    archive = one_image_archive(tmp_path / "image.tar", [layer_tar([entry("bin", "dir")])], ref)

    [image] = store.import_archive(archive, name)

    assert image.name == expected


def test_import_archive_bare_tag_needs_name(store: ImageStore, root: Path, tmp_path: Path):
    layers = [layer_tar([entry("bin", "dir")])]
    archive = one_image_archive(tmp_path / "image.tar", layers, "latest")

    with pytest.raises(InvalidArgument, match="repository"):
        store.import_archive(archive)

    assert_store_empty(store, root)


def test_import_archive_rejects_empty_docker_manifest(store: ImageStore, tmp_path: Path):
    path = tmp_path / "docker.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        tar.addfile(info, io.BytesIO(b""))

    with pytest.raises(InvalidArgument, match="manifest.json"):
        store.import_archive(path)


@pytest.mark.parametrize("layer_index", [0, 1], ids=["gzip-layer", "plain-layer"])
def test_import_archive_rejects_corrupt_layer(store: ImageStore, root: Path, tmp_path: Path,
                                              layer_index: int):
    builder = ArchiveBuilder()
    builder.tag(builder.add_image([lower_layer(), upper_layer(False)], [True, False]), "bad:1")
    digest = builder.layer_digests[layer_index]
    data = bytearray(builder.blobs[digest])
    data[-100] ^= 0xFF
    builder.blobs[digest] = bytes(data)

    with pytest.raises(InvalidArgument, match="corrupt") as raised:
        store.import_archive(builder.write(tmp_path / "bad.tar"))

    assert digest in str(raised.value)
    assert_store_empty(store, root)


def test_import_archive_rejects_corrupt_config(store: ImageStore, root: Path, tmp_path: Path):
    builder = ArchiveBuilder()
    builder.tag(builder.add_image([lower_layer()]), "bad:1")
    config = builder.blobs[builder.config_digest]
    builder.blobs[builder.config_digest] = config.replace(b'"linux"', b'"LINUX"')

    with pytest.raises(InvalidArgument, match="corrupt"):
        store.import_archive(builder.write(tmp_path / "bad.tar"))

    assert_store_empty(store, root)


def test_import_archive_rejects_wrong_diff_id(store: ImageStore, root: Path, tmp_path: Path):
    builder = ArchiveBuilder()
    manifest = builder.add_image([lower_layer()])
    config = json.loads(builder.blobs.pop(builder.config_digest))
    config["rootfs"]["diff_ids"] = [sha256(b"something else")]
    manifest_json = json.loads(builder.blobs.pop(manifest["digest"]))
    manifest_json["config"] = builder.add_blob("application/vnd.oci.image.config.v1+json",
                                               json.dumps(config).encode())
    builder.tag(builder.add_blob(ArchiveBuilder.MANIFEST, json.dumps(manifest_json).encode()),
                "bad:1")

    with pytest.raises(InvalidArgument, match="image config says"):
        store.import_archive(builder.write(tmp_path / "bad.tar"))

    assert_store_empty(store, root)


# Layers that try to write outside the snapshot.

def escape_entries(canary: Path) -> dict[str, list]:
    """Layers that would write into the canary folder if names or links were followed."""
    up = "../" * 30
    relative = up + str(canary).lstrip("/")
    return {
        "dotdot": [entry(f"{relative}/escape1", data=b"x")],
        "dotdot-near": [entry("../../../canary/escape1", data=b"x")],
        "absolute": [entry(f"{canary}/escape2", data=b"x")],
        "symlink-absolute": [entry("evil", "symlink", link=str(canary)),
                             entry("evil/escape3", data=b"x")],
        "symlink-relative": [entry("rel", "symlink", link=relative),
                             entry("rel/escape4", data=b"x")],
        "symlink-up": [entry("sub", "dir"), entry("sub/up", "symlink", link=".."),
                       entry("sub/up/up/up/escape5", data=b"x")],
        "hardlink-dotdot": [entry("stolen", "hardlink", link=f"{relative}/canary")],
        "hardlink-through-symlink": [entry("evil", "symlink", link=str(canary)),
                                     entry("stolen", "hardlink", link="evil/canary")],
        "whiteout-through-symlink": [entry("evil", "symlink", link=str(canary)),
                                     entry("evil/.wh.canary")],
        "opaque-through-symlink": [entry("evil", "symlink", link=str(canary)),
                                   entry("evil/.wh..wh..opq")],
    }


ESCAPES = {"dotdot": "escape1", "dotdot-near": "escape1", "absolute": "escape2",
           "symlink-absolute": "evil/escape3", "symlink-relative": "rel/escape4",
           "symlink-up": "sub/up/up/up/escape5", "hardlink-dotdot": "canary",
           "hardlink-through-symlink": "stolen", "whiteout-through-symlink": "evil/.wh.canary",
           "opaque-through-symlink": "evil/.wh..wh..opq"}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_import_archive_rejects_escape(store: ImageStore, root: Path, tmp_path: Path,
                                       canary: Path, case: str):
    entries = [entry("bin", "dir")] + escape_entries(canary)[case]
    archive = one_image_archive(tmp_path / "evil.tar", [layer_tar(entries)])

    with pytest.raises(InvalidArgument) as raised:
        store.import_archive(archive)

    assert ESCAPES[case] in str(raised.value)
    assert_canary_untouched(canary)
    assert_store_empty(store, root)


def test_import_archive_rejects_lower_symlink(store: ImageStore, root: Path,
                                                      tmp_path: Path, canary: Path):
    lower = layer_tar([entry("bin", "dir"), entry("evil", "symlink", link=str(canary))])
    upper = layer_tar([entry("evil/escape", data=b"x")])
    archive = one_image_archive(tmp_path / "evil.tar", [lower, upper])

    with pytest.raises(InvalidArgument, match="symbolic link"):
        store.import_archive(archive)

    assert_canary_untouched(canary)
    assert_store_empty(store, root)


def test_import_archive_replaces_symlinks(store: ImageStore, root: Path, tmp_path: Path,
                                         canary: Path):
    os.chmod(canary, 0o755)
    lower = layer_tar([entry("bin", "dir"), entry("file", "symlink", link=f"{canary}/canary"),
                       entry("folder", "symlink", link=str(canary))])
    upper = layer_tar([entry("file", data=b"image"), entry("folder", "dir", mode=0o700)])

    [image] = store.import_archive(one_image_archive(tmp_path / "image.tar", [lower, upper]))

    snapshot = snapshot_of(store, image)
    assert (snapshot / "file").read_bytes() == b"image"
    assert not (snapshot / "file").is_symlink()
    assert stat.S_ISDIR(os.lstat(snapshot / "folder").st_mode)
    assert stat.S_IMODE(os.lstat(canary).st_mode) == 0o755
    assert_canary_untouched(canary)


def test_import_archive_failure_keeps_others(store: ImageStore, root: Path,
                                                   tmp_path: Path, small_rootfs: Path):
    kept = store.import_rootfs("kept", small_rootfs)
    archive = one_image_archive(tmp_path / "evil.tar", [layer_tar([entry("/abs", data=b"x")])])

    with pytest.raises(InvalidArgument, match="'/abs'"):
        store.import_archive(archive)

    assert store.list() == [kept]
    assert os.listdir(store.snapshots.folder) == [kept.snapshot]
    assert len(os.listdir(root / "blobs/sha256")) == 3


# Lookup and removal.

def test_get_by_name_id_and_prefix(store: ImageStore, small_rootfs: Path):
    image = store.import_rootfs("lookup:v1", small_rootfs)
    digits = image.id.removeprefix("sha256:")

    assert store.get("lookup:v1") == image
    assert store.get(image.id) == image
    assert store.get(digits) == image
    assert store.get(digits[:4]) == image
    assert store.get("sha256:" + digits[:8]) == image


@pytest.mark.parametrize("ref", ["lookup", "other:v1", "abc", "0000"])
def test_get_unknown_ref(store: ImageStore, small_rootfs: Path, ref: str):
    store.import_rootfs("lookup:v1", small_rootfs)

    with pytest.raises(NotFound, match="moor image ls") as raised:
        store.get(ref)

    assert repr(ref) in str(raised.value)


def test_remove_counts_references(store: ImageStore, root: Path, tmp_path: Path):
    builder = ArchiveBuilder()
    manifest = builder.add_image([lower_layer()])
    builder.tag(manifest, "one")
    builder.tag(manifest, "two")
    first, second = store.import_archive(builder.write(tmp_path / "image.tar"), "repo")
    assert (first.name, second.name) == ("repo:one", "repo:two")
    assert first.manifest_digest == second.manifest_digest

    assert store.remove("repo:one") == ["repo:one"]
    assert (store.snapshots.folder / second.snapshot).is_dir()
    assert len(os.listdir(root / "blobs/sha256")) == 3

    assert store.remove("repo:two") == ["repo:two", second.id]
    assert_store_empty(store, root)


def test_remove_keeps_shared_snapshot(store: ImageStore, root: Path, small_rootfs: Path):
    first = store.import_rootfs("first", small_rootfs, {"Cmd": ["a"]})
    second = store.import_rootfs("second", small_rootfs, {"Cmd": ["b"]})
    assert first.snapshot == second.snapshot
    assert first.id != second.id

    assert store.remove(first.id) == ["first:latest", first.id]

    assert (store.snapshots.folder / second.snapshot).is_dir()
    assert store.list() == [second]
    assert len(os.listdir(root / "blobs/sha256")) == 3


def test_remove_rejects_image_in_use(store: ImageStore, root: Path, small_rootfs: Path):
    image = store.import_rootfs("busy", small_rootfs)

    with pytest.raises(FailedPrecondition, match="moor rm"):
        store.remove("busy", in_use=lambda snapshot: snapshot == image.snapshot)

    assert store.list() == [image]
    assert (store.snapshots.folder / image.snapshot).is_dir()


def test_remove_untags_despite_use(store: ImageStore, small_rootfs: Path):
    image = store.import_rootfs("busy:1", small_rootfs)
    # A tag, not a second import: two imports a second apart differ in their config's created time.
    store.tag("busy:1", "busy:2")

    removed = store.remove("busy:1", in_use=lambda snapshot: True)

    assert removed == ["busy:1"]
    assert store.get("busy:2").snapshot == image.snapshot


def test_remove_unknown_ref(store: ImageStore):
    with pytest.raises(NotFound, match="nothing"):
        store.remove("nothing")


def test_store_reopen_removes_leftovers(store: ImageStore, root: Path, small_rootfs: Path):
    image = store.import_rootfs("kept", small_rootfs)
    (store.snapshots.folder / ".tmp-crashed").mkdir()
    (store.snapshots.folder / ("0" * 64)).mkdir()
    (root / "blobs/sha256" / ("1" * 64)).write_bytes(b"orphan")
    (root / "blobs/ingest/blob-partial").write_bytes(b"part")

    reopened = ImageStore(root, root / "moorage.db", store.snapshotter)

    assert reopened.list() == [image]
    assert os.listdir(store.snapshots.folder) == [image.snapshot]
    assert len(os.listdir(root / "blobs/sha256")) == 3
    assert os.listdir(root / "blobs/ingest") == []


# Container roots.

def test_overlay_root_unmount_keeps_changes(root: Path, tmp_path: Path, small_rootfs: Path):
    store = ImageStore(root, root / "moorage.db", "overlayfs")
    dest = tmp_path / "containers" / "c1" / "rootfs"
    store.prepare_rootfs(store.import_rootfs("small", small_rootfs), dest)
    (dest / "added").write_text("kept")

    store.unmount_rootfs(dest)
    unmounted = os.path.ismount(dest)
    store.mount_rootfs(dest)

    assert not unmounted
    assert os.path.ismount(dest)
    assert (dest / "added").read_text() == "kept"
    store.remove_rootfs(dest)
    assert not os.path.lexists(dest)
    assert not os.path.lexists(dest.with_name("rootfs.upper"))


def test_prepare_rootfs_keeps_metadata(rootfs_store: ImageStore, tmp_path: Path, small_rootfs: Path):
    image = rootfs_store.import_rootfs("small", small_rootfs)
    dest = tmp_path / "containers" / "c1" / "rootfs"

    rootfs_store.prepare_rootfs(image, dest)

    assert stat.S_IMODE(os.lstat(dest / "bin/prog").st_mode) == 0o4755
    assert os.readlink(dest / "bin/alias") == "/bin/prog"
    assert os.lstat(dest / "etc/conf").st_ino == os.lstat(dest / "etc/conf-twin").st_ino
    assert os.lstat(dest / "etc/conf").st_uid == 1234
    assert os.getxattr(dest / "etc/conf", "user.note") == b"hello"
    expected = ["rootfs"] if rootfs_store.snapshotter == "copy" else [
        "rootfs", "rootfs.lower", "rootfs.upper", "rootfs.work"]
    assert sorted(os.listdir(dest.parent)) == expected


def test_prepare_rootfs_rejects_existing(rootfs_store: ImageStore, tmp_path: Path, small_rootfs: Path):
    image = rootfs_store.import_rootfs("small", small_rootfs)
    dest = tmp_path / "container-root"
    dest.mkdir()

    with pytest.raises(AlreadyExists, match=str(dest)):
        rootfs_store.prepare_rootfs(image, dest)


def test_prepare_rootfs_busybox_runs(rootfs_store: ImageStore, tmp_path: Path):
    dest = tmp_path / "rootfs"
    rootfs_store.prepare_rootfs(rootfs_store.ensure_busybox(), dest)

    result = subprocess.run(["chroot", str(dest), "/bin/sh", "-c", "echo ok > /tmp/x; cat /tmp/x"],
                            capture_output=True, text=True, timeout=30)

    assert result.stdout == "ok\n"


def test_remove_rootfs_keeps_link_targets(rootfs_store: ImageStore, tmp_path: Path, small_rootfs: Path,
                                          canary: Path):
    dest = tmp_path / "container-root"
    rootfs_store.prepare_rootfs(rootfs_store.import_rootfs("small", small_rootfs), dest)
    os.symlink(canary, dest / "to-canary")
    os.symlink(canary / "canary", dest / "to-canary-file")

    rootfs_store.remove_rootfs(dest)
    rootfs_store.remove_rootfs(dest)

    assert not os.path.lexists(dest)
    assert_canary_untouched(canary)


# A full disk, for real: the store's root on a small tmpfs.

@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MiB tmpfs; unmounted at teardown."""
    path = tmp_path / "small-disk"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], check=True, timeout=30)
    try:
        yield path
    finally:
        unmount_under(path)
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@pytest.mark.parametrize("kind", ["copy", "overlayfs"])
def test_full_disk_import_leaves_nothing(small_disk: Path, tmp_path: Path, small_rootfs: Path, kind: str):
    root = small_disk / "root"
    store = ImageStore(root, root / "moorage.db", kind)
    kept = store.import_rootfs("kept", small_rootfs)
    blobs = sorted(os.listdir(root / "blobs/sha256"))
    big = one_image_archive(tmp_path / "big.tar", [layer_tar([entry("big", data=os.urandom(6 << 20))])])

    with pytest.raises(MoorError, match="space"):
        store.import_archive(big)

    assert store.list() == [kept]
    assert sorted(os.listdir(root / "blobs/sha256")) == blobs
    assert os.listdir(root / "blobs/ingest") == []
    assert kept.snapshot in os.listdir(store.snapshots.folder)
