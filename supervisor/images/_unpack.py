"""Apply layer tar streams onto a snapshot folder without ever writing outside it.

Every path is reached component by component from a descriptor of the snapshot
root, opening each folder with ``O_NOFOLLOW``, so a symbolic link that a layer
put in the snapshot is never followed.  Entry names with ``..`` components,
absolute entry names and entries under a symbolic link are rejected, rather
than resolved inside the snapshot.

Whiteouts follow the OCI image-spec layer rules: ``.wh.NAME`` deletes NAME of
the lower layers, and ``.wh..wh..opq`` deletes every lower-layer entry of its
folder.  Both apply after the whole layer is read, to the entries that this
layer did not create, so their position in the archive does not matter.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import shutil
import stat
import subprocess
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from shim.protocol import FailedPrecondition, InvalidArgument, MoorError

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
XATTR_PAX_PREFIX = "SCHILY.xattr."

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
_NAME_MAX = 255
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# Extended attributes restored from layers.  security.selinux is left to the host
# policy, and trusted.* (overlayfs metadata among them) would change how the
# kernel treats the snapshot, so both are dropped.
_KEPT_XATTRS = frozenset({"security.capability", "system.posix_acl_access",
                          "system.posix_acl_default"})


def xattr_kept(name: str) -> bool:
    """Tell whether an extended attribute is carried between folders and layers."""
    return name.startswith("user.") or name in _KEPT_XATTRS


def split_entry_name(name: str, layer: str, role: str = "entry") -> tuple[str, ...]:
    """Split a tar entry name into path components, rejecting absolute names and ``..``."""
    if name.startswith("/"):
        raise InvalidArgument(
            f"layer {layer}: {role} {name!r} has an absolute name, which could write outside the "
            "image; the import is rejected, so rebuild the image with relative entry names")

    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise InvalidArgument(
            f"layer {layer}: {role} {name!r} contains a '..' component, which could write outside "
            "the image; the import is rejected, so rebuild the image without it")
    return parts


class _HashingReader:
    """Read-through wrapper that computes the sha256 of everything read."""

    def __init__(self, source: BinaryIO):
        self._source = source
        self._hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._hash.update(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def apply_layer_file(unpacker: LayerUnpacker, path: Path, layer: str) -> str:
    """Apply a layer blob, plain or compressed with gzip or zstd; return the diff id of its tar."""
    with open(path, "rb") as raw, _decompressed(raw, layer) as source:
        reader = _HashingReader(source)
        try:
            with tarfile.open(fileobj=reader, mode="r|", errors="surrogateescape") as tar:
                unpacker.apply(tar, layer)
            reader.drain()
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
            raise InvalidArgument(f"layer {layer} is not a valid tar archive: {error}") from error
    return reader.digest()


@contextlib.contextmanager
def _decompressed(raw: BinaryIO, layer: str) -> Iterator[BinaryIO]:
    """Yield the tar stream of a layer blob, found by the magic bytes at its start.

    zstd goes through the ``zstd`` command of the host, so that no Python binding is needed.
    """
    magic = raw.peek(4)[:4]
    raw.seek(0)
    if magic[:2] == _GZIP_MAGIC:
        yield gzip.GzipFile(fileobj=raw)
        return
    if magic != _ZSTD_MAGIC:
        yield raw
        return

    # The child reads the file descriptor itself, from the start of the file.
    os.lseek(raw.fileno(), 0, os.SEEK_SET)
    try:
        process = subprocess.Popen(["zstd", "-d", "-c", "-q"], stdin=raw, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise FailedPrecondition(
            f"layer {layer} is compressed with zstd, but the zstd command is missing; "
            "install the zstd package") from None
    try:
        yield process.stdout
        process.stdout.read()
    finally:
        process.stdout.close()
        stderr = process.stderr.read().decode(errors="replace").strip()
        process.stderr.close()
        code = process.wait()
    if code != 0:
        raise InvalidArgument(f"layer {layer} is not valid zstd data: {stderr or f'exit {code}'}")


@dataclass
class _LayerState:
    """Progress of one layer: the paths it added, then whiteouts and folder times to apply."""

    layer: str
    present: set[tuple[str, ...]] = field(default_factory=set)
    whiteouts: list[tuple[tuple[str, ...], str]] = field(default_factory=list)
    opaque_dirs: list[tuple[str, ...]] = field(default_factory=list)
    dir_times: list[tuple[tuple[str, ...], int]] = field(default_factory=list)


class LayerUnpacker:
    """Applies layers, in order, onto one private snapshot folder that no one else writes."""

    def __init__(self, root: Path, lowers: list[Path] | None = None):
        """Unpack onto ``root``; with ``lowers`` (topmost first), write an overlayfs diff instead.

        In diff mode ``root`` receives only the layer's own entries: whiteouts become
        overlayfs whiteouts (0/0 character devices and the opaque extended attribute),
        and the lower folders are only read, to refuse paths through their symbolic links.
        """
        self._root_fd = os.open(root, _DIR_FLAGS)
        self._diff_mode = lowers is not None
        self._lower_fds = [os.open(lower, _DIR_FLAGS) for lower in lowers or ()]
        self.size = 0

    def close(self) -> None:
        for fd in [self._root_fd, *self._lower_fds]:
            if fd >= 0:
                os.close(fd)
        self._root_fd = -1
        self._lower_fds = []

    def __enter__(self) -> LayerUnpacker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def apply(self, tar: tarfile.TarFile, layer: str) -> None:
        """Apply one layer: its entries in archive order, then its whiteouts, then folder times."""
        state = _LayerState(layer)
        for member in tar:
            self._apply_member_checked(tar, member, state)

        try:
            self._apply_whiteouts(state)
            self._restore_dir_times(state)
        except OSError as error:
            raise MoorError(f"failed to apply the whiteouts of layer {layer}: {error}") from error

    def _apply_member_checked(self, tar: tarfile.TarFile, member: tarfile.TarInfo,
                              state: _LayerState) -> None:
        try:
            self._apply_member(tar, member, state)
        except OSError as error:
            raise MoorError(
                f"failed to unpack layer {state.layer} entry {member.name!r}: {error}") from error

    def _apply_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo,
                      state: _LayerState) -> None:
        parts = split_entry_name(member.name, state.layer)
        if not parts:
            self._apply_root_entry(member, state)
            return

        if parts[-1].startswith(WHITEOUT_PREFIX):
            self._record_whiteout(parts, member, state)
            return

        subject = f"entry {member.name!r}"
        with self._open_dir(parts[:-1], subject, state, create=True) as parent_fd:
            self._make_room(parent_fd, parts[-1], member)
            self._create(tar, member, parent_fd, parts, state)
        state.present.add(parts)

    @contextlib.contextmanager
    def _open_dir(self, parts: tuple[str, ...], subject: str, state: _LayerState,
                  create: bool) -> Iterator[int]:
        """Open a folder of the snapshot without following links; FileNotFoundError if missing.

        ``subject`` describes the entry for error messages, such as "entry 'etc/passwd'".
        """
        fd = os.dup(self._root_fd)
        try:
            for index, component in enumerate(parts):
                prefix = parts[:index + 1]
                child = self._open_child_dir(fd, component, prefix, subject, state, create)
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def _open_child_dir(self, fd: int, component: str, prefix: tuple[str, ...], subject: str,
                        state: _LayerState, create: bool) -> int:
        try:
            child = os.open(component, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
            if self._lower_kind(prefix) == "symlink":
                raise InvalidArgument(
                    f"layer {state.layer}: {subject} lies under {'/'.join(prefix)!r}, which is a "
                    "symbolic link in a lower layer that could lead outside the image; the import "
                    "is rejected, so rebuild the image without paths through symbolic links"
                ) from None
            os.mkdir(component, 0o755, dir_fd=fd)
            child = os.open(component, _DIR_FLAGS, dir_fd=fd)
            os.fchmod(child, 0o755)
        except NotADirectoryError:
            raise self._parent_error(fd, component, prefix, subject, state) from None

        if create:
            state.present.add(prefix)
        return child

    @staticmethod
    def _parent_error(fd: int, component: str, prefix: tuple[str, ...], subject: str,
                      state: _LayerState) -> InvalidArgument:
        mode = os.stat(component, dir_fd=fd, follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode):
            return InvalidArgument(
                f"layer {state.layer}: {subject} lies under {'/'.join(prefix)!r}, which is a "
                "symbolic link that could lead outside the image; the import is rejected, so "
                "rebuild the image without paths through symbolic links")
        return InvalidArgument(
            f"layer {state.layer}: {subject} lies under {'/'.join(prefix)!r}, which is not "
            "a folder; the layer is invalid")

    @staticmethod
    def _make_room(parent_fd: int, name: str, member: tarfile.TarInfo) -> None:
        """Remove subject is at ``name`` unless the entry is a folder replacing a folder."""
        try:
            mode = os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return

        if stat.S_ISDIR(mode):
            if not member.isdir():
                shutil.rmtree(name, dir_fd=parent_fd)
            return
        os.unlink(name, dir_fd=parent_fd)

    def _create(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parent_fd: int,
                parts: tuple[str, ...], state: _LayerState) -> None:
        name = parts[-1]
        if member.isdir():
            self._create_dir(member, parent_fd, parts, state)
        elif member.issym():
            os.symlink(member.linkname, name, dir_fd=parent_fd)
            self._set_link_metadata(member, parent_fd, name)
        elif member.islnk():
            self._create_hardlink(member, parent_fd, name, state)
        elif member.isreg():
            self._create_file(tar, member, parent_fd, name)
        elif member.ischr() or member.isblk() or member.isfifo():
            self._create_node(member, parent_fd, name)
        else:
            raise InvalidArgument(
                f"layer {state.layer}: entry {member.name!r} has the unsupported tar type "
                f"{member.type!r}; rebuild the layer with standard tar entry types")

    def _create_dir(self, member: tarfile.TarInfo, parent_fd: int, parts: tuple[str, ...],
                    state: _LayerState) -> None:
        name = parts[-1]
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent_fd)

        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        try:
            self._set_fd_metadata(fd, member)
        finally:
            os.close(fd)
        state.dir_times.append((parts, _mtime_ns(member)))

    def _create_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parent_fd: int,
                     name: str) -> None:
        fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent_fd)
        try:
            source = tar.extractfile(member)
            with open(fd, "wb", closefd=False) as target:
                shutil.copyfileobj(source, target, _CHUNK)
            self._set_fd_metadata(fd, member)
            mtime = _mtime_ns(member)
            os.utime(fd, ns=(mtime, mtime))
        finally:
            os.close(fd)
        self.size += member.size

    def _create_hardlink(self, member: tarfile.TarInfo, parent_fd: int, name: str,
                         state: _LayerState) -> None:
        """Link to the target entry itself: its last component is never resolved.

        NOTE: in overlayfs diff mode the target must be in the same layer, so a hard link
        to a lower layer's file is rejected there while the copy snapshotter accepts it.
        """
        target = split_entry_name(member.linkname, state.layer, "hard link target")
        if not target:
            raise InvalidArgument(
                f"layer {state.layer}: hard link {member.name!r} points to the image root")

        try:
            subject = f"hard link {member.name!r} target {member.linkname!r}"
            with self._open_dir(target[:-1], subject, state, create=False) as target_fd:
                os.link(target[-1], name, src_dir_fd=target_fd, dst_dir_fd=parent_fd,
                        follow_symlinks=False)
        except FileNotFoundError:
            raise InvalidArgument(
                f"layer {state.layer}: hard link {member.name!r} points to {member.linkname!r}, "
                "which is not in the image; the layer is invalid") from None

    def _create_node(self, member: tarfile.TarInfo, parent_fd: int, name: str) -> None:
        if member.isfifo():
            os.mkfifo(name, 0o600, dir_fd=parent_fd)
        else:
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            device = os.makedev(member.devmajor, member.devminor)
            os.mknod(name, kind | 0o600, device, dir_fd=parent_fd)

        os.chown(name, member.uid, member.gid, dir_fd=parent_fd, follow_symlinks=False)
        # The node was just made by mknod, so this chmod cannot follow a link.
        os.chmod(name, member.mode & 0o7777, dir_fd=parent_fd)
        mtime = _mtime_ns(member)
        os.utime(name, ns=(mtime, mtime), dir_fd=parent_fd, follow_symlinks=False)

    @staticmethod
    def _set_link_metadata(member: tarfile.TarInfo, parent_fd: int, name: str) -> None:
        os.chown(name, member.uid, member.gid, dir_fd=parent_fd, follow_symlinks=False)
        mtime = _mtime_ns(member)
        os.utime(name, ns=(mtime, mtime), dir_fd=parent_fd, follow_symlinks=False)

    @staticmethod
    def _set_fd_metadata(fd: int, member: tarfile.TarInfo) -> None:
        """Set owner, then mode and extended attributes, because chown clears setuid and caps."""
        os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, member.mode & 0o7777)
        _set_xattrs(fd, member)

    def _apply_root_entry(self, member: tarfile.TarInfo, state: _LayerState) -> None:
        if not member.isdir():
            raise InvalidArgument(
                f"layer {state.layer}: entry {member.name!r} names the image root but is not a "
                "folder; the layer is invalid")
        self._set_fd_metadata(self._root_fd, member)
        state.dir_times.append(((), _mtime_ns(member)))

    def _record_whiteout(self, parts: tuple[str, ...], member: tarfile.TarInfo,
                         state: _LayerState) -> None:
        if parts[-1] == OPAQUE_MARKER:
            with self._open_dir(parts[:-1], f"entry {member.name!r}", state, create=True):
                state.opaque_dirs.append(parts[:-1])
            return

        hidden = parts[-1][len(WHITEOUT_PREFIX):]
        if len(hidden.encode("utf-8", "surrogateescape")) > _NAME_MAX:
            raise InvalidArgument(
                f"layer {state.layer}: whiteout {member.name!r} names an entry longer than "
                f"{_NAME_MAX} bytes, which no filesystem can hold; the layer is invalid")
        if hidden.startswith(WHITEOUT_PREFIX):
            log.debug("layer %s: ignoring whiteout metadata entry %r", state.layer, member.name)
            return
        if hidden in ("", ".", ".."):
            raise InvalidArgument(
                f"layer {state.layer}: whiteout {member.name!r} names no valid entry; "
                "the layer is invalid")
        state.whiteouts.append((parts[:-1] + (hidden,), member.name))

    def _lower_kind(self, parts: tuple[str, ...]) -> str | None:
        """Return "symlink", "folder", "other" or None for a path of the lower layers' view.

        Each lower folder is searched from the top, walking without following links; an
        overlayfs whiteout or an opaque folder on the way hides the layers below it.
        """
        for lower_fd in self._lower_fds:
            fd = os.dup(lower_fd)
            try:
                for component in parts[:-1]:
                    child = os.open(component, _DIR_FLAGS, dir_fd=fd)
                    os.close(fd)
                    fd = child
                st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError, OSError):
                if _is_opaque(fd):
                    return None
                continue
            finally:
                os.close(fd)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return None
            if stat.S_ISLNK(st.st_mode):
                return "symlink"
            return "folder" if stat.S_ISDIR(st.st_mode) else "other"
        return None

    def _apply_whiteouts(self, state: _LayerState) -> None:
        if self._diff_mode:
            self._write_overlay_whiteouts(state)
            return
        for parts, entry in state.whiteouts:
            if parts not in state.present:
                self._remove_lower(parts, entry, state)
            elif self._is_folder(parts, entry, state):
                # The layer whites out a folder and adds it again, so only lower content goes.
                self._clear_lower(parts, state)

        for parts in state.opaque_dirs:
            self._clear_lower(parts, state)

    def _write_overlay_whiteouts(self, state: _LayerState) -> None:
        """Turn the layer's whiteouts into overlayfs ones in this layer's own folder."""
        for parts, entry in state.whiteouts:
            subject = f"whiteout {entry!r}"
            with self._open_dir(parts[:-1], subject, state, create=True) as parent_fd:
                if parts not in state.present:
                    os.mknod(parts[-1], stat.S_IFCHR | 0o600, 0, dir_fd=parent_fd)
                elif stat.S_ISDIR(os.stat(parts[-1], dir_fd=parent_fd,
                                          follow_symlinks=False).st_mode):
                    # The folder is whited out and added again: hide what lies below it.
                    _set_opaque_at(parent_fd, parts[-1])

        for parts in state.opaque_dirs:
            with self._open_dir(parts, f"folder {'/'.join(parts)!r}", state, create=True) as fd:
                os.setxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")

    def _remove_lower(self, parts: tuple[str, ...], entry: str, state: _LayerState) -> None:
        try:
            subject = f"whiteout {entry!r}"
            with self._open_dir(parts[:-1], subject, state, create=False) as parent_fd:
                _remove_entry(parent_fd, parts[-1])
        except FileNotFoundError:
            log.debug("layer %s: whiteout %r names nothing, ignored", state.layer, entry)

    def _is_folder(self, parts: tuple[str, ...], entry: str, state: _LayerState) -> bool:
        with self._open_dir(parts[:-1], f"whiteout {entry!r}", state, create=False) as parent_fd:
            mode = os.stat(parts[-1], dir_fd=parent_fd, follow_symlinks=False).st_mode
        return stat.S_ISDIR(mode)

    def _clear_lower(self, parts: tuple[str, ...], state: _LayerState) -> None:
        """Delete the entries under an opaque folder that this layer did not add."""
        subject = f"folder {'/'.join(parts)!r}"
        with self._open_dir(parts, subject, state, create=False) as fd:
            for name in os.listdir(fd):
                child = parts + (name,)
                if child not in state.present:
                    _remove_entry(fd, name)
                elif stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    self._clear_lower(child, state)

    def _restore_dir_times(self, state: _LayerState) -> None:
        """Set folder mtimes last, because adding entries changed them."""
        for parts, mtime in state.dir_times:
            try:
                subject = f"folder {'/'.join(parts)!r}"
                with self._open_dir(parts, subject, state, create=False) as fd:
                    os.utime(fd, ns=(mtime, mtime))
            except (FileNotFoundError, InvalidArgument):
                log.debug("layer %s: folder %s was replaced, mtime not restored",
                          state.layer, "/".join(parts))


def _is_opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, OVERLAY_OPAQUE_XATTR) == b"y"
    except OSError:
        return False


def _set_opaque_at(parent_fd: int, name: str) -> None:
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        os.setxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
    finally:
        os.close(fd)


def _remove_entry(parent_fd: int, name: str) -> None:
    try:
        mode = os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(name, dir_fd=parent_fd)
    else:
        os.unlink(name, dir_fd=parent_fd)


def _mtime_ns(member: tarfile.TarInfo) -> int:
    return int(member.mtime * 1_000_000_000)


def _set_xattrs(fd: int, member: tarfile.TarInfo) -> None:
    """Restore the kept extended attributes from the entry's PAX records, logging failures."""
    for key, value in member.pax_headers.items():
        if not key.startswith(XATTR_PAX_PREFIX):
            continue

        name = key[len(XATTR_PAX_PREFIX):]
        if not xattr_kept(name):
            log.debug("dropping extended attribute %s of %r", name, member.name)
            continue

        # tarfile decodes PAX values as UTF-8 with surrogateescape, which this reverses exactly.
        try:
            os.setxattr(fd, name, value.encode("utf-8", "surrogateescape"))
        except OSError as error:
            level = logging.DEBUG if name.startswith("user.") else logging.WARNING
            log.log(level, "cannot set extended attribute %s on %r: %s", name, member.name, error)
