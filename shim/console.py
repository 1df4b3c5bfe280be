"""Terminals for container processes: the OCI runtime's console socket and window sizes.

With ``process.terminal`` set, runc creates the pty inside the container and
sends the master side over a unix socket given with ``--console-socket``
(SCM_RIGHTS, one fd).  The shim listens on that socket before it calls runc
and accepts the connection after runc has returned: a unix stream client can
connect and send before the listener accepts, so the fd waits in the queue.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct
import termios

log = logging.getLogger(__name__)

_WINSIZE = struct.Struct("HHHH")
MAX_DIMENSION = 65535


class ConsoleSocket:
    """A listening unix socket that receives one pty master from the runtime."""

    def __init__(self, path: str):
        self.path = path
        _unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.bind(path)
        os.chmod(path, 0o600)
        self.sock.listen(1)

    def receive_master(self, timeout: float = 10.0) -> int:
        """Accept the runtime's connection and return the pty master fd, non-blocking."""
        self.sock.settimeout(timeout)
        connection, _ = self.sock.accept()
        with connection:
            connection.settimeout(timeout)
            _, fds, _, _ = socket.recv_fds(connection, 4096, 1)
        if not fds:
            raise OSError("the runtime connected to the console socket but sent no file descriptor")
        master = fds[0]
        os.set_inheritable(master, False)
        os.set_blocking(master, False)
        return master

    def close(self) -> None:
        self.sock.close()
        _unlink(self.path)


def set_window_size(fd: int, rows: int, columns: int) -> None:
    """Set the window size of a terminal; the kernel sends SIGWINCH to its foreground group."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, _WINSIZE.pack(rows, columns, 0, 0))


def window_size(fd: int) -> tuple[int, int]:
    """Return ``(rows, columns)`` of a terminal."""
    rows, columns, _, _ = _WINSIZE.unpack(fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * _WINSIZE.size))
    return rows, columns


def check_size(rows, columns) -> tuple[int, int]:
    """Validate a window size from the wire and return it as two ints."""
    from shim.protocol import InvalidArgument

    if not isinstance(rows, int) or not isinstance(columns, int):
        raise InvalidArgument(f"invalid window size {rows!r}x{columns!r}: rows and columns must be integers")
    if not (0 < rows <= MAX_DIMENSION and 0 < columns <= MAX_DIMENSION):
        raise InvalidArgument(f"invalid window size {rows}x{columns}: each must be from 1 to {MAX_DIMENSION}")
    return rows, columns


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
