"""A minimal ZMTP 3.0 DEALER peer over a unix socket, for the ``moor`` client.

Importing pyzmq costs ``moor`` 12 to 27 ms at every start, which is a large
share of a short command.  The client only needs one DEALER connection to a
ROUTER with the NULL security mechanism, which the ZMTP 3.0 specification
(ZeroMQ RFC 23) defines in a few dozen lines: a 64-byte greeting each way, a
READY command each way, then frames of ``flags, size, body``.  moord keeps
using libzmq; this module only speaks the same protocol.
"""

from __future__ import annotations

import select
import socket
import struct

_SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"
_GREETING = _SIGNATURE + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
FLAG_MORE = 0x01
FLAG_LONG = 0x02
FLAG_COMMAND = 0x04


class ProtocolError(OSError):
    """The peer broke the ZMTP framing or closed the connection."""


def _ready_command() -> bytes:
    name, value = b"Socket-Type", b"DEALER"
    body = bytes([5]) + b"READY" + bytes([len(name)]) + name + struct.pack(">I", len(value)) + value
    return bytes([FLAG_COMMAND, len(body)]) + body


def _frame(body: bytes, flags: int = 0) -> bytes:
    if len(body) > 255:
        return bytes([flags | FLAG_LONG]) + struct.pack(">Q", len(body)) + body
    return bytes([flags, len(body)]) + body


class Dealer:
    """One connected DEALER socket that sends and receives single-frame messages."""

    def __init__(self, path: str, timeout: float = 10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buffer = bytearray()
        self.sock.sendall(_GREETING + _ready_command())
        greeting = self._read_exactly(64)
        if greeting[:1] != b"\xff" or greeting[9:10] != b"\x7f" or greeting[10] < 3:
            raise ProtocolError("the peer did not send a ZMTP 3 greeting")
        self._read_frame()  # the peer's READY command
        self.sock.settimeout(None)

    def send(self, body: bytes) -> None:
        self.sock.sendall(_frame(body))

    def poll(self, timeout: float | None) -> bool:
        """Return whether a message can be read within ``timeout`` seconds (None waits forever)."""
        if self.buffer:
            return True
        readable, _, _ = select.select([self.sock], [], [], timeout)
        return bool(readable)

    def recv(self) -> bytes:
        """Return the last frame of the next message, skipping commands such as PING."""
        while True:
            flags, body = self._read_frame()
            if flags & FLAG_COMMAND:
                continue
            while flags & FLAG_MORE:
                flags, body = self._read_frame()
            return body

    def _read_frame(self) -> tuple[int, bytes]:
        flags = self._read_exactly(1)[0]
        if flags & FLAG_LONG:
            (size,) = struct.unpack(">Q", self._read_exactly(8))
        else:
            size = self._read_exactly(1)[0]
        return flags, self._read_exactly(size)

    def _read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(max(65536, size - len(self.buffer)))
            if not chunk:
                raise ProtocolError("moord closed the connection")
            self.buffer += chunk
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def close(self) -> None:
        self.sock.close()
