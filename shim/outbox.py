"""Durable, sequenced outbox of a shim: output chunks and events for moord.

Every record is appended to a segment file in the spool folder before it is
sent, and stays there until moord acknowledges its sequence number.  The
spool is bounded: output beyond the bound is dropped and counted, and the
count is reported by a ``loss`` record as soon as there is room again.  Exit
records are never dropped and are fsync'ed before they are sent.

The outbox keeps no per-record index in memory, so millions of small records
cost only disk space.  Replay after a reconnect scans the segment that contains
the first requested sequence number.
"""

from __future__ import annotations

import collections
import logging
import os
import struct

import msgpack

from shim.protocol import RECORD_LOSS, RECORD_OUTPUT

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<I")
SEGMENT_BYTES = 8 * 1024 * 1024
WINDOW_RECORDS = 1024
WINDOW_BYTES = 4 * 1024 * 1024


class _Segment:
    """One spool file holding the records ``first_seq`` to ``last_seq``."""

    def __init__(self, path: str, first_seq: int):
        self.path = path
        self.first_seq = first_seq
        self.last_seq = first_seq - 1
        self.size = 0
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class Outbox:
    """Append-only journal with acknowledgement, replay and a size bound."""

    def __init__(self, folder: str | os.PathLike, limit: int, segment_bytes: int = SEGMENT_BYTES):
        self.folder = folder
        self.limit = limit
        # The newest segment stays on disk until the next one starts, even when it is fully
        # acknowledged, so segments are kept well under the bound to leave room for new output.
        self.segment_bytes = min(segment_bytes, max(1, limit // 4))
        # os.path and not pathlib: pathlib would run much more Python code in every shim.
        os.makedirs(folder, exist_ok=True)
        self.segments: list[_Segment] = []
        self.next_seq = 1
        self.acked_seq = 0
        self.spooled = 0
        self.lost_pending: dict[int, int] = {}
        self.lost_total = 0
        # Send cursor: next sequence to send and where its frame starts.
        self.send_seq = 1
        self._send_segment = 0
        self._send_offset = 0
        self._inflight: collections.deque[tuple[int, int]] = collections.deque()
        self._inflight_bytes = 0

    def append(self, record: dict, durable: bool = False) -> int | None:
        """Journal one record and return its sequence number.

        Output that does not fit within the bound is dropped, counted and
        ``None`` is returned.  Any other record is always written.
        """
        is_output = record.get("kind") == RECORD_OUTPUT
        if is_output and self.spooled + len(record.get("data", b"")) > self.limit:
            stream = record.get("stream", 0)
            self.lost_pending[stream] = self.lost_pending.get(stream, 0) + len(record["data"])
            self.lost_total += len(record["data"])
            return None

        if self.lost_pending:
            self._flush_loss()
        return self._write(record, durable)

    def _flush_loss(self) -> None:
        for stream, size in sorted(self.lost_pending.items()):
            log.error("dropped %d bytes of stream %d: the spool reached its bound of %d bytes",
                      size, stream, self.limit)
            self._write({"kind": RECORD_LOSS, "stream": stream, "bytes": size, "total": self.lost_total}, True)
        self.lost_pending.clear()

    def _write(self, record: dict, durable: bool) -> int:
        seq = self.next_seq
        record["seq"] = seq
        body = msgpack.packb(record, use_bin_type=True)
        frame = _HEADER.pack(len(body)) + body

        segment = self._writable_segment(len(frame))
        os.write(segment.fd, frame)
        if durable:
            os.fsync(segment.fd)
        segment.size += len(frame)
        segment.last_seq = seq
        self.spooled += len(frame)
        self.next_seq += 1
        return seq

    def _writable_segment(self, frame_size: int) -> _Segment:
        if not self.segments or self.segments[-1].size + frame_size > self.segment_bytes:
            path = os.path.join(self.folder, f"{self.next_seq:016d}.seg")
            self.segments.append(_Segment(path, self.next_seq))
        return self.segments[-1]

    def ack(self, seq: int) -> None:
        """Forget every record up to ``seq``, which moord has stored."""
        if seq <= self.acked_seq:
            return
        self.acked_seq = min(seq, self.next_seq - 1)
        while self._inflight and self._inflight[0][0] <= self.acked_seq:
            self._inflight_bytes -= self._inflight.popleft()[1]

        while self.segments and self.segments[0].last_seq <= self.acked_seq and self.segments[0].last_seq < self.next_seq - 1:
            self._drop_first_segment()
        if self.lost_pending and self.spooled < self.limit:
            self._flush_loss()

    def _drop_first_segment(self) -> None:
        segment = self.segments.pop(0)
        self.spooled -= segment.size
        segment.close()
        if self._send_segment == 0:
            # The cursor sat at the end of the dropped segment, which was fully sent, so it moves
            # to the start of the next one.
            self._send_offset = 0
        else:
            self._send_segment -= 1

    def rewind(self, from_seq: int) -> None:
        """Restart sending at ``from_seq``; moord has everything before it."""
        self.ack(from_seq - 1)
        self._inflight.clear()
        self._inflight_bytes = 0
        first = self.segments[0].first_seq if self.segments else self.next_seq
        self.send_seq = max(from_seq, first)
        self._locate(self.send_seq)

    def _locate(self, seq: int) -> None:
        self._send_segment, self._send_offset = len(self.segments), 0
        for index, segment in enumerate(self.segments):
            if segment.first_seq <= seq <= segment.last_seq:
                self._send_segment = index
                self._send_offset = self._offset_of(segment, seq)
                return
        if self.segments:
            # Nothing is left to resend, so sending goes on at the end of the last segment,
            # where the next record is appended.
            self._send_segment, self._send_offset = len(self.segments) - 1, self.segments[-1].size

    def _offset_of(self, segment: _Segment, seq: int) -> int:
        """Find where record ``seq`` starts, reading the segment in 1 MiB blocks."""
        offset, current = 0, segment.first_seq
        block, block_start = b"", 0
        while current < seq:
            position = offset - block_start
            if position + _HEADER.size > len(block):
                block, block_start = os.pread(segment.fd, 1024 * 1024, offset), offset
                position = 0
            (length,) = _HEADER.unpack_from(block, position)
            offset += _HEADER.size + length
            current += 1
        return offset

    def sendable(self):
        """Yield ``(seq, body)`` for records that fit in the send window."""
        while self.send_seq < self.next_seq and self._window_open():
            body = self._read_next()
            if body is None:
                return
            self._inflight.append((self.send_seq, len(body)))
            self._inflight_bytes += len(body)
            self.send_seq += 1
            yield self.send_seq - 1, body

    def _window_open(self) -> bool:
        return len(self._inflight) < WINDOW_RECORDS and self._inflight_bytes < WINDOW_BYTES

    def _read_next(self) -> bytes | None:
        while self._send_segment < len(self.segments):
            segment = self.segments[self._send_segment]
            if self._send_offset < segment.size:
                header = os.pread(segment.fd, _HEADER.size, self._send_offset)
                (length,) = _HEADER.unpack(header)
                body = os.pread(segment.fd, length, self._send_offset + _HEADER.size)
                self._send_offset += _HEADER.size + length
                return body
            if self._send_segment == len(self.segments) - 1:
                return None
            self._send_segment += 1
            self._send_offset = 0
        return None

    def unsend(self, seq: int) -> None:
        """Make ``seq`` the next record to send again, after a failed send."""
        while self._inflight and self._inflight[-1][0] >= seq:
            self._inflight_bytes -= self._inflight.pop()[1]
        self.send_seq = seq
        self._locate(seq)

    def close(self) -> None:
        for segment in self.segments:
            segment.close()
        self.segments.clear()
