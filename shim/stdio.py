"""The stdio of a process that the shim creates: output pipes, a stdin pipe, or a terminal."""

from __future__ import annotations

import fcntl
import logging
import os

from shim import console, protocol
from shim.protocol import StartFailed

log = logging.getLogger(__name__)

F_SETPIPE_SZ = 1031
PIPE_BYTES = 1024 * 1024


def _make_pipe() -> tuple[int, int]:
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(read_fd, F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        log.debug("could not grow a pipe to %d bytes", PIPE_BYTES)
    os.set_blocking(read_fd, False)
    return read_fd, write_fd


class ProcessStdio:
    """The stdio of one process being created: output pipes, a stdin pipe, or a terminal.

    ``for_runtime`` gives the three fds that the runtime passes on to the
    process.  With a terminal, the process gets the pty slave instead, and the
    master arrives on the console socket; it carries both output and input.
    """

    def __init__(self, stdin: bool, tty: bool, console_path: str):
        self.tty = tty
        self.interactive = stdin or tty
        self.null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.pipes: dict[int, tuple[int, int]] = {}
        self.stdin_pipe: tuple[int, int] | None = None
        self.console: console.ConsoleSocket | None = None
        self.master: int | None = None
        if tty:
            self.console = console.ConsoleSocket(console_path)
            return
        self.pipes = {protocol.STDOUT: _make_pipe(), protocol.STDERR: _make_pipe()}
        if stdin:
            self.stdin_pipe = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(self.stdin_pipe[1], False)

    def for_runtime(self) -> tuple[int, int, int]:
        if self.tty:
            return self.null, self.null, self.null
        stdin = self.stdin_pipe[0] if self.stdin_pipe else self.null
        return stdin, self.pipes[protocol.STDOUT][1], self.pipes[protocol.STDERR][1]

    def console_path(self) -> str | None:
        return self.console.path if self.console else None

    def receive(self) -> None:
        """Take the pty master from the console socket, once the runtime has sent it."""
        if self.console is not None:
            self.master = self.console.receive_master()
            self.console.close()
            self.console = None

    def outputs(self):
        """Yield ``(stream, fd)`` for each output to watch; the shim then owns those fds."""
        if self.master is not None:
            yield protocol.STDOUT, self.master
        for stream, (read_fd, _) in self.pipes.items():
            yield stream, read_fd

    def take_stdin(self) -> int | None:
        """Return the fd that the shim writes the process's stdin to, now owned by the caller."""
        if self.master is not None:
            return os.dup(self.master)
        if self.stdin_pipe is not None:
            write_fd = self.stdin_pipe[1]
            self.stdin_pipe = (self.stdin_pipe[0], -1)
            return write_fd
        return None

    def close_child_ends(self) -> None:
        """Close what only the process needed: the shim keeps its own ends."""
        for _, write_fd in self.pipes.values():
            os.close(write_fd)
        if self.stdin_pipe is not None:
            os.close(self.stdin_pipe[0])
            if self.stdin_pipe[1] >= 0:
                os.close(self.stdin_pipe[1])
        if self.null >= 0:
            os.close(self.null)
        self.pipes, self.stdin_pipe, self.null = {}, None, -1

    def close_all(self) -> None:
        """Close every fd after a failed start; calling it again does nothing."""
        for read_fd, _ in self.pipes.values():
            os.close(read_fd)
        if self.master is not None:
            os.close(self.master)
            self.master = None
        if self.console is not None:
            self.console.close()
            self.console = None
        self.close_child_ends()


def open_stdio(stdin: bool, tty: bool, console_path: str) -> ProcessStdio:
    """Create the pipes or the console socket of a process; an OSError is a failed start."""
    try:
        return ProcessStdio(stdin, tty, console_path)
    except OSError as exc:
        raise StartFailed(f"failed to prepare the stdio of the process ({console_path}): {exc}") from None


def receive_terminal(stdio: ProcessStdio) -> None:
    """Receive the pty master; a runtime that sent none is a failed start."""
    try:
        stdio.receive()
    except OSError as exc:
        raise StartFailed(f"failed to receive the terminal from the runtime: {exc}") from None
