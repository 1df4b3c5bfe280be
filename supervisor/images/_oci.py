"""OCI image-spec documents, and image layouts stored in tar archives.

An OCI archive is a tar of an image layout: ``oci-layout``, ``index.json`` and
``blobs/sha256/<hex>``, as ``umoci`` and ``skopeo copy ... oci-archive:`` write it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import posixpath
import stat
import tarfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from shim.protocol import FailedPrecondition, InvalidArgument

from ._content import check_digest
from ._reference import is_tag, normalize_name, parse_reference

log = logging.getLogger(__name__)

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

INDEX_TYPES = frozenset({MEDIA_INDEX, MEDIA_DOCKER_LIST})
MANIFEST_TYPES = frozenset({MEDIA_MANIFEST, MEDIA_DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({MEDIA_CONFIG, MEDIA_DOCKER_CONFIG})
LAYER_TYPES = frozenset({
    MEDIA_LAYER,
    MEDIA_LAYER + "+gzip",
    MEDIA_LAYER + "+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
})
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

# Upper bound for index, manifest and config documents, which are read into memory.
MAX_DOCUMENT_BYTES = 8 * 1024 * 1024

# platform.machine() values mapped to OCI (GOARCH) architecture names and variants.
_ARCHITECTURES = {
    "x86_64": ("amd64", None), "amd64": ("amd64", None),
    "aarch64": ("arm64", None), "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
    "i386": ("386", None), "i686": ("386", None),
    "ppc64le": ("ppc64le", None), "s390x": ("s390x", None), "riscv64": ("riscv64", None),
}


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: media type, digest and size of a referenced blob."""

    media_type: str
    digest: str
    size: int
    annotations: dict = field(default_factory=dict)
    platform: dict | None = None


def host_platform() -> tuple[str, str | None]:
    """Return the host's OCI architecture and variant, such as ("amd64", None)."""
    machine = platform.machine()
    return _ARCHITECTURES.get(machine, (machine, None))


def parse_platform(text: str | None) -> tuple[str, str, str | None]:
    """Parse ``OS/ARCH[/VARIANT]`` (the host's when None) into (os, architecture, variant)."""
    if text is None:
        return ("linux", *host_platform())
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidArgument(
            f"invalid platform {text!r}: expected OS/ARCHITECTURE[/VARIANT], e.g. linux/amd64")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def platform_matches(required: dict | None, wanted: str | None = None) -> bool:
    """Tell whether a descriptor's platform is ``wanted`` (default: the host's).

    A descriptor without a platform matches any.
    """
    if required is None:
        return True

    os_name, architecture, variant = parse_platform(wanted)
    if required.get("os") != os_name or required.get("architecture") != architecture:
        return False
    return variant is None or required.get("variant") in (None, variant)


def chain_id(diff_ids: list[str]) -> str:
    """Return the OCI chain id of a layer stack: the identity of the unpacked result."""
    chain = diff_ids[0]
    for diff_id in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
    return chain


