"""ImageStore: import, list, remove images, and copy their snapshots into container roots."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import functools
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shim.protocol import AlreadyExists, FailedPrecondition, InvalidArgument, MoorError, NotFound

from . import _busybox, _oci, _overlay
from ._content import ContentStore, check_digest
from ._docker import open_image_source
from ._export import write_archive
from ._db import Image, ImageRecord, ImageTable, SnapshotTable
from ._pack import write_folder_layer
from ._reference import normalize_name
from .registry import Progress, RegistryClient, RemoteRef, load_credentials, parse_remote
from .snapshots import KINDS, Snapshots, pick_kind, tree_size

log = logging.getLogger(__name__)

# Snapshot folders and blob files are both named by 64 hex digits of a sha256 digest.
_SHA256_HEX_RE = re.compile(r"[a-f0-9]{64}", re.ASCII)
_PARALLEL_DOWNLOADS = 3
_HEX_PREFIX_RE = re.compile(r"(?:sha256:)?([a-f0-9]{4,64})", re.ASCII)


@dataclass
class _ImportJob:
    """Blobs and snapshots an import created, so that a failed import can remove them."""

    new_blobs: list[str] = field(default_factory=list)
    new_snapshots: list[str] = field(default_factory=list)
    records: list[ImageRecord] = field(default_factory=list)


class _RegistrySource:
    """Documents and blobs of a pull, read from memory or from the content store."""

    def __init__(self, client: RegistryClient, remote: RemoteRef, content: ContentStore):
        self.path = f"{remote.registry}/{remote.repository}"
        self.documents: dict[str, bytes] = {}
        self._client = client
        self._remote = remote
        self._content = content

    def read_document(self, descriptor: _oci.Descriptor) -> bytes:
        if descriptor.digest in self.documents:
            return self.documents[descriptor.digest]
        if self._content.exists(descriptor.digest):
            return self._content.read(descriptor.digest)
        body, _, _ = self._client.get_manifest(self._remote.repository, descriptor.digest)
        self.documents[descriptor.digest] = body
        return body

    def open_blob(self, descriptor: _oci.Descriptor):
        return open(self._content.path(descriptor.digest), "rb")


def _reports_full_disk(action: str):
    """Turn a full disk (ENOSPC, EDQUOT) in a store operation into an error that names the next step.

    The operation has already removed its partial blobs and snapshots when
    the error reaches this wrapper.
    """
    def wrap(method):
        @functools.wraps(method)
        def run(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise MoorError(f"no space left on the disk of {self._root} while {action}: free space there "
                                "(`moor system df` shows what uses it, `moor image prune` removes unused "
                                "images) and try again") from None
        return run
    return wrap


class ImageStore:
    """Images of one moord root: blobs, snapshots and the ``images`` table.

    Imports and removals hold one lock of the store, so a daemon must use a single
    ImageStore per root.  Creating it removes what interrupted imports left behind.
    """

    def __init__(self, root: Path, db_path: Path, snapshotter: str = "auto"):
        if snapshotter not in ("auto", *KINDS):
            raise InvalidArgument(f"invalid snapshotter {snapshotter!r}: use auto, overlayfs or copy")
        self._root = root
        self._lock = threading.RLock()
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (root / "snapshots").mkdir(mode=0o700, exist_ok=True)
        os.chmod(root / "snapshots", 0o700)

        self._content = ContentStore(root)
        os.chmod(root / "blobs", 0o700)
        self._table = ImageTable(db_path)
        kind = pick_kind(snapshotter, root / "tmp")
        self._snapshot_table = SnapshotTable(db_path)
        self.snapshots = Snapshots(root / "snapshots" / kind, self._snapshot_table, kind)
        self.auth_file = root / "auth.json"
        # Set by moord: the container roots that exist, whose snapshots must be kept.
        self.container_roots: Callable[[], list[Path]] = list
        # Set by moord from its config: registries reached over plain HTTP without --insecure-registry.
        self.insecure_registries: frozenset[str] = frozenset()
        self._clean_leftovers()

    @property
    def snapshotter(self) -> str:
        return self.snapshots.kind

    def _clean_leftovers(self) -> None:
        """Remove temporary files, unrecorded snapshots, and blobs that no image uses.

        Those are left when moord stops while importing an image.  Recorded snapshots
        stay, since containers may still use them; ``prune`` removes the unused ones.
        """
        self._content.clean_ingest()
        self.snapshots.clean_leftovers()
        self._remove_unused_blobs()

    def _remove_unused_blobs(self) -> None:
        records = self._table.all()
        used_blobs = {digest.removeprefix("sha256:") for r in records for digest in r.blobs}
        for path in self._content.blob_dir.iterdir():
            if _SHA256_HEX_RE.fullmatch(path.name) is None:
                log.warning("ignoring %s: not a blob name", path)
            elif path.name not in used_blobs:
                log.info("removing blob sha256:%s, which no image uses", path.name)
                path.unlink()

    # Queries.

    def list(self) -> list[Image]:
        """Return every image name, sorted."""
        return [record.image for record in self._table.all()]

    def get(self, ref: str) -> Image:
        """Find an image by name, name:tag, full id or a unique id prefix of 4 or more digits."""
        return self._lookup(ref)[0]

    def _lookup(self, ref: str) -> tuple[Image, bool]:
        """Return the image and whether ``ref`` matched its id rather than a name.

        A name wins over an id prefix, so "abcd" finds the image named abcd:latest first.
        """
        try:
            record = self._table.get(ref if "@" in ref else normalize_name(ref))
        except InvalidArgument:
            if _HEX_PREFIX_RE.fullmatch(ref) is None:
                raise
            record = None
        if record is not None:
            return record.image, False

        return self._get_by_id(ref), True

    def _get_by_id(self, ref: str) -> Image:
        match = _HEX_PREFIX_RE.fullmatch(ref)
        if match is None:
            raise NotFound(f"image {ref!r} not found; list images with `moor image ls`, or get it with "
                           f"`moor pull {ref}` or `moor image import FILE`")

        prefix = "sha256:" + match.group(1)
        images = [image for image in self.list() if image.id.startswith(prefix)]
        if len({image.id for image in images}) > 1:
            raise InvalidArgument(
                f"image id prefix {ref!r} matches several images; give more digits")
        if not images:
            raise NotFound(f"image {ref!r} not found; list images with `moor image ls`, or get it with "
                           f"`moor pull {ref}` or `moor image import FILE`")
        return images[0]

    # Imports.

    @_reports_full_disk("importing a folder")
    def import_rootfs(self, name: str, folder: Path, config: dict | None = None) -> Image:
        """Make a single-layer image of a folder and name it, moving the name if it exists."""
        name = normalize_name(name)
        _check_rootfs_folder(folder)
        config_text = _check_config(config)

        with self._lock:
            job = _ImportJob()
            with self._rolled_back_on_error(job):
                layer, diff_id = self._write_folder_layer(folder, job)
                record = self._record_rootfs(name, layer, diff_id, json.loads(config_text), job)
                job.records.append(record)
                moved = self._record(job)
            self._collect_garbage(moved)

        log.info("imported image %s (%s) from folder %s", name, record.image.id, folder)
        return record.image

    def _write_folder_layer(self, folder: Path, job: _ImportJob) -> tuple[_oci.Descriptor, str]:
        writer = self._content.writer()
        try:
            write_folder_layer(folder, writer)
        except BaseException:
            writer.abort()
            raise

        digest, created = writer.commit()
        if created:
            job.new_blobs.append(digest)
        return _oci.Descriptor(_oci.MEDIA_LAYER, digest, writer.size), digest

    def _record_rootfs(self, name: str, layer: _oci.Descriptor, diff_id: str, config: dict,
                       job: _ImportJob) -> ImageRecord:
        """Write the config and manifest blobs of a one-layer image and make its snapshot."""
        now = time.time()
        image_config = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "architecture": _oci.host_platform()[0],
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "moor image import-rootfs"}],
        }
        config_descriptor = self._put_document(_oci.MEDIA_CONFIG, image_config, job)
        manifest = {
            "schemaVersion": 2,
            "mediaType": _oci.MEDIA_MANIFEST,
            "config": _descriptor_json(config_descriptor),
            "layers": [_descriptor_json(layer)],
        }
        manifest_descriptor = self._put_document(_oci.MEDIA_MANIFEST, manifest, job)

        snapshot, size = self._ensure_snapshot([layer], [diff_id], job)
        image = Image(name=name, id=config_descriptor.digest,
                      manifest_digest=manifest_descriptor.digest, snapshot=snapshot,
                      size=size, created=now, config=config)
        blobs = (manifest_descriptor.digest, config_descriptor.digest, layer.digest)
        return ImageRecord(image=image, blobs=blobs)

    def _put_document(self, media_type: str, document: dict, job: _ImportJob) -> _oci.Descriptor:
        data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        digest, created = self._content.put_bytes(data)
        if created:
            job.new_blobs.append(digest)
        return _oci.Descriptor(media_type, digest, len(data))

    @_reports_full_disk("importing an archive")
    def import_archive(self, path: Path, name: str | None = None,
                       platform: str | None = None) -> list[Image]:
        """Import every image of an archive or layout folder for a platform, all or none.

        The source is an OCI archive, an OCI layout folder or a ``docker save`` archive;
        ``platform`` is OS/ARCH[/VARIANT], the host's by default.
        """
        with self._lock, open_image_source(path) as archive:
            targets = archive.targets(name, platform)
            job = _ImportJob()
            with self._rolled_back_on_error(job):
                for image_name, manifest in targets:
                    job.records.append(self._import_manifest(archive, image_name, manifest, job))
                moved = self._record(job)
            self._collect_garbage(moved)

        for record in job.records:
            log.info("imported image %s (%s) from %s", record.image.name, record.image.id, path)
        return [record.image for record in job.records]

    def _import_manifest(self, archive, name: str,
                         descriptor: _oci.Descriptor, job: _ImportJob) -> ImageRecord:
        """Store a manifest, its config and its layers, verified, and make its snapshot."""
        manifest = self._ingest_document(archive, descriptor, job)
        where = f"{archive.path}: manifest {descriptor.digest}"
        config_descriptor = _oci.parse_descriptor(manifest.get("config"), where)
        layers = _oci.descriptor_list(manifest, "layers", where)
        _check_manifest_types(config_descriptor, layers, where)

        image_config = self._ingest_document(archive, config_descriptor, job)
        diff_ids = _diff_ids(image_config, len(layers), f"{archive.path}: config "
                             f"{config_descriptor.digest}")
        for layer in layers:
            if self._content.exists(layer.digest):
                continue
            with archive.open_blob(layer) as blob:
                if self._content.ingest(blob, layer.digest, layer.size, str(archive.path)):
                    job.new_blobs.append(layer.digest)

        # An existing snapshot came from layers with these same diff ids, so it is reused.
        snapshot, size = self._ensure_snapshot(layers, diff_ids, job)
        created = _oci.parse_created(image_config.get("created")) or time.time()
        config = image_config.get("config")
        image = Image(name=name, id=config_descriptor.digest, manifest_digest=descriptor.digest,
                      snapshot=snapshot, size=size, created=created,
                      config=config if isinstance(config, dict) else {})
        blobs = (descriptor.digest, config_descriptor.digest, *(l.digest for l in layers))
        return ImageRecord(image=image, blobs=blobs)

    def _ingest_document(self, archive, descriptor: _oci.Descriptor,
                         job: _ImportJob) -> dict:
        data = archive.read_document(descriptor)
        document = _oci.parse_json(data, f"{archive.path}: blob {descriptor.digest}")
        _, created = self._content.put_bytes(data)
        if created:
            job.new_blobs.append(descriptor.digest)
        return document

    # Registries.

    def _registry(self, registry: str, insecure: bool, ca_file: Path | None) -> RegistryClient:
        if ca_file is None and (self._root / "certs.d" / registry / "ca.crt").is_file():
            ca_file = self._root / "certs.d" / registry / "ca.crt"
        credentials = load_credentials(self.auth_file, registry)
        insecure = insecure or registry in self.insecure_registries
        return RegistryClient(registry, insecure, ca_file, credentials)

    @_reports_full_disk("pulling an image")
    def pull(self, ref: str, platform: str | None = None, insecure: bool = False,
             ca_file: Path | None = None, progress: Progress | None = None) -> Image:
        """Download an image (a tag or a digest) for a platform and record it under its name."""
        remote = parse_remote(ref)
        if platform is not None:
            _oci.parse_platform(platform)
        client = self._registry(remote.registry, insecure, ca_file)
        source = _RegistrySource(client, remote, self._content)
        body, media_type, digest = client.get_manifest(remote.repository, remote.reference)
        source.documents[digest] = body
        descriptor = _oci.Descriptor(media_type, digest, len(body))
        if media_type in _oci.INDEX_TYPES:
            chosen = _oci.resolve_platform(source, descriptor, platform)
            body, _, _ = client.get_manifest(remote.repository, chosen.digest)
            source.documents[chosen.digest] = body
            descriptor = chosen
        elif media_type not in _oci.MANIFEST_TYPES:
            raise InvalidArgument(f"{ref} is a {media_type or 'document without a media type'}, "
                                  "not an image manifest or index")

        where = f"{remote.local_name}: manifest {descriptor.digest}"
        manifest = _oci.parse_json(body, where)
        config = _oci.parse_descriptor(manifest.get("config"), where)
        layers = _oci.descriptor_list(manifest, "layers", where)
        _check_manifest_types(config, layers, where)
        log.info("pulling %s (%s, %d layers) from %s", remote.local_name, descriptor.digest,
                 len(layers), remote.registry)
        downloaded = self._download_all(client, remote.repository, [config, *layers], progress)

        job = _ImportJob(new_blobs=downloaded)
        with self._lock:
            with self._rolled_back_on_error(job):
                job.records.append(self._import_manifest(source, remote.local_name, descriptor, job))
                moved = self._record(job)
            self._collect_garbage(moved)
        log.info("pulled image %s (%s)", remote.local_name, job.records[0].image.id)
        return job.records[0].image

    def _download_all(self, client: RegistryClient, repository: str,
                      descriptors: list[_oci.Descriptor], progress: Progress | None) -> list[str]:
        """Download blobs in parallel; return the new ones.  On failure, remove those new
        ones that no image uses, and raise the first error.
        """
        new: list[str] = []
        with concurrent.futures.ThreadPoolExecutor(_PARALLEL_DOWNLOADS) as pool:
            futures = {pool.submit(client.download_blob, repository, d, self._content, progress): d
                       for d in descriptors}
            errors = []
            for future in concurrent.futures.as_completed(futures):
                try:
                    if future.result():
                        new.append(futures[future].digest)
                except Exception as error:  # noqa: BLE001 - the first error is raised below
                    errors.append(error)
        if errors:
            with self._lock:
                used = {d for record in self._table.all() for d in record.blobs}
                for digest in new:
                    if digest not in used:
                        self._content.delete(digest)
            raise errors[0]
        return new

    def push(self, ref: str, insecure: bool = False, ca_file: Path | None = None,
             progress: Progress | None = None) -> str:
        """Upload a local image to the registry its name starts with; return the manifest digest."""
        image = self.get(ref)
        remote = parse_remote(image.name)
        if remote.digest:
            raise InvalidArgument(f"cannot push {image.name}: it is named by digest; tag it "
                                  "first with `moor tag`")
        client = self._registry(remote.registry, insecure, ca_file)
        manifest_data = self._content.read(image.manifest_digest)
        manifest = json.loads(manifest_data)
        for digest in [manifest["config"]["digest"], *(l["digest"] for l in manifest["layers"])]:
            if not self._content.exists(digest):
                raise NotFound(f"blob {digest} of {image.name} is missing from the store; "
                               "import or pull the image again")
            client.upload_blob(remote.repository, digest, self._content.path(digest), progress)
        media_type = manifest.get("mediaType") or _oci.MEDIA_MANIFEST
        client.put_manifest(remote.repository, remote.tag or "latest", manifest_data, media_type)
        log.info("pushed image %s (%s) to %s", image.name, image.manifest_digest, remote.registry)
        return image.manifest_digest

    def tag(self, source: str, target: str) -> Image:
        """Give an image a new name, moving the name if another image had it."""
        name = normalize_name(target)
        with self._lock:
            image = self.get(source)
            record = next(r for r in self._table.all() if r.image.id == image.id
                          and r.image.manifest_digest == image.manifest_digest)
            new = ImageRecord(image=dataclasses.replace(record.image, name=name),
                              blobs=record.blobs)
            moved = self._record(_ImportJob(records=[new]))
            self._collect_garbage(moved)
        log.info("tagged image %s as %s", image.id, name)
        return new.image

    # Export.

    @_reports_full_disk("saving images")
    def save(self, refs: list[str], target: Path) -> list[str]:
        """Write the images ``refs`` (names or ids, with every name of an id) to an archive.

        Return the names written.
        """
        if not refs:
            raise InvalidArgument("no image to save; name at least one image")
        with self._lock:
            records = self._table.all()
            chosen: list[ImageRecord] = []
            for ref in refs:
                image, by_id = self._lookup(ref)
                for record in records:
                    matches = record.image.id == image.id if by_id else record.image.name == image.name
                    if matches and record not in chosen:
                        chosen.append(record)
            write_archive(self._content, chosen, target)
        names = [record.image.name for record in chosen]
        log.info("saved images %s to %s", names, target)
        return names

    # Snapshots.

    def _ensure_snapshot(self, layers: list[_oci.Descriptor], diff_ids: list[str],
                         job: _ImportJob) -> tuple[str, int]:
        """Return (name, size) of the top snapshot of a layer stack, unpacking missing layers.

        Each layer has its own snapshot, named by the chain id up to it, so images that
        share their lower layers share those snapshots.
        """
        parent = ""
        for index, layer in enumerate(layers):
            name = _oci.chain_id(diff_ids[:index + 1]).removeprefix("sha256:")
            if not self.snapshots.exists(name):
                self.snapshots.create(name, parent, self._content.path(layer.digest),
                                      layer.digest, diff_ids[index])
                job.new_snapshots.append(name)
            parent = name
        return parent, self.snapshots.size(parent)

    # Recording and garbage collection.

    def _record(self, job: _ImportJob) -> list[ImageRecord]:
        """Record the job's names in one transaction; return the rows those names replaced."""
        names = {record.image.name for record in job.records}
        replaced = [record for record in self._table.all() if record.image.name in names]
        self._table.put(job.records)
        return replaced

    @contextlib.contextmanager
    def _rolled_back_on_error(self, job: _ImportJob) -> Iterator[None]:
        """Remove the job's new snapshots and blobs if the block fails before recording."""
        try:
            yield
        except BaseException:
            for snapshot in reversed(job.new_snapshots):
                self.snapshots.remove(snapshot)
            for digest in job.new_blobs:
                self._content.delete(digest)
            log.debug("rolled back a failed import: removed %d snapshots and %d blobs",
                      len(job.new_snapshots), len(job.new_blobs))
            raise

    def _collect_garbage(self, dropped: list[ImageRecord]) -> list[str]:
        """Delete the snapshots and blobs of ``dropped`` that no recorded name uses.

        Return the ids of the images that no name refers to any more.
        """
        remaining = self._table.all()
        remaining_blobs = {digest for record in remaining for digest in record.blobs}
        remaining_ids = {record.image.id for record in remaining}

        self._collect_snapshots(remaining)
        for digest in {d for r in dropped for d in r.blobs} - remaining_blobs:
            self._content.delete(digest)
        return sorted({r.image.id for r in dropped} - remaining_ids)

    def _collect_snapshots(self, remaining: list[ImageRecord]) -> list[str]:
        """Remove the snapshots that neither an image nor a container root uses."""
        in_roots = self._snapshots_in_roots()
        keep = {record.image.snapshot for record in remaining} | in_roots
        removed = self.snapshots.collect(keep)
        # Snapshots of a snapshotter used before: only container roots can still use them.
        for kind in sorted(self._snapshot_table.kinds() - {self.snapshots.kind}):
            removed += Snapshots(self._root / "snapshots" / kind, self._snapshot_table, kind).collect(in_roots)
        return removed

    def _snapshots_in_roots(self) -> set[str]:
        """Return the snapshots that the overlay roots of existing containers stack."""
        used = set()
        for dest in self.container_roots():
            used.update(path.name for path in _overlay.lower_folders(dest))
        return used

    # Garbage collection and disk use.

    def prune(self, unused_images: bool = False,
              used_image_ids: set[str] | None = None) -> dict:
        """Remove snapshots and blobs that nothing uses; with ``unused_images``, also the
        images no container uses.  Return what was removed and the bytes reclaimed.
        """
        with self._lock:
            before = self._disk_bytes()
            removed_names: list[str] = []
            deleted_ids: list[str] = []
            if unused_images:
                used = used_image_ids or set()
                dropped = [r for r in self._table.all() if r.image.id not in used]
                self._table.delete([r.image.name for r in dropped])
                removed_names = [r.image.name for r in dropped]
                deleted_ids = self._collect_garbage(dropped)
            snapshots = self._collect_snapshots(self._table.all())
            self._remove_unused_blobs()
            reclaimed = max(0, before - self._disk_bytes())
        log.info("pruned images: removed %d names and %d snapshots, reclaimed %d bytes",
                 len(removed_names), len(snapshots), reclaimed)
        return {"untagged": removed_names, "deleted": deleted_ids, "snapshots": snapshots,
                "reclaimed": reclaimed}

    def _disk_bytes(self) -> int:
        return tree_size(self.snapshots.folder) + tree_size(self._content.blob_dir)

    def disk_usage(self) -> dict:
        """Return counts and bytes of images, snapshots and blobs, and what prune could free."""
        with self._lock:
            records = self._table.all()
            snapshots = self.snapshots.records()
            keep = {r.image.snapshot for r in records} | self._snapshots_in_roots()
            kept = {n for top in keep if top in snapshots for n in self.snapshots.chain(top)}
            used_blobs = {d.removeprefix("sha256:") for r in records for d in r.blobs}
            blob_sizes = {p.name: p.stat().st_size for p in self._content.blob_dir.iterdir()}
        return {
            "images": len(records),
            "image_ids": len({r.image.id for r in records}),
            "snapshots": len(snapshots),
            "snapshot_bytes": sum(s.size for s in snapshots.values()),
            "snapshot_reclaimable": sum(s.size for n, s in snapshots.items() if n not in kept),
            "blobs": len(blob_sizes),
            "blob_bytes": sum(blob_sizes.values()),
            "blob_reclaimable": sum(v for k, v in blob_sizes.items() if k not in used_blobs),
            "snapshotter": self.snapshots.kind,
        }

    # Removal.

    def remove(self, ref: str, in_use: Callable[[str], bool] | None = None) -> list[str]:
        """Untag an image; delete its snapshot and blobs once no name refers to them.

        A name or name:tag removes that name; an id or id prefix removes every name of
        the image.  Return the removed names, then the ids of the images deleted.
        """
        with self._lock:
            image, by_id = self._lookup(ref)
            records = self._table.all()
            if by_id:
                dropped = [r for r in records if r.image.id == image.id]
            else:
                dropped = [r for r in records if r.image.name == image.name]

            self._check_not_in_use(ref, records, dropped, in_use)
            self._table.delete([r.image.name for r in dropped])
            deleted_ids = self._collect_garbage(dropped)

        log.info("removed image %s: untagged %s, deleted %s", ref,
                 [r.image.name for r in dropped], deleted_ids)
        return [r.image.name for r in dropped] + deleted_ids

    @staticmethod
    def _check_not_in_use(ref: str, records: list[ImageRecord], dropped: list[ImageRecord],
                          in_use: Callable[[str], bool] | None) -> None:
        """Reject a removal that would delete a snapshot that containers still use."""
        if in_use is None:
            return
        names = {r.image.name for r in dropped}
        remaining_snapshots = {r.image.snapshot for r in records if r.image.name not in names}
        for snapshot in {r.image.snapshot for r in dropped} - remaining_snapshots:
            if in_use(snapshot):
                raise FailedPrecondition(
                    f"image {ref!r} is used by one or more containers; remove those containers "
                    "first with `moor rm`, then remove the image")

    # The default image.

    @_reports_full_disk("making the busybox image")
    def ensure_busybox(self, name: str = "busybox:latest",
                       busybox: Path = Path("/bin/busybox")) -> Image:
        """Return the busybox image, making it from the host's static busybox if missing."""
        name = normalize_name(name)
        with self._lock:
            record = self._table.get(name)
            if record is not None:
                return record.image

            _busybox.check_static(busybox)
            applets = _busybox.list_applets(busybox)
            with tempfile.TemporaryDirectory(prefix="moorage-busybox-") as folder:
                _busybox.build_busybox_root(Path(folder), busybox, applets)
                return self.import_rootfs(name, Path(folder), _busybox.BUSYBOX_CONFIG)

    # Container roots.

    @_reports_full_disk("making a container root")
    def prepare_rootfs(self, image: Image, dest: Path) -> None:
        """Make a container root at ``dest``, which must not exist, from an image's snapshot.

        With overlayfs the root is a mount whose lower layer is the shared
        snapshot; otherwise it is a private copy of the snapshot.
        """
        if os.path.lexists(dest):
            raise AlreadyExists(f"container root {dest} already exists; remove it first")

        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if not self.snapshots.exists(image.snapshot):
                self._unpack_again(image)
            self.snapshots.prepare_root(image.snapshot, dest)

    def _unpack_again(self, image: Image) -> None:
        """Unpack an image's layers from the content store as snapshots of the current kind.

        This happens after the ``snapshotter`` setting changed: the image's snapshots are
        of the other kind, but its blobs are still in the content store.
        """
        where = f"image {image.name}"
        lost = (f"the snapshot of image {image.name} is missing and so are its blobs; remove the image "
                f"with `moor image rm {image.name}` and pull or import it again")
        if not (self._content.exists(image.manifest_digest) and self._content.exists(image.id)):
            raise NotFound(lost)
        manifest = _oci.parse_json(self._content.read(image.manifest_digest), where)
        layers = _oci.descriptor_list(manifest, "layers", where)
        if not all(self._content.exists(layer.digest) for layer in layers):
            raise NotFound(lost)
        diff_ids = _diff_ids(_oci.parse_json(self._content.read(image.id), where), len(layers), where)

        log.info("image %s has no %s snapshot, as after a change of the snapshotter setting; unpacking its "
                 "%d layers again from the content store", image.name, self.snapshots.kind, len(layers))
        job = _ImportJob()
        with self._rolled_back_on_error(job):
            top, _ = self._ensure_snapshot(layers, diff_ids, job)
            if top != image.snapshot:
                raise MoorError(f"image {image.name}: its layers unpack to snapshot {top}, but the image "
                                f"records {image.snapshot}; remove the image and pull or import it again")

    def mount_rootfs(self, dest: Path) -> None:
        """Mount an overlay container root before its container starts; copies need nothing."""
        _overlay.ensure_mounted(dest)

    def unmount_rootfs(self, dest: Path) -> None:
        """Unmount an overlay container root while its container has no task."""
        _overlay.ensure_unmounted(dest)

    def remove_rootfs(self, dest: Path) -> None:
        """Delete a container root; a missing one is not an error, and links are not followed."""
        _overlay.remove(dest)
        if not os.path.lexists(dest):
            return
        if dest.is_symlink():
            dest.unlink()
            return

        mounted = _mounts_under(dest)
        if mounted:
            raise FailedPrecondition(
                f"container root {dest} still has mounts ({', '.join(mounted)}); "
                "unmount them before removing it")
        shutil.rmtree(dest)


