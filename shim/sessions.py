"""Interactive I/O of container processes: attached clients, stdin and the terminal.

One ``Stream`` per process started with ``-i`` or ``-t`` (the init or an
exec).  It lives in the shim, so a session outlives a restart of moord.

Output: every chunk gets a byte offset in the process's output.  The last
``RING_BYTES`` are kept so that a client that attaches right after the start
(``since=0``) or reconnects (``since=<last offset>``) misses nothing that is
still in the ring.  Each client may have at most ``WINDOW_BYTES`` of output
sent but not acknowledged (``attach_ack``).  A chunk that does not fit is
dropped for that client only and counted.  So a client that stops reading
never blocks the container or the other clients.

Stdin: each client numbers its bytes from 0 under a token it chooses, so a
chunk sent again after a reconnect is written once.  At most
``STDIN_PENDING_BYTES`` wait for the pipe or terminal to accept them, and a
client is told (``in``) how far its input was written so that it can hold
back its own reading.
"""

from __future__ import annotations

import collections
import errno
import logging
import os

log = logging.getLogger(__name__)

RING_BYTES = 64 * 1024
WINDOW_BYTES = 256 * 1024
STDIN_PENDING_BYTES = 1024 * 1024
MAX_TOKENS = 64


class AttachedClient:
    """One attached client of one stream and its output window."""

    __slots__ = ("identity", "token", "sent", "acked", "dropped", "stdin")

    def __init__(self, identity: bytes, token: str, offset: int, stdin: bool):
        self.identity = identity
        self.token = token
        self.sent = offset
        self.acked = offset
        self.dropped = 0
        self.stdin = stdin


