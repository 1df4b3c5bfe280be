"""Lookups inside a container's root filesystem that never leave it.

Symlinks in an image are resolved as if the rootfs were '/': an absolute
target starts again at the rootfs, and '..' stops at it.  The rootfs must not
change while these functions run, because each path is resolved first and
opened afterwards.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from shim.protocol import InvalidArgument

from .files import read_regular_file
from .options import split_user

# Linux fails a path lookup with ELOOP after 40 symlinks, and so does this resolver.
MAX_SYMLINKS = 40
MAX_ACCOUNT_FILE_BYTES = 16 * 1024 * 1024
MAX_ID = 2**32 - 2  # (uid_t)-1 means "no change" to setresuid(2), so it is not a valid id


def resolve_in_root(root: Path, path: str) -> Path:
    """Resolve ``path`` inside ``root``, following symlinks without ever leaving ``root``.

    Components that do not exist are kept as they are, so the result may not exist.
    """
    pending = list(reversed(path.split("/")))
    resolved: list[str] = []
    links = 0
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            if resolved:
                resolved.pop()
            continue

        target = _read_link(root.joinpath(*resolved, name))
        if target is None:
            resolved.append(name)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise InvalidArgument(f"too many levels of symbolic links in {path} inside {root}")
        if target.startswith("/"):
            resolved = []
        pending.extend(reversed(target.split("/")))
    return root.joinpath(*resolved)


def _read_link(path: Path) -> str | None:
    try:
        if not stat.S_ISLNK(os.lstat(path).st_mode):
            return None
        return os.readlink(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def read_rootfs_text(root: Path, path: str) -> str | None:
    """Read a regular file inside ``root`` as text, or return None if it does not exist."""
    resolved = resolve_in_root(root, path)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(resolved, flags)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise InvalidArgument(f"failed to open {path} in the image at {root}: {exc.strerror}") from None

    data = read_regular_file(fd, MAX_ACCOUNT_FILE_BYTES)
    if data is None:
        raise InvalidArgument(f"{path} in the image at {root} is not a regular file")
    if len(data) > MAX_ACCOUNT_FILE_BYTES:
        raise InvalidArgument(f"{path} in the image at {root} is larger than {MAX_ACCOUNT_FILE_BYTES} bytes")
    return data.decode("utf-8", errors="surrogateescape")


def _read_records(root: Path, path: str, min_fields: int) -> list[list[str]]:
    """Split a passwd(5) or group(5) style file into records, skipping malformed lines."""
    text = read_rootfs_text(root, path) or ""
    records = []
    for line in text.split("\n"):
        fields = line.split(":")
        if line.startswith("#") or len(fields) < min_fields:
            continue
        if fields[2].isascii() and fields[2].isdigit():
            records.append(fields)
    return records


def _parse_id(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    if value > MAX_ID:
        raise InvalidArgument(f"invalid user or group id {text}: the maximum is {MAX_ID}")
    return value


def resolve_user(rootfs: Path, user: str | None) -> dict:
    """Resolve ``USER[:GROUP]`` to the OCI ``process.user`` through the image's account files.

    ``None`` means root.  A numeric uid works without a passwd entry (its gid
    is then 0).  Supplementary groups come from /etc/group only when no group
    is given, as docker does.
    """
    rootfs = Path(rootfs)
    if not rootfs.is_dir():
        raise InvalidArgument(f"the root filesystem {rootfs} does not exist or is not a directory")
    name, group = split_user(user if user is not None else "0")
    uid, gid, user_name = _lookup_user(rootfs, name)

    if group is not None:
        return {"uid": uid, "gid": _lookup_group(rootfs, group), "additionalGids": []}

    additional = []
    for fields in _read_records(rootfs, "/etc/group", 4):
        group_id = int(fields[2])
        members = fields[3].split(",")
        if user_name in members and group_id != gid and group_id not in additional:
            additional.append(group_id)
    return {"uid": uid, "gid": gid, "additionalGids": additional}


def _lookup_user(rootfs: Path, name: str) -> tuple[int, int, str | None]:
    number = _parse_id(name)
    for fields in _read_records(rootfs, "/etc/passwd", 4):
        matches = fields[0] == name if number is None else int(fields[2]) == number
        if matches and fields[3].isascii() and fields[3].isdigit():
            return int(fields[2]), int(fields[3]), fields[0]

    if number is None:
        raise InvalidArgument(
            f"user {name!r} not found in /etc/passwd of the image at {rootfs}. "
            f"Use a numeric uid or a user that the image defines")
    return number, 0, None


def _lookup_group(rootfs: Path, group: str) -> int:
    number = _parse_id(group)
    for fields in _read_records(rootfs, "/etc/group", 3):
        if (fields[0] == group) if number is None else (int(fields[2]) == number):
            return int(fields[2])

    if number is None:
        raise InvalidArgument(
            f"group {group!r} not found in /etc/group of the image at {rootfs}. "
            f"Use a numeric gid or a group that the image defines")
    return number