def parse_created(value: object) -> float | None:
    """Convert an RFC 3339 ``created`` field to unix time, or None if absent or invalid."""
    if not isinstance(value, str):
        return None

    text = value.replace("Z", "+00:00")
    head, dot, tail = text.partition(".")
    if dot:
        digits = len(tail) - len(tail.lstrip("0123456789"))
        text = f"{head}.{tail[:min(digits, 6)]}{tail[digits:]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def parse_json(data: bytes, where: str) -> dict:
    """Decode a JSON object, or raise InvalidArgument naming where it comes from."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidArgument(f"{where} is not valid JSON: {error}") from error

    if not isinstance(document, dict):
        raise InvalidArgument(f"{where} is not a JSON object")
    return document


def parse_descriptor(value: object, where: str) -> Descriptor:
    """Validate one descriptor object of an index or a manifest."""
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: a descriptor is not a JSON object")

    media_type = value.get("mediaType")
    size = value.get("size")
    if not isinstance(media_type, str):
        raise InvalidArgument(f"{where}: a descriptor has no mediaType")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgument(f"{where}: descriptor {value.get('digest')!r} has an invalid size")

    annotations = value.get("annotations") or {}
    found_platform = value.get("platform")
    if not isinstance(annotations, dict) or not isinstance(found_platform, (dict, type(None))):
        raise InvalidArgument(f"{where}: descriptor {value.get('digest')!r} is malformed")
    return Descriptor(media_type, check_digest(value.get("digest"), where), size,
                      annotations, found_platform)


def descriptor_list(document: dict, key: str, where: str) -> list[Descriptor]:
    """Validate the list of descriptors stored under ``key``."""
    values = document.get(key)
    if not isinstance(values, list):
        raise InvalidArgument(f"{where} has no {key!r} list")
    return [parse_descriptor(value, where) for value in values]


class OciArchive:
    """Read-only view of an OCI image layout: a folder, or a tar archive (plain or compressed).

    A ``docker save`` archive is a tar too; ``members`` and ``open_member`` serve
    its reader as well.
    """

    def __init__(self, path: Path, check: bool = True):
        self.path = path
        self._tar: tarfile.TarFile | None = None
        if path.is_dir():
            self._sizes = _folder_sizes(path)
        else:
            self._sizes = self._open_tar(path)
        if check:
            self._check_layout()

    def _open_tar(self, path: Path) -> dict[str, int]:
        try:
            self._tar = tarfile.open(path, "r:*")
            members = self._tar.getmembers()
        except FileNotFoundError:
            raise InvalidArgument(f"archive {path} does not exist; check the path") from None
        except (tarfile.TarError, EOFError) as error:
            raise InvalidArgument(
                f"{path} is not a tar archive ({error}); pass an OCI archive, an OCI layout "
                "folder or a `docker save` archive") from error

        self._members = {posixpath.normpath(member.name).lstrip("/"): member
                         for member in members if member.isfile() or member.islnk()}
        return {name: member.size for name, member in self._members.items()}

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()

    def __enter__(self) -> OciArchive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def members(self) -> dict[str, int]:
        """Return the size of every file, by its normalized name."""
        return self._sizes

    def open_member(self, name: str) -> BinaryIO:
        if self._tar is None:
            fd = os.open(self.path / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            return open(fd, "rb")
        return self._tar.extractfile(self._members[name])

    def _check_layout(self) -> None:
        if "oci-layout" in self._sizes:
            layout = self.read_member("oci-layout")
            if not isinstance(layout.get("imageLayoutVersion"), str):
                raise InvalidArgument(f"{self.path}: oci-layout has no imageLayoutVersion")
            return
        raise InvalidArgument(
            f"{self.path} is not an OCI layout: it has no oci-layout file; pass an OCI archive "
            "or folder, or a `docker save` archive")

    def read_member(self, name: str) -> dict:
        """Read and parse a small JSON file of the layout."""
        size = self._sizes.get(name)
        if size is None:
            raise InvalidArgument(f"{self.path} is not a valid image archive: it has no {name}")
        if size > MAX_DOCUMENT_BYTES:
            raise InvalidArgument(f"{self.path}: {name} is larger than {MAX_DOCUMENT_BYTES} bytes")
        with self.open_member(name) as member:
            return parse_json(member.read(), f"{self.path}: {name}")

    def index(self) -> dict:
        """Return the parsed top-level ``index.json``."""
        return self.read_member("index.json")

    def open_blob(self, descriptor: Descriptor) -> BinaryIO:
        """Open a blob's data after checking that its size matches the descriptor."""
        name = "blobs/sha256/" + descriptor.digest.removeprefix("sha256:")
        size = self._sizes.get(name)
        if size is None:
            raise InvalidArgument(
                f"{self.path}: blob {descriptor.digest} is referenced but missing from the archive")
        if size != descriptor.size:
            raise InvalidArgument(
                f"{self.path}: blob {descriptor.digest} has {size} bytes but its "
                f"descriptor says {descriptor.size}; the archive is corrupt")
        return self.open_member(name)

    def read_document(self, descriptor: Descriptor) -> bytes:
        """Read an index, manifest or config blob into memory and verify its digest."""
        if descriptor.size > MAX_DOCUMENT_BYTES:
            raise InvalidArgument(
                f"{self.path}: document {descriptor.digest} is larger than "
                f"{MAX_DOCUMENT_BYTES} bytes")

        with self.open_blob(descriptor) as blob:
            data = blob.read()
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != descriptor.digest:
            raise InvalidArgument(
                f"blob {descriptor.digest} in {self.path} is corrupt: its content hashes to "
                f"{actual}; export or download the archive again")
        return data

    def targets(self, name: str | None, wanted: str | None = None) -> list[tuple[str, Descriptor]]:
        return select_manifests(self, name, wanted)


