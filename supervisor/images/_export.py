"""Write images to one tar archive that is both an OCI layout and a ``docker save`` archive.

The archive has ``oci-layout``, ``index.json`` (one entry per name, with the
full name as ``org.opencontainers.image.ref.name``), ``manifest.json`` (one
entry per image, every name in ``RepoTags``) and ``blobs/sha256/<hex>``.
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from pathlib import Path

from shim.protocol import InvalidArgument

from . import _oci
from ._content import ContentStore, fsync_dir
from ._db import ImageRecord


def write_archive(content: ContentStore, records: list[ImageRecord], target: Path) -> None:
    """Write the images of ``records`` to ``target``, replacing it only once complete."""
    if not target.parent.is_dir():
        raise InvalidArgument(f"folder {target.parent} does not exist; create it or choose "
                              "another output file")

    by_manifest: dict[str, list[ImageRecord]] = {}
    for record in records:
        by_manifest.setdefault(record.image.manifest_digest, []).append(record)

    index, docker_entries, blobs = [], [], []
    for manifest_digest, named in by_manifest.items():
        manifest_data = content.read(manifest_digest)
        manifest = json.loads(manifest_data)
        for record in named:
            index.append({"mediaType": manifest.get("mediaType", _oci.MEDIA_MANIFEST),
                          "digest": manifest_digest, "size": len(manifest_data),
                          "annotations": {_oci.ANNOTATION_REF_NAME: record.image.name}})
        docker_entries.append({
            "Config": _blob_name(manifest["config"]["digest"]),
            "RepoTags": [record.image.name for record in named],
            "Layers": [_blob_name(layer["digest"]) for layer in manifest["layers"]],
        })
        for digest in named[0].blobs:
            if digest not in blobs:
                blobs.append(digest)

    documents = {
        "oci-layout": {"imageLayoutVersion": "1.0.0"},
        "index.json": {"schemaVersion": 2, "mediaType": _oci.MEDIA_INDEX, "manifests": index},
        "manifest.json": docker_entries,
    }
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w|",
                                                      format=tarfile.PAX_FORMAT) as tar:
            for name, document in documents.items():
                data = json.dumps(document, indent=None, separators=(",", ":")).encode()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, _BytesReader(data))
            for digest in blobs:
                path = content.path(digest)
                info = tarfile.TarInfo(_blob_name(digest))
                info.size = path.stat().st_size
                info.mode = 0o644
                with open(path, "rb") as source:
                    tar.addfile(info, source)
            out.flush()
            os.fsync(out.fileno())
        os.rename(temp_name, target)
        fsync_dir(target.parent)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


class _BytesReader:
    def __init__(self, data: bytes):
        self._data = memoryview(data)

    def read(self, size: int = -1) -> bytes:
        size = len(self._data) if size < 0 else size
        chunk, self._data = self._data[:size], self._data[size:]
        return bytes(chunk)
