"""Content store: blobs addressed by their sha256 digest, verified while written."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from shim.protocol import InvalidArgument

log = logging.getLogger(__name__)

DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}", re.ASCII)
_CHUNK = 1 << 20


def check_digest(digest: object, where: str) -> str:
    """Return the digest if it is ``sha256:`` and 64 lowercase hex digits, else raise."""
    if not isinstance(digest, str) or DIGEST_RE.fullmatch(digest) is None:
        raise InvalidArgument(
            f"invalid digest {digest!r} in {where}: "
            "only sha256:<64 hex digits> digests are supported")
    return digest


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries to disk, so that a rename in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobWriter:
    """File-like sink that hashes what it receives into a temporary file of the store."""

    def __init__(self, store: ContentStore):
        self._store = store
        fd, name = tempfile.mkstemp(prefix="blob-", dir=store.ingest_dir)
        self._path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def commit(self, expected: str | None = None, where: str = "") -> tuple[str, bool]:
        """Move the data to its digest's place; return (digest, whether the blob is new).

        Raise InvalidArgument, and drop the data, when ``expected`` differs from the real digest.
        """
        digest = "sha256:" + self._hash.hexdigest()
        if expected is not None and digest != expected:
            self.abort()
            raise InvalidArgument(
                f"blob {expected} in {where} is corrupt: its content hashes to {digest}; "
                "export or download the archive again")

        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

        final = self._store.path(digest)
        if final.exists():
            self._path.unlink()
            return digest, False
        os.rename(self._path, final)
        fsync_dir(final.parent)
        return digest, True

    def abort(self) -> None:
        """Drop the temporary file; safe to call more than once."""
        self._file.close()
        self._path.unlink(missing_ok=True)


class ContentStore:
    """Blobs under ``root/blobs/sha256/<hex>``, each written to a temporary file, then renamed."""

    def __init__(self, root: Path):
        self.blob_dir = root / "blobs" / "sha256"
        self.ingest_dir = root / "blobs" / "ingest"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.ingest_dir.mkdir(parents=True, exist_ok=True)

    def clean_ingest(self) -> None:
        """Remove temporary files left by an import that was interrupted by a crash."""
        for leftover in self.ingest_dir.iterdir():
            if leftover.name.endswith(".partial") and leftover.is_file():
                # A partial download is resumed by the next pull and verified when complete.
                continue
            log.info("removing unfinished blob %s", leftover)
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()

    def path(self, digest: str) -> Path:
        """Return the file of a blob; the digest must already be validated."""
        return self.blob_dir / digest.removeprefix("sha256:")

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def writer(self) -> BlobWriter:
        """Open a writer for a blob whose digest is known only at the end."""
        return BlobWriter(self)

    def put_bytes(self, data: bytes) -> tuple[str, bool]:
        """Store a small blob; return (digest, whether the blob is new)."""
        writer = self.writer()
        writer.write(data)
        return writer.commit()

    def ingest(self, source: BinaryIO, expected: str, size: int, where: str) -> bool:
        """Copy a blob of known digest and size from a stream; return whether it is new.

        A blob already in the store is not read again, because it was verified when written.
        """
        if self.exists(expected):
            return False

        writer = self.writer()
        try:
            shutil.copyfileobj(source, writer, _CHUNK)
        except BaseException:
            writer.abort()
            raise
        if writer.size != size:
            writer.abort()
            raise InvalidArgument(
                f"blob {expected} in {where} has {writer.size} bytes but its descriptor "
                f"says {size}; export or download the archive again")
        return writer.commit(expected, where)[1]

    def commit_file(self, path: Path, expected: str, size: int, where: str) -> bool:
        """Verify a downloaded file in the ingest folder and move it to its digest's place.

        Return whether the blob is new; a file of the wrong size or digest is deleted.
        """
        digest = hashlib.sha256()
        with open(path, "rb") as source:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
            actual_size = source.tell()
            os.fsync(source.fileno())
        actual = "sha256:" + digest.hexdigest()
        if actual_size != size or actual != expected:
            path.unlink(missing_ok=True)
            raise InvalidArgument(
                f"blob {expected} from {where} is corrupt: {actual_size} bytes hashing to "
                f"{actual}, expected {size} bytes; pull again")
        final = self.path(expected)
        if final.exists():
            path.unlink()
            return False
        os.rename(path, final)
        fsync_dir(final.parent)
        return True

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def delete(self, digest: str) -> None:
        """Remove a blob if present."""
        self.path(digest).unlink(missing_ok=True)
