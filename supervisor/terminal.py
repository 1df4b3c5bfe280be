"""The client's own terminal: raw mode, window size and the detach key sequence.

Imported only by interactive commands, so that ``termios`` and ``tty`` stay
out of the start-up time of the others.
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios
import tty

from shim.protocol import InvalidArgument

DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"
_WINSIZE = struct.Struct("HHHH")
# The control characters that ``ctrl-`` names beyond the letters, as in ASCII.
_CONTROL_SYMBOLS = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


def parse_detach_keys(text: str) -> bytes:
    """Turn a docker-style key list such as ``ctrl-p,ctrl-q`` or ``ctrl-a,x`` into bytes.

    Each comma-separated key is one character, or ``ctrl-`` followed by a
    letter or one of ``@ [ \\ ] ^ _``.
    """
    keys = bytearray()
    for key in text.split(","):
        if len(key) == 1:
            keys += key.encode()
            continue
        lowered = key.lower()
        name = lowered[5:] if lowered.startswith("ctrl-") else ""
        if len(name) == 1 and "a" <= name <= "z":
            keys.append(ord(name) - ord("a") + 1)
        elif len(name) == 1 and name in _CONTROL_SYMBOLS:
            keys.append(_CONTROL_SYMBOLS[name])
        else:
            raise InvalidArgument(
                f"invalid detach key {key!r} in {text!r}: give single characters or ctrl-<letter>, "
                "ctrl-@, ctrl-[, ctrl-\\, ctrl-], ctrl-^ or ctrl-_, separated by commas")
    if not keys:
        raise InvalidArgument("invalid --detach-keys '': give at least one key, for example ctrl-p,ctrl-q")
    return bytes(keys)


class DetachDetector:
    """Find the detach sequence in typed input; bytes of a partial match are held back.

    A partial match that the next byte breaks is sent on unchanged, so the
    sequence's first key still reaches the process when typed alone.
    """

    def __init__(self, keys: bytes):
        self.keys = keys
        self.matched = 0

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """Return the bytes to forward and whether the whole sequence was typed."""
        forward = bytearray()
        for index, byte in enumerate(data):
            if byte == self.keys[self.matched]:
                self.matched += 1
                if self.matched == len(self.keys):
                    self.matched = 0
                    return bytes(forward), True
                continue
            forward += self.keys[:self.matched]
            self.matched = 0
            if byte == self.keys[0]:
                self.matched = 1
                continue
            forward.append(byte)
        return bytes(forward), False


def window_size(fd: int) -> tuple[int, int] | None:
    """Return ``(rows, columns)`` of the terminal on ``fd``, or None if it is not a sized terminal."""
    try:
        rows, columns, _, _ = _WINSIZE.unpack(fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * _WINSIZE.size))
    except OSError:
        return None
    if rows == 0 or columns == 0:
        return None
    return rows, columns


class RawMode:
    """Put a terminal in raw mode for the duration of a ``with`` block, then restore it."""

    def __init__(self, fd: int):
        self.fd = fd
        self.saved: list | None = None

    def __enter__(self) -> "RawMode":
        self.saved = termios.tcgetattr(self.fd)
        tty.setraw(self.fd, termios.TCSANOW)
        return self

    def restore(self) -> None:
        """Restore the saved mode; a terminal that hung up (closed window) has nothing to restore."""
        if self.saved is None:
            return
        try:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
        except termios.error:
            pass
        self.saved = None

    def __exit__(self, *exc_info) -> None:
        self.restore()


def is_terminal(fd: int) -> bool:
    return os.isatty(fd)