def _check_rootfs_folder(folder: Path) -> None:
    """Reject a folder that is missing, not a folder, or has no /bin to run a command from."""
    if not folder.exists():
        raise InvalidArgument(f"folder {folder} does not exist; check the path")
    if not folder.is_dir():
        raise InvalidArgument(f"{folder} is not a folder; pass the root folder of the image")

    bin_path = folder / "bin"
    if bin_path.is_symlink():
        # A merged /usr has bin -> usr/bin; resolve it inside the folder, not on the host.
        bin_path = folder / os.readlink(bin_path).lstrip("/")
    if not bin_path.is_dir() or bin_path.is_symlink():
        raise InvalidArgument(
            f"folder {folder} has no /bin, so a container made from it cannot run a command; "
            "check that the path is the root of the image")


def _check_config(config: dict | None) -> str:
    """Return the image config as JSON text, or raise InvalidArgument."""
    if config is None:
        return "{}"
    if not isinstance(config, dict):
        raise InvalidArgument(f"image config must be a JSON object, not {type(config).__name__}")
    try:
        return json.dumps(config)
    except (TypeError, ValueError) as error:
        raise InvalidArgument(f"image config cannot be stored as JSON: {error}") from error


def _check_manifest_types(config: _oci.Descriptor, layers: list[_oci.Descriptor],
                          where: str) -> None:
    if config.media_type not in _oci.CONFIG_TYPES:
        raise InvalidArgument(f"{where}: config has the unsupported media type {config.media_type}")
    if not layers:
        raise InvalidArgument(f"{where} has no layers")
    for layer in layers:
        if layer.media_type not in _oci.LAYER_TYPES:
            raise InvalidArgument(
                f"{where}: layer {layer.digest} has the unsupported media type {layer.media_type}; "
                "only plain tar layers and tar layers compressed with gzip or zstd can be imported")


def _diff_ids(image_config: dict, count: int, where: str) -> list[str]:
    """Return the config's rootfs.diff_ids, one per layer of the manifest."""
    rootfs = image_config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != count:
        raise InvalidArgument(
            f"{where}: rootfs.diff_ids must list one digest per layer ({count} layers)")
    return [check_digest(diff_id, where) for diff_id in diff_ids]


def _descriptor_json(descriptor: _oci.Descriptor) -> dict:
    return {"mediaType": descriptor.media_type, "digest": descriptor.digest,
            "size": descriptor.size}


def _mounts_under(path: Path) -> list[str]:
    """Return the mount points at or below ``path``, from /proc/self/mountinfo."""
    real = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mountinfo:
        for line in mountinfo:
            point = _unescape_mount(line.split()[4])
            if point == real or point.startswith(real.rstrip("/") + "/"):
                found.append(point)
    return found


def _unescape_mount(field_text: str) -> str:
    """Decode the octal escapes (such as \\040 for a space) of a mountinfo field."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_text)
