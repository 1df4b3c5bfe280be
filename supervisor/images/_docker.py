"""``docker save`` archives: a ``manifest.json`` that lists each image's config, layers and tags.

The reader presents each entry as a Docker v2 schema 2 manifest made on the fly,
so that the store imports it like a manifest of an OCI layout.  Newer docker
versions also put an OCI layout in the same archive; ``manifest.json`` is read
first because it lists every tag.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import BinaryIO

from shim.protocol import FailedPrecondition, InvalidArgument

from . import _oci
from ._content import check_digest
from ._reference import normalize_name, parse_reference

_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class DockerArchive:
    """Read-only view of a ``docker save`` archive through the OciArchive interface."""

    def __init__(self, layout: _oci.OciArchive):
        self.path = layout.path
        self._layout = layout
        self._documents: dict[str, bytes] = {}
        self._layers: dict[str, str] = {}
        self._entries: list[tuple[list[str], _oci.Descriptor, dict]] = []

        try:
            entries = json.loads(self._read_text("manifest.json"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InvalidArgument(f"{self.path}: manifest.json is not valid JSON: {error}") from error
        if not isinstance(entries, list) or not entries:
            raise InvalidArgument(f"{self.path}: manifest.json must be a non-empty list")
        for index, entry in enumerate(entries):
            self._entries.append(self._load_entry(entry, f"{self.path}: manifest.json entry {index}"))

    def _read_text(self, name: str) -> bytes:
        size = self._layout.members().get(name)
        if size is None:
            raise InvalidArgument(f"{self.path}: {name} is missing from the archive")
        if size > _oci.MAX_DOCUMENT_BYTES:
            raise InvalidArgument(f"{self.path}: {name} is larger than "
                                  f"{_oci.MAX_DOCUMENT_BYTES} bytes")
        with self._layout.open_member(name) as member:
            return member.read()

    def _load_entry(self, entry: object, where: str) -> tuple[list[str], _oci.Descriptor, dict]:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) \
                or not isinstance(entry.get("Layers"), list):
            raise InvalidArgument(f"{where} needs a Config name and a Layers list")
        tags = entry.get("RepoTags") or []
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise InvalidArgument(f"{where}: RepoTags must be a list of names")

        config_data = self._read_text(_member_name(entry["Config"]))
        config = _oci.parse_json(config_data, f"{where}: config {entry['Config']}")
        config_descriptor = self._add_document(_oci.MEDIA_DOCKER_CONFIG, config_data)
        rootfs = config.get("rootfs") if isinstance(config.get("rootfs"), dict) else {}
        diff_ids = rootfs.get("diff_ids") or []
        if not isinstance(diff_ids, list) or len(diff_ids) != len(entry["Layers"]):
            raise InvalidArgument(f"{where}: the config lists {len(diff_ids)} diff ids for "
                                  f"{len(entry['Layers'])} layers")

        layers = [self._layer_descriptor(_member_name(name), diff_id, where)
                  for name, diff_id in zip(entry["Layers"], diff_ids)]
        manifest = {"schemaVersion": 2, "mediaType": _oci.MEDIA_DOCKER_MANIFEST,
                    "config": _descriptor_json(config_descriptor),
                    "layers": [_descriptor_json(layer) for layer in layers]}
        data = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        return tags, self._add_document(_oci.MEDIA_DOCKER_MANIFEST, data), config

    def _add_document(self, media_type: str, data: bytes) -> _oci.Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self._documents[digest] = data
        return _oci.Descriptor(media_type, digest, len(data))

    def _layer_descriptor(self, name: str, diff_id: object, where: str) -> _oci.Descriptor:
        """Describe a layer file; a plain tar's digest is its diff id, verified when stored."""
        size = self._layout.members().get(name)
        if size is None:
            raise InvalidArgument(f"{where}: layer {name} is missing from the archive")
        with self._layout.open_member(name) as member:
            magic = member.read(4)
        if magic[:2] == _GZIP_MAGIC:
            media_type = "application/vnd.docker.image.rootfs.diff.tar.gzip"
        elif magic == _ZSTD_MAGIC:
            media_type = _oci.MEDIA_LAYER + "+zstd"
        else:
            digest = check_digest(diff_id, where)
            self._layers[digest] = name
            return _oci.Descriptor("application/vnd.docker.image.rootfs.diff.tar", digest, size)

        digest = hashlib.sha256()
        with self._layout.open_member(name) as member:
            while chunk := member.read(_CHUNK):
                digest.update(chunk)
        descriptor = _oci.Descriptor(media_type, "sha256:" + digest.hexdigest(), size)
        self._layers[descriptor.digest] = name
        return descriptor

    def close(self) -> None:
        self._layout.close()

    def __enter__(self) -> DockerArchive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def targets(self, name: str | None, wanted: str | None = None) -> list[tuple[str, _oci.Descriptor]]:
        """Return (image name, manifest) pairs: one per tag, for the platform ``wanted``."""
        os_name, architecture, _ = _oci.parse_platform(wanted)
        chosen = []
        for tags, manifest, config in self._entries:
            if (config.get("os"), config.get("architecture")) != (os_name, architecture):
                continue
            chosen.append((tags, manifest))
        if not chosen:
            raise FailedPrecondition(
                f"{self.path} has no image for {_oci.platform_text(wanted)}; save the image "
                "for this platform")

        if name is not None and parse_reference(name)[1] is not None:
            if len(chosen) != 1:
                raise InvalidArgument(
                    f"{self.path} contains {len(chosen)} images, so the tagged name {name!r} "
                    "cannot name them all; pass a repository without a tag")
            return [(normalize_name(name), chosen[0][1])]

        named = []
        for tags, manifest in chosen:
            if not tags and name is None:
                raise InvalidArgument(
                    f"{self.path}: image {manifest.digest} has no RepoTags; pass a name for "
                    "the import, e.g. myimage")
            names = [normalize_name(tag) for tag in tags] or [normalize_name(name)]
            named.extend((image_name, manifest) for image_name in names)
        return named

    def read_document(self, descriptor: _oci.Descriptor) -> bytes:
        return self._documents[descriptor.digest]

    def open_blob(self, descriptor: _oci.Descriptor) -> BinaryIO:
        return self._layout.open_member(self._layers[descriptor.digest])


def open_image_source(path: Path) -> _oci.OciArchive | DockerArchive:
    """Open an OCI archive or layout folder, or a ``docker save`` archive."""
    if not path.exists():
        raise InvalidArgument(f"{path} does not exist; check the path")
    layout = _oci.OciArchive(path, check=False)
    try:
        if "manifest.json" in layout.members():
            return DockerArchive(layout)
        layout._check_layout()
    except BaseException:
        layout.close()
        raise
    return layout


def _member_name(name: str) -> str:
    import posixpath
    return posixpath.normpath(name).lstrip("/")


def _descriptor_json(descriptor: _oci.Descriptor) -> dict:
    return {"mediaType": descriptor.media_type, "digest": descriptor.digest,
            "size": descriptor.size}
