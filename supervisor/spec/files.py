"""Bounded reads of regular files through an already opened descriptor."""

from __future__ import annotations

import os
import stat


def read_regular_file(fd: int, limit: int) -> bytes | None:
    """Read at most ``limit + 1`` bytes from ``fd`` and close it, or return None for a non-regular file.

    Reading one byte past ``limit`` lets the caller tell a file of exactly
    ``limit`` bytes from a longer one.
    """
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1024 * 1024))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
