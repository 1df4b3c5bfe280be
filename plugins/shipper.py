"""Datagram senders for the socket logging drivers, and the line splitting they share.

``Shipper`` owns one socket and one thread.  The event loop only calls
``send``, which puts the datagram in a bounded queue and returns at once.
When the queue is full, or the thread cannot deliver it (no listener, a send
timeout, a refused datagram), the message is dropped and counted for its
container.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time

log = logging.getLogger(__name__)

LINE_PIECE_BYTES = 16 * 1024
# TODO: after a moord restart these drivers resume from the last record moord acknowledged, so messages
# still queued here when moord died are lost, not resent.
QUEUE_MESSAGES = 8192
SEND_TIMEOUT = 1.0
DROP_LOG_SECONDS = 10.0


class LineSplitter:
    """Cut each stream of a container's output into lines, keeping an unfinished line for the next record.

    A line longer than ``LINE_PIECE_BYTES`` comes out in pieces; each item is
    ``(stream, text_without_newline, partial)``.
    """

    def __init__(self):
        self.pending: dict[int, bytes] = {}

    def feed(self, stream: int, data: bytes) -> list[tuple[int, bytes, bool]]:
        buffer = self.pending.pop(stream, b"") + data
        out = []
        while True:
            newline = buffer.find(b"\n")
            if newline < 0 or newline > LINE_PIECE_BYTES:
                if len(buffer) < LINE_PIECE_BYTES:
                    break
                out.append((stream, buffer[:LINE_PIECE_BYTES], True))
                buffer = buffer[LINE_PIECE_BYTES:]
                continue
            out.append((stream, buffer[:newline], False))
            buffer = buffer[newline + 1:]
        if buffer:
            self.pending[stream] = buffer
        return out

    def flush(self) -> list[tuple[int, bytes, bool]]:
        """Return every unfinished line as it is (at container removal or moord's exit)."""
        out = [(stream, data, True) for stream, data in sorted(self.pending.items())]
        self.pending.clear()
        return out


class Shipper:
    """Send datagrams to one address from a bounded queue on a thread of its own."""

    def __init__(self, family: int, address, label: str, queue_messages: int = QUEUE_MESSAGES):
        self.family = family
        self.address = address
        self.label = label
        self.queue: queue.Queue = queue.Queue(maxsize=queue_messages)
        self.counts_lock = threading.Lock()
        self.dropped_by_container: dict[str, int] = {}
        self.last_drop_log: dict[str, float] = {}
        self.socket: socket.socket | None = None
        self.thread = threading.Thread(target=self._run, name=f"log-{label}", daemon=True)
        self.thread.start()
        log.info("log shipper for %s started", label)

    def send(self, container_id: str, datagram: bytes) -> None:
        try:
            self.queue.put_nowait((container_id, datagram))
        except queue.Full:
            self._count_drop(container_id, "the send queue is full")

    def dropped(self, container_id: str) -> int:
        with self.counts_lock:
            return self.dropped_by_container.get(container_id, 0)

    def forget(self, container_id: str) -> None:
        with self.counts_lock:
            self.dropped_by_container.pop(container_id, None)
            self.last_drop_log.pop(container_id, None)

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread after it sent what is queued, waiting at most ``timeout`` seconds."""
        try:
            self.queue.put((None, b""), timeout=timeout)
        except queue.Full:
            log.warning("log shipper for %s still had %d messages queued at exit", self.label, self.queue.qsize())
            return
        self.thread.join(timeout)

    def _count_drop(self, container_id: str, reason: str) -> None:
        now = time.monotonic()
        with self.counts_lock:
            total = self.dropped_by_container.get(container_id, 0) + 1
            self.dropped_by_container[container_id] = total
            last = self.last_drop_log.get(container_id)
            due = last is None or now - last >= DROP_LOG_SECONDS
            if due:
                self.last_drop_log[container_id] = now
        if due:
            log.error("container %s: log driver %s dropped a message because %s (%d dropped so far)",
                      container_id, self.label, reason, total)

    def _run(self) -> None:
        while True:
            container_id, datagram = self.queue.get()
            if container_id is None:
                break
            try:
                self._socket().sendto(datagram, self.address)
            except OSError as exc:
                self._close_socket()
                self._count_drop(container_id, f"sending to {self.address} failed: {exc}")
        self._close_socket()
        log.info("log shipper for %s stopped", self.label)

    def _socket(self) -> socket.socket:
        if self.socket is None:
            self.socket = socket.socket(self.family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.socket.settimeout(SEND_TIMEOUT)
        return self.socket

    def _close_socket(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None