def _folder_sizes(folder: Path) -> dict[str, int]:
    """Return the sizes of the regular files of a layout folder, links not followed."""
    sizes = {}
    for directory, _, files in os.walk(folder):
        for file_name in files:
            full = os.path.join(directory, file_name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                sizes[os.path.relpath(full, folder)] = st.st_size
    return sizes


def select_manifests(archive: OciArchive, name: str | None,
                     wanted: str | None = None) -> list[tuple[str, Descriptor]]:
    """Choose the manifests to import, one per image name, for the platform ``wanted``."""
    where = f"{archive.path}: index.json"
    chosen = []
    for descriptor in descriptor_list(archive.index(), "manifests", where):
        manifest = resolve_platform(archive, descriptor, wanted)
        if manifest is not None:
            chosen.append((descriptor, manifest))

    if not chosen:
        raise FailedPrecondition(
            f"{archive.path} has no image for {platform_text(wanted)}; export the image for "
            "this platform")
    return _name_manifests(archive.path, chosen, name)


def platform_text(wanted: str | None) -> str:
    os_name, architecture, variant = parse_platform(wanted)
    return f"{os_name}/{architecture}" + (f"/{variant}" if variant else "")


def resolve_platform(archive, descriptor: Descriptor, wanted: str | None = None) -> Descriptor | None:
    """Return the manifest for ``wanted`` that a descriptor is or lists, if any.

    ``archive`` is anything with ``read_document`` and ``path``: an archive or a registry.
    """
    if descriptor.media_type in MANIFEST_TYPES:
        return descriptor if platform_matches(descriptor.platform, wanted) else None
    if descriptor.media_type not in INDEX_TYPES:
        log.debug("%s: skipping %s of media type %s", archive.path, descriptor.digest,
                  descriptor.media_type)
        return None

    where = f"{archive.path}: index {descriptor.digest}"
    nested = parse_json(archive.read_document(descriptor), where)
    for candidate in descriptor_list(nested, "manifests", where):
        if candidate.media_type in MANIFEST_TYPES and platform_matches(candidate.platform, wanted):
            return candidate

    candidates = descriptor_list(nested, "manifests", where)
    platforms = sorted({_platform_text(candidate.platform) for candidate in candidates})
    raise FailedPrecondition(
        f"{where} has no manifest for {platform_text(wanted)} (it has {', '.join(platforms)}); "
        "choose one of those with --platform")


def _platform_text(value: dict | None) -> str:
    if not value:
        return "no platform"
    text = f"{value.get('os')}/{value.get('architecture')}"
    return f"{text}/{value['variant']}" if value.get("variant") else text


def _name_manifests(path: Path, chosen: list[tuple[Descriptor, Descriptor]],
                    name: str | None) -> list[tuple[str, Descriptor]]:
    """Name each chosen manifest from its ref.name annotation and the ``name`` argument."""
    if name is not None and parse_reference(name)[1] is not None:
        if len(chosen) != 1:
            raise InvalidArgument(
                f"{path} contains {len(chosen)} images, so the tagged name {name!r} cannot name "
                "them all; pass a repository without a tag")
        return [(normalize_name(name), chosen[0][1])]

    named = [(_image_name(path, top, name), manifest) for top, manifest in chosen]
    names = [image_name for image_name, _ in named]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidArgument(f"{path} contains several images named {', '.join(duplicates)}")
    return named


def _image_name(path: Path, descriptor: Descriptor, repository: str | None) -> str:
    """Derive ``repository:tag`` for one manifest.

    A ref.name without ':' or '/' is taken as a bare tag, which needs a repository, and
    anything else as a full reference.  A given repository replaces the annotation's.
    """
    ref = descriptor.annotations.get(ANNOTATION_REF_NAME)
    if not isinstance(ref, str) or not ref:
        tag = None
    elif ":" in ref or "/" in ref:
        full_repository, tag = parse_reference(ref)
        if repository is None:
            return f"{full_repository}:{tag or 'latest'}"
    elif is_tag(ref):
        tag = ref
    else:
        raise InvalidArgument(
            f"{path}: manifest {descriptor.digest} has an invalid ref.name {ref!r}")

    if repository is None:
        problem = f"is tagged only {tag!r}" if tag else "has no name annotation"
        raise InvalidArgument(
            f"{path}: manifest {descriptor.digest} {problem}, without a repository; "
            "pass a repository name for the import, e.g. myimage")
    return normalize_name(f"{repository}:{tag or 'latest'}")