class Stream:
    """Interactive I/O of one process: ring, clients, stdin."""

    def __init__(self, container_id: str, key: str, tty: bool, stdin_fd: int | None, send):
        self.container_id = container_id
        self.key = key
        self.tty = tty
        self.stdin_fd = stdin_fd
        self.send = send
        # Recent output as (offset, stream, data) chunks, at most about RING_BYTES in all.
        self.ring: collections.deque[tuple[int, int, bytes]] = collections.deque()
        self.ring_bytes = 0
        self.ring_start = 0
        self.out_offset = 0
        self.clients: dict[bytes, AttachedClient] = {}
        self.pending: collections.deque = collections.deque()
        self.pending_bytes = 0
        self.accepted: dict[str, int] = {}
        self.close_requested = False
        self.exit: dict | None = None
        self.dropped_total = 0

    # -- output -----------------------------------------------------------

    def output(self, stream: int, data: bytes) -> None:
        """Record one chunk of the process's output and send it to every client with room."""
        offset = self.out_offset
        self.out_offset += len(data)
        self.ring.append((offset, stream, data))
        self.ring_bytes += len(data)
        while self.ring_bytes - len(self.ring[0][2]) >= RING_BYTES:
            _, _, oldest = self.ring.popleft()
            self.ring_bytes -= len(oldest)
            self.ring_start += len(oldest)
        for client in list(self.clients.values()):
            self._deliver(client, stream, offset, data)

    def _deliver(self, client: AttachedClient, stream: int, offset: int, data: bytes) -> None:
        if client.sent - client.acked + len(data) > WINDOW_BYTES:
            self._drop(client, len(data))
            return
        message = {"att": self.key, "s": stream, "d": data, "off": offset, "dropped": client.dropped}
        if not self.send(client.identity, message):
            self._drop(client, len(data))
            return
        client.sent = offset + len(data)

    def _drop(self, client: AttachedClient, size: int) -> None:
        if client.dropped == 0:
            log.warning("container %s: attached client of %s is not reading; dropping its output",
                        self.container_id, self.key or "init")
        client.dropped += size
        self.dropped_total += size

    # -- clients ----------------------------------------------------------

    def attach(self, identity: bytes, token: str, since: int | None, stdin: bool) -> dict:
        """Add a client; with ``since``, first send the ring's content from that offset on."""
        start = self.out_offset if since is None else min(max(0, int(since)), self.out_offset)
        client = AttachedClient(identity, token, start, stdin)
        self.clients[identity] = client
        if token not in self.accepted:
            self._remember_token(token)
        if start < self.ring_start:
            self._drop(client, self.ring_start - start)
            start = self.ring_start
        client.sent = client.acked = start
        for offset, stream, data in list(self.ring):
            if offset + len(data) > start:
                skip = max(0, start - offset)
                self._deliver(client, stream, offset + skip, data[skip:])
        return {"tty": self.tty, "stdin": self.stdin_fd is not None, "offset": self.out_offset,
                "stdin_offset": self.accepted[token], "exit": self.exit}

    def _remember_token(self, token: str) -> None:
        while len(self.accepted) >= MAX_TOKENS:
            self.accepted.pop(next(iter(self.accepted)))
        self.accepted[token] = 0

    def detach(self, identity: bytes) -> None:
        self.clients.pop(identity, None)

    def ack(self, identity: bytes, offset: int) -> None:
        client = self.clients.get(identity)
        if client is not None and client.acked < offset <= client.sent:
            client.acked = offset

    def finish(self, code: int, signal: int) -> None:
        """Tell every client that the process exited; its output is already sent."""
        self.exit = {"code": code, "signal": signal}
        for client in list(self.clients.values()):
            self.send(client.identity, {"att": self.key, "exit": self.exit, "dropped": client.dropped})
        self.close_stdin()

    # -- stdin ------------------------------------------------------------

    def write_stdin(self, identity: bytes, offset: int, data: bytes) -> None:
        """Queue the part of a client's stdin chunk that was not accepted before."""
        client = self.clients.get(identity)
        if client is None or not client.stdin or self.stdin_fd is None or self.close_requested:
            return
        accepted = self.accepted.setdefault(client.token, 0)
        skip = accepted - offset
        if skip >= len(data):
            return
        if skip < 0:
            log.warning("container %s: %d bytes of stdin for %s are missing; writing what came",
                        self.container_id, -skip, self.key or "init")
            skip = 0
        if self.pending_bytes + len(data) - skip > STDIN_PENDING_BYTES:
            log.error("container %s: stdin of %s is full; dropped %d bytes from a client that ignored "
                      "its window", self.container_id, self.key or "init", len(data) - skip)
            return
        end = offset + len(data)
        self.accepted[client.token] = end
        self.pending.append((identity, end, memoryview(data)[skip:]))
        self.pending_bytes += len(data) - skip
        self.flush_stdin()

    def request_close(self) -> None:
        """Close stdin once the queued input is written (EOF for the process); a terminal stays open."""
        if self.tty:
            return
        self.close_requested = True
        if not self.pending:
            self.close_stdin()

    def wants_write(self) -> bool:
        return self.stdin_fd is not None and bool(self.pending)

    def flush_stdin(self) -> None:
        """Write queued stdin until the pipe or terminal is full."""
        while self.pending and self.stdin_fd is not None:
            identity, end, view = self.pending[0]
            try:
                written = os.write(self.stdin_fd, view)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.EIO):
                    log.error("container %s: writing stdin of %s failed: %s", self.container_id,
                              self.key or "init", exc)
                self.close_stdin()
                return
            self.pending_bytes -= written
            if written < len(view):
                self.pending[0] = (identity, end, view[written:])
                continue
            self.pending.popleft()
            if identity in self.clients:
                self.send(identity, {"att": self.key, "in": end})
        if self.close_requested:
            self.close_stdin()

    def close_stdin(self) -> None:
        self.pending.clear()
        self.pending_bytes = 0
        if self.stdin_fd is not None:
            os.close(self.stdin_fd)
            self.stdin_fd = None

    def describe(self) -> dict:
        return {"tty": self.tty, "clients": len(self.clients), "dropped": self.dropped_total,
                "stdin": self.stdin_fd is not None}
