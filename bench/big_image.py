"""The large image of the pull benchmark: busybox plus layers of many random files.

The first layer is the busybox root of ``busybox_image``, so that containers of
this image can run ``sleep``.  Each further layer contains many small files and a
few large ones, filled with random bytes so that gzip cannot shrink them, spread
over nested folders.  Every layer is gzip-compressed (level 1), as registries
usually serve layers.  The image is written as a one-image OCI archive that
``moor image import`` reads; the benchmark then pushes it to the registry.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import random
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from busybox_image import (_ARCHITECTURES, MEDIA_CONFIG, MEDIA_INDEX, MEDIA_MANIFEST, PATH_ENV, _layer_tar,
                           build_rootfs)

MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
SMALL_FILE_MAX = 16 * 1024  # small files are 1 byte to 16 KiB
LARGE_FILE_BYTES = 4 * 10**6
FILES_PER_FOLDER = 100


@dataclass(frozen=True)
class BigImage:
    archive: Path
    layers: int
    files: int
    tar_bytes: int  # uncompressed, all layers
    blob_bytes: int  # compressed, as pushed and pulled
    layer_digests: tuple[str, ...]


class _HashingWriter:
    """A file object that hashes and counts what goes through it to ``target``."""

    def __init__(self, target):
        self.target = target
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.target.write(data)


class _GzipWriter:
    """Compress to gzip with zlib at level 1 (faster than the gzip module's default of 9)."""

    def __init__(self, target):
        self.target = target
        self.compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def write(self, data: bytes) -> int:
        self.target.write(self.compressor.compress(data))
        return len(data)

    def close(self) -> None:
        self.target.write(self.compressor.flush())


def _write_gzip_layer(tar_bytes_source, path: Path) -> tuple[str, str, int, int]:
    """Write a layer through ``tar_bytes_source(writer)`` and return (blob digest, diff id, blob size, tar size)."""
    with open(path, "wb") as out:
        blob = _HashingWriter(out)
        compressor = _GzipWriter(blob)
        tar_stream = _HashingWriter(compressor)
        tar_bytes_source(tar_stream)
        compressor.close()
    return ("sha256:" + blob.digest.hexdigest(), "sha256:" + tar_stream.digest.hexdigest(), blob.size,
            tar_stream.size)


def _random_layer(writer, index: int, small_files: int, large_files: int, rng: random.Random) -> None:
    """Write one tar of ``small_files`` small and ``large_files`` large random files to ``writer``."""
    top = f"data/layer{index}"
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for folder in ("data", top):
            info = tarfile.TarInfo(folder)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1700000000
            tar.addfile(info)
        folders = set()
        sizes = [rng.randint(1, SMALL_FILE_MAX) for _ in range(small_files)] + [LARGE_FILE_BYTES] * large_files
        for number, size in enumerate(sizes):
            folder = f"{top}/d{number // FILES_PER_FOLDER:03d}"
            if folder not in folders:
                folders.add(folder)
                info = tarfile.TarInfo(folder)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1700000000
                tar.addfile(info)
            info = tarfile.TarInfo(f"{folder}/f{number:05d}")
            info.size, info.mode, info.mtime = size, 0o644, 1700000000
            tar.addfile(info, io.BytesIO(os.urandom(size)))


def build(base: Path, busybox: Path, total_mb: int = 200, layers: int = 5, small_files: int = 2000) -> BigImage:
    """Write the OCI archive of the large image under ``base`` and return its figures.

    ``layers`` random layers share ``total_mb`` megabytes (10**6 bytes): each gets
    ``small_files`` small files (8 KiB on average) and as many 4 MB files as fill the rest.
    NOTE: the small files alone make about 16 MB per layer, so a smaller ``total_mb`` gives a larger image.
    """
    folder = base / "big-image"
    blobs = folder / "blobs"
    blobs.mkdir(parents=True)
    rootfs = folder / "rootfs"
    rootfs.mkdir()
    build_rootfs(rootfs, busybox)

    rng = random.Random(1)
    per_layer = total_mb * 10**6 // layers
    large_files = max(0, round((per_layer - small_files * SMALL_FILE_MAX / 2) / LARGE_FILE_BYTES))
    sources = [lambda writer: writer.write(_layer_tar(rootfs))]
    for index in range(layers):
        sources.append(lambda writer, index=index: _random_layer(writer, index, small_files, large_files, rng))

    descriptors, diff_ids, tar_total = [], [], 0
    for number, source in enumerate(sources):
        path = blobs / f"layer{number}"
        digest, diff_id, size, tar_size = _write_gzip_layer(source, path)
        path.rename(blobs / digest.split(":", 1)[1])
        descriptors.append({"mediaType": MEDIA_LAYER_GZIP, "digest": digest, "size": size})
        diff_ids.append(diff_id)
        tar_total += tar_size

    config = {"architecture": _ARCHITECTURES.get(platform.machine(), platform.machine()), "os": "linux",
              "config": {"Env": [PATH_ENV], "Cmd": ["sh"], "WorkingDir": "/"},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config_bytes)},
                "layers": descriptors}
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX,
             "manifests": [{"mediaType": MEDIA_MANIFEST, "digest": manifest_digest, "size": len(manifest_bytes),
                            "annotations": {"org.opencontainers.image.ref.name": "1"}}]}

    archive = base / "big-oci.tar"
    with tarfile.open(archive, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
                           ("index.json", json.dumps(index, sort_keys=True).encode()),
                           ("blobs/sha256/" + config_digest.split(":", 1)[1], config_bytes),
                           ("blobs/sha256/" + manifest_digest.split(":", 1)[1], manifest_bytes)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for descriptor in descriptors:
            hexdigest = descriptor["digest"].split(":", 1)[1]
            tar.add(blobs / hexdigest, arcname="blobs/sha256/" + hexdigest)
    blob_total = sum(descriptor["size"] for descriptor in descriptors)
    for path in blobs.iterdir():
        path.unlink()
    return BigImage(archive=archive, layers=len(descriptors),
                    files=layers * (small_files + large_files), tar_bytes=tar_total, blob_bytes=blob_total,
                    layer_digests=tuple(descriptor["digest"] for descriptor in descriptors))
