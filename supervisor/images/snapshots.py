"""Layer snapshots: one folder per layer chain, unpacked once and shared by containers.

A snapshot is named by the OCI chain id of its layer stack, and its parent is the
snapshot of the stack without the top layer.  Two kinds exist, chosen by the
daemon's ``snapshotter`` setting:

* ``overlayfs``: each folder holds only its own layer, as an overlayfs diff.  A
  container root is an overlay mount whose lower folders are the image's chain,
  with its own upper and work folders beside it.
* ``copy``: each folder contains the whole tree up to its layer (a copy of its
  parent with the layer applied), and a container root is a copy of the top one,
  for hosts where overlayfs cannot be mounted.

Folders are unpacked under a temporary name and renamed into place, then recorded
in the ``snapshots`` table, so a crash leaves either nothing or a whole snapshot.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from shim.protocol import InvalidArgument, MoorError, NotFound

from . import _overlay
from ._db import SnapshotRecord, SnapshotTable
from ._unpack import LayerUnpacker, apply_layer_file

log = logging.getLogger(__name__)

KINDS = ("overlayfs", "copy")
TEMP_PREFIX = ".tmp-"
_NAME_RE = re.compile(r"[a-f0-9]{64}", re.ASCII)


class Snapshots:
    """The snapshots of one kind under ``folder``, recorded in ``table``."""

    def __init__(self, folder: Path, table: SnapshotTable, kind: str):
        if kind not in KINDS:
            raise InvalidArgument(f"invalid snapshotter {kind!r}: use overlayfs or copy")
        self.kind = kind
        self.folder = folder
        self._table = table
        folder.mkdir(parents=True, exist_ok=True)
        # Snapshots hold setuid programs, so no other host user may reach them.
        os.chmod(folder, 0o700)

    def path(self, name: str) -> Path:
        if _NAME_RE.fullmatch(name) is None:
            raise InvalidArgument(f"invalid snapshot name {name!r}")
        return self.folder / name

    def exists(self, name: str) -> bool:
        return self._table.get(name, self.kind) is not None and self.path(name).is_dir()

    def records(self) -> dict[str, SnapshotRecord]:
        """Return the recorded snapshots of this kind by name."""
        return self._table.all(self.kind)

    def chain(self, name: str) -> list[str]:
        """Return the snapshot and its ancestors, topmost first."""
        records = self.records()
        names = []
        while name:
            record = records.get(name)
            if record is None:
                raise NotFound(
                    f"snapshot {name} is missing; remove the image with `moor image rm` "
                    "and import or pull it again")
            names.append(name)
            name = record.parent
        return names

    def size(self, name: str) -> int:
        """Return the bytes of regular files the image adds up to, over its whole chain."""
        records = self.records()
        return sum(records[n].size for n in self.chain(name))

    # Creation.

    def create(self, name: str, parent: str, layer_file: Path, layer: str,
               diff_id: str) -> None:
        """Unpack one layer blob as snapshot ``name`` on top of ``parent`` ('' for none).

        Raise InvalidArgument, leaving nothing behind, if the layer's tar does not hash to
        ``diff_id`` or an entry is unsafe.
        """
        temp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=self.folder))
        try:
            os.chmod(temp, 0o755)
            size = self._unpack(temp, parent, layer_file, layer, diff_id)
            os.rename(temp, self.path(name))
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        self._table.put(SnapshotRecord(name, parent, self.kind, size))
        log.info("unpacked layer %s as %s snapshot %s", layer, self.kind, name)

    def _unpack(self, temp: Path, parent: str, layer_file: Path, layer: str,
                diff_id: str) -> int:
        if self.kind == "overlayfs":
            lowers = [self.path(n) for n in self.chain(parent)] if parent else []
            if lowers:
                # The root folder's owner and mode carry up, unless this layer sets them.
                copy_root_metadata(lowers[0], temp)
            unpacker = LayerUnpacker(temp, lowers)
        else:
            if parent:
                copy_tree(self.path(parent), temp)
            unpacker = LayerUnpacker(temp)
        with unpacker:
            actual = apply_layer_file(unpacker, layer_file, layer)
            if actual != diff_id:
                raise InvalidArgument(
                    f"layer {layer} unpacks to content {actual}, but the image config says "
                    f"{diff_id}; the image is corrupt")
            return unpacker.size

    # Removal.

    def remove(self, name: str) -> None:
        """Forget a snapshot, then delete its folder, renamed first so no half of it stays."""
        self._table.delete(name, self.kind)
        path = self.path(name)
        if not path.exists():
            return
        doomed = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=self.folder))
        os.rename(path, doomed / name)
        shutil.rmtree(doomed)
        log.info("removed snapshot %s", name)

    def clean_leftovers(self) -> None:
        """Delete temporary folders and folders that no table row records.

        Both are left when moord stops while unpacking or removing a snapshot.
        """
        recorded = self.records()
        for path in self.folder.iterdir():
            if path.name.startswith(TEMP_PREFIX):
                log.info("removing unfinished snapshot %s", path)
                shutil.rmtree(path, ignore_errors=True)
            elif _NAME_RE.fullmatch(path.name) is None:
                log.warning("ignoring %s: not a snapshot name", path)
            elif path.name not in recorded:
                log.info("removing snapshot %s, which was never recorded", path.name)
                shutil.rmtree(path, ignore_errors=True)
        for name in recorded:
            if not self.path(name).is_dir():
                log.warning("snapshot %s is recorded but its folder is missing; forgetting it",
                            name)
                self._table.delete(name, self.kind)

    def collect(self, keep_tops: set[str]) -> list[str]:
        """Remove every snapshot outside the chains of ``keep_tops``; return the removed names."""
        records = self.records()
        kept: set[str] = set()
        for top in keep_tops:
            name = top
            while name and name in records and name not in kept:
                kept.add(name)
                name = records[name].parent
        removed = []
        # Children first, so that a crash never leaves a snapshot whose parent is gone.
        for name in sorted(set(records) - kept, key=lambda n: -len(self._depth(n, records))):
            self.remove(name)
            removed.append(name)
        return removed

    @staticmethod
    def _depth(name: str, records: dict[str, SnapshotRecord]) -> list[str]:
        names = []
        while name and name in records:
            names.append(name)
            name = records[name].parent
        return names

    # Container roots.

    def prepare_root(self, top: str, dest: Path) -> None:
        """Make a container root at ``dest``, which must not exist, from snapshot ``top``."""
        chain = self.chain(top)
        if self.kind == "overlayfs":
            try:
                _overlay.prepare([self.path(n) for n in chain], dest)
            except BaseException:
                _overlay.remove(dest)
                shutil.rmtree(dest, ignore_errors=True)
                raise
            return

        temp = Path(tempfile.mkdtemp(prefix=f".{dest.name}{TEMP_PREFIX}", dir=dest.parent))
        try:
            copy_tree(self.path(top), temp)
            os.rename(temp, dest)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise


def copy_root_metadata(source: Path, target: Path) -> None:
    """Give folder ``target`` the owner, mode and times of folder ``source``."""
    st = os.stat(source)
    os.chown(target, st.st_uid, st.st_gid)
    os.chmod(target, stat.S_IMODE(st.st_mode))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


def tree_size(path: Path) -> int:
    """Add up the sizes of the regular files below ``path``."""
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(directory, name))
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


def copy_tree(source: Path, target: Path) -> None:
    """Copy a tree into the empty folder ``target`` with ``cp -a``, root folder metadata included.

    ``cp -a`` keeps hard links, symlinks, owners, modes, extended attributes, device
    nodes and times, and ``--reflink=auto`` shares data blocks where the filesystem can.
    """
    command = ["cp", "-a", "--reflink=auto", "--", f"{source}/.", str(target)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=3600)
    if result.returncode != 0:
        raise MoorError(f"failed to copy snapshot {source} to {target}: {result.stderr.strip()}")


def pick_kind(setting: str, probe_folder: Path) -> str:
    """Resolve the ``snapshotter`` setting: ``auto`` is overlayfs where it can be mounted."""
    if setting in KINDS:
        return setting
    if setting != "auto":
        raise InvalidArgument(f"invalid snapshotter {setting!r}: use auto, overlayfs or copy")
    return "overlayfs" if _overlay.supported(probe_folder) else "copy"

