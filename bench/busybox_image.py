"""The one busybox image that every path of the benchmark runs.

The root filesystem is the host's static busybox plus one symlink per applet.
It is packed once as an OCI image archive, which both moord and containerd
import, and copied once into a plain runtime bundle for ``runc run``.  So all
three paths start the same files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_FOLDERS = {"bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
            "etc": 0o755, "proc": 0o555, "sys": 0o555, "dev": 0o755, "tmp": 0o1777,
            "root": 0o700, "var": 0o755}
_FILES = {"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
          "etc/group": "root:x:0:\nnogroup:x:65534:\n"}
# GOARCH names, as the OCI image config's "architecture" uses them.
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
                  "s390x": "s390x", "riscv64": "riscv64"}


@dataclass(frozen=True)
class BenchImage:
    """Paths of the benchmark's image in each of its forms, and its names in each store."""

    rootfs: Path
    archive: Path
    bundle: Path
    containerd_name: str
    moor_name: str
    layer_bytes: int


def build_rootfs(folder: Path, busybox: Path) -> None:
    """Fill the empty ``folder`` with bin/busybox, its applet symlinks and a minimal /etc."""
    for name, mode in _FOLDERS.items():
        (folder / name).mkdir()
        os.chmod(folder / name, mode)
    shutil.copyfile(busybox, folder / "bin/busybox")
    os.chmod(folder / "bin/busybox", 0o755)

    listing = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True)
    for applet in listing.stdout.split():
        target = folder / applet
        if applet == "bin/busybox" or target.exists() or target.is_symlink():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink("/bin/busybox", target)

    for name, text in _FILES.items():
        (folder / name).write_text(text)
        os.chmod(folder / name, 0o644)


def _layer_tar(rootfs: Path) -> bytes:
    """Return an uncompressed layer tar of ``rootfs``, entries sorted, owned by root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory, folders, files in os.walk(rootfs):
            folders.sort()
            for name in sorted(folders + files):
                path = Path(directory, name)
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(rootfs)))
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                if info.isfile():
                    with open(path, "rb") as handle:
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info)
    return buffer.getvalue()


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def write_oci_archive(rootfs: Path, archive: Path, tag: str, containerd_name: str) -> int:
    """Pack ``rootfs`` as a one-layer OCI image archive and return the layer's size in bytes.

    The index entry carries the bare tag as ``org.opencontainers.image.ref.name``
    (moor adds the repository given to ``moor image import --name``) and the full
    name as ``io.containerd.image.name``, which ``ctr images import`` uses.
    """
    layer_digest, layer = _blob(_layer_tar(rootfs))
    config = {
        "architecture": _ARCHITECTURES.get(platform.machine(), platform.machine()),
        "os": "linux",
        "config": {"Env": [PATH_ENV], "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_digest, config_bytes = _blob(json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": len(layer)}],
    }
    manifest_digest, manifest_bytes = _blob(json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2, "mediaType": MEDIA_INDEX,
        "manifests": [{"mediaType": MEDIA_MANIFEST, "digest": manifest_digest, "size": len(manifest_bytes),
                       "annotations": {"org.opencontainers.image.ref.name": tag,
                                       "io.containerd.image.name": containerd_name}}],
    }

    members = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
               "index.json": json.dumps(index, sort_keys=True).encode()}
    for digest, data in ((layer_digest, layer), (config_digest, config_bytes), (manifest_digest, manifest_bytes)):
        members["blobs/sha256/" + digest.split(":", 1)[1]] = data
    with tarfile.open(archive, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return len(layer)


def write_runc_bundle(rootfs: Path, bundle: Path, runc: str) -> None:
    """Make a plain runtime bundle running ``true``: ``runc spec`` with a writable root, no terminal."""
    bundle.mkdir()
    subprocess.run(["cp", "-a", f"{rootfs}/.", str(bundle / "rootfs")], check=True)
    subprocess.run([runc, "spec", "--bundle", str(bundle)], check=True)
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["true"]
    # moor and ctr give a container a writable root by default; runc spec's is read-only.
    config["root"]["readonly"] = False
    config_path.write_text(json.dumps(config, indent=1))


def build(base: Path, busybox: Path, runc: str) -> BenchImage:
    """Build the root filesystem, its OCI archive and the runc bundle under ``base``."""
    rootfs = base / "rootfs"
    rootfs.mkdir()
    build_rootfs(rootfs, busybox)
    archive = base / "busybox-oci.tar"
    containerd_name = "docker.io/library/busybox:moorbench"
    layer_bytes = write_oci_archive(rootfs, archive, "latest", containerd_name)
    bundle = base / "bundle"
    write_runc_bundle(rootfs, bundle, runc)
    return BenchImage(rootfs=rootfs, archive=archive, bundle=bundle, containerd_name=containerd_name,
                      moor_name="busybox", layer_bytes=layer_bytes)
