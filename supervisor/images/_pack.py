"""Write a folder as an uncompressed layer tar, keeping owners, modes and extended attributes."""

from __future__ import annotations

import logging
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ._unpack import XATTR_PAX_PREFIX, xattr_kept

log = logging.getLogger(__name__)


def write_folder_layer(folder: Path, out: BinaryIO) -> None:
    """Write every entry under ``folder`` to ``out`` as a PAX tar, following no symlink.

    Hard links between regular files stay hard links.  Sockets are skipped, and so is
    the content of other filesystems mounted below ``folder``, as ``tar --one-file-system``
    does, so that a mounted /proc or /sys never ends up in an image.
    """
    root_device = os.stat(folder).st_dev
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path, arcname in _walk(folder, root_device):
            _add_entry(tar, path, arcname)


def _walk(folder: Path, root_device: int) -> Iterator[tuple[str, str]]:
    """Yield (path, archive name) pairs, each folder before its content, names sorted."""
    stack = [(str(folder), "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)

        subfolders = []
        for entry in entries:
            yield entry.path, prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(entry)

        for entry in reversed(subfolders):
            if entry.stat(follow_symlinks=False).st_dev != root_device:
                log.info("not descending into %s: another filesystem is mounted there", entry.path)
                continue
            stack.append((entry.path, prefix + entry.name + "/"))


def _add_entry(tar: tarfile.TarFile, path: str, arcname: str) -> None:
    info = tar.gettarinfo(path, arcname)
    if info is None:
        log.debug("skipping socket %s", path)
        return

    info.uname = info.gname = ""
    xattrs = _read_xattrs(path)
    if xattrs:
        info.pax_headers = xattrs

    if not info.isreg():
        tar.addfile(info)
        return
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with open(fd, "rb") as source:
        tar.addfile(info, source)


def _read_xattrs(path: str) -> dict[str, str]:
    """Return the kept extended attributes as PAX records, their bytes kept by surrogateescape."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}

    records = {}
    for name in names:
        if not xattr_kept(name):
            continue
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as error:
            log.debug("cannot read extended attribute %s of %s: %s", name, path, error)
            continue
        records[XATTR_PAX_PREFIX + name] = value.decode("utf-8", "surrogateescape")
    return records
