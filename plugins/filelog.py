"""Built-in file logging: each container's output in rotated files under ``--root``.

File format, one record per line::

    2026-12-04T20:05:19.602779000Z stdout F 3:17 hello

The fields are the time the shim read the data (UTC, nanoseconds), the
stream, ``F`` for a full line or ``P`` for a partial one, ``GENERATION:SEQ``
of the shim record the line came from, then the bytes of the line without
its newline.  A line longer than ``PIECE_BYTES`` or one that has not ended yet
is stored as ``P`` pieces that a reader joins with the next piece of the same
stream.  The time, stream and tag match the Kubernetes CRI log format.

Files are ``container.log`` and, after rotation, ``container.log.1`` to
``container.log.N``; a rotation happens before a write would make the
current file exceed ``max_size`` bytes.  With compression on, a worker thread
gzips each rotated file into ``container.log.K.gz`` after the rotation, so
the event loop does not wait for the compression (only for the renames).
"""

from __future__ import annotations

import collections
import gzip
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from supervisor.hookspecs import hookimpl

log = logging.getLogger(__name__)

PIECE_BYTES = 16 * 1024
STREAM_NAMES = {1: b"stdout", 2: b"stderr"}
STREAM_NUMBERS = {b"stdout": 1, b"stderr": 2}


def format_time(ts: float) -> str:
    seconds = int(ts)
    nanos = int((ts - seconds) * 1e9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def encode_record(generation: int, record: dict) -> bytes:
    """Turn one output record into log lines."""
    head = b" ".join((format_time(record["ts"]).encode(), STREAM_NAMES.get(record["stream"], b"stdout")))
    position = f"{generation}:{record['seq']}".encode()
    out = []
    data = record["data"]
    start = 0
    while start < len(data):
        newline = data.find(b"\n", start, start + PIECE_BYTES)
        if newline >= 0:
            out.append(b"%s F %s %s\n" % (head, position, data[start:newline]))
            start = newline + 1
        else:
            end = min(len(data), start + PIECE_BYTES)
            out.append(b"%s P %s %s\n" % (head, position, data[start:end]))
            start = end
    return b"".join(out)


class LogFile:
    """The current log file of one container, with size-based rotation.

    ``lock`` guards the names of the rotated files: the rotation renames them
    and the compression worker replaces a plain file by its ``.gz`` form.
    """

    def __init__(self, folder: Path, max_size: int, max_files: int, compress: bool = False):
        self.folder = folder
        self.path = folder / "container.log"
        self.max_size = max_size
        self.max_files = max_files
        self.compress = compress
        self.lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self.size = os.fstat(self.fd).st_size

    def write(self, data: bytes) -> None:
        if self.size and self.size + len(data) > self.max_size:
            self.rotate()
        os.write(self.fd, data)
        self.size += len(data)

    def rotate(self) -> None:
        os.close(self.fd)
        with self.lock:
            self._shift_rotated()
            # Taken under the lock: a compression job whose inode number was reused may gzip .1 right after.
            rotated = self.max_files > 1 and os.stat(self.folder / "container.log.1").st_ino
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self.size = 0
        if self.compress and rotated:
            COMPRESSOR.submit(self, rotated)

    def _shift_rotated(self) -> None:
        """Rename container.log.K to .K+1 (plain or gzipped) and the current file to .1."""
        for path in self.folder.glob("container.log.*"):
            index = _rotated_index(path)
            if index is not None and index >= self.max_files - 1:
                path.unlink(missing_ok=True)
        if self.max_files <= 1:
            self.path.unlink(missing_ok=True)
            return
        for index in range(self.max_files - 2, 0, -1):
            for suffix in ("", ".gz"):
                newer = self.folder / f"container.log.{index}{suffix}"
                if newer.exists():
                    os.replace(newer, self.folder / f"container.log.{index + 1}{suffix}")
        os.replace(self.path, self.folder / "container.log.1")

    def rotated_plain_file(self, inode: int) -> Path | None:
        for path in self.folder.glob("container.log.*"):
            if _rotated_index(path) is not None and not path.name.endswith(".gz"):
                try:
                    if path.stat().st_ino == inode:
                        return path
                except FileNotFoundError:
                    continue
        return None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Compressor:
    """One worker thread that gzips rotated log files, oldest request first.

    A rotation may rename the file while the worker compresses it, so the
    worker finds it again by inode under the log's lock before it swaps the
    plain file for the ``.gz`` one.
    """

    def __init__(self):
        self.jobs: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None
        self.start_lock = threading.Lock()

    def submit(self, log_file: LogFile, inode: int) -> None:
        with self.start_lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="log-compressor", daemon=True)
                self.thread.start()
        self.jobs.put((log_file, inode))

    def wait_idle(self) -> None:
        """Block until every submitted file is compressed (for tests and shutdown)."""
        self.jobs.join()

    def _run(self) -> None:
        while True:
            log_file, inode = self.jobs.get()
            try:
                self._compress(log_file, inode)
            except OSError as exc:
                log.error("compressing a rotated log in %s failed: %s", log_file.folder, exc)
            finally:
                self.jobs.task_done()

    @staticmethod
    def _compress(log_file: LogFile, inode: int) -> None:
        source = log_file.rotated_plain_file(inode)
        if source is None:
            return
        temporary = log_file.folder / f".compress-{inode}.tmp"
        try:
            with open(source, "rb") as plain, gzip.open(temporary, "wb", compresslevel=6) as packed:
                copied = os.fstat(plain.fileno())
                shutil.copyfileobj(plain, packed, 256 * 1024)
        except FileNotFoundError:
            temporary.unlink(missing_ok=True)
            return
        with log_file.lock:
            source = log_file.rotated_plain_file(inode)
            # A file deleted during the copy can hand its inode number to a newer log file,
            # so the size and modification time must match the copied file too.
            current = source.stat() if source is not None else None
            if current is None or (current.st_size, current.st_mtime_ns) != (copied.st_size, copied.st_mtime_ns):
                temporary.unlink(missing_ok=True)
                return
            # Readers prefer the plain file while both exist, then fall back to the .gz one.
            os.replace(temporary, source.with_name(source.name + ".gz"))
            source.unlink()


COMPRESSOR = Compressor()


def _rotated_index(path: Path) -> int | None:
    """Return K of ``container.log.K`` or ``container.log.K.gz``, or None for other names."""
    number, _, rest = path.name.removeprefix("container.log.").partition(".")
    if not path.name.startswith("container.log.") or not number.isdigit() or rest not in ("", "gz"):
        return None
    return int(number)


def open_log(path: Path):
    """Open a log file for reading, or its ``.gz`` form if the worker has just compressed it."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    try:
        return open(path, "rb")
    except FileNotFoundError:
        if _rotated_index(path) is None:
            raise
        return gzip.open(path.with_name(path.name + ".gz"), "rb")


def log_files(folder: Path) -> list[Path]:
    """Return the files of one container's log, oldest first, one per index (plain before gzipped)."""
    by_index: dict[int, Path] = {}
    for path in folder.glob("container.log.*"):
        index = _rotated_index(path)
        if index is not None and (index not in by_index or not path.name.endswith(".gz")):
            by_index[index] = path
    current = folder / "container.log"
    return [by_index[index] for index in sorted(by_index, reverse=True)] + ([current] if current.exists() else [])


def parse_line(raw: bytes) -> tuple[bytes, int, bool, int, int, bytes] | None:
    parts = raw.rstrip(b"\n").split(b" ", 4)
    if len(parts) < 4:
        return None
    ts, stream, tag, position = parts[:4]
    generation, _, seq = position.partition(b":")
    data = parts[4] if len(parts) == 5 else b""
    return ts, STREAM_NUMBERS.get(stream, 1), tag == b"P", int(generation), int(seq), data


def read_lines(files: list[Path]) -> Iterator[tuple[str, int, bytes, int, int]]:
    """Join partial pieces back into lines, per stream, across every file."""
    pending: dict[int, tuple[bytes, list[bytes]]] = {}
    last = (0, 0)
    for path in files:
        try:
            handle = open_log(path)
        except FileNotFoundError:
            continue
        with handle:
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break  # a record still being written
                parsed = parse_line(raw)
                if parsed is None:
                    continue
                ts, stream, partial, generation, seq, data = parsed
                last = (generation, seq)
                first_ts, pieces = pending.pop(stream, (ts, []))
                pieces.append(data)
                if partial:
                    pending[stream] = (first_ts, pieces)
                    continue
                yield first_ts.decode(), stream, b"".join(pieces) + b"\n", generation, seq
    for stream, (ts, pieces) in pending.items():
        yield ts.decode(), stream, b"".join(pieces), last[0], last[1]


def last_position(files: list[Path]) -> tuple[int, int] | None:
    for path in reversed(files):
        try:
            lines = _tail_lines(path)
        except FileNotFoundError:
            continue
        for raw in reversed(lines[1:-1] if len(lines) > 2 else lines[:-1]):
            parsed = parse_line(raw)
            if parsed is not None:
                return parsed[3], parsed[4]
    return None


def _tail_lines(path: Path) -> list[bytes]:
    """Return the last bytes of a log file split at newlines; a gzipped file is read whole."""
    with open_log(path) as handle:
        if isinstance(handle, gzip.GzipFile):
            return handle.read().split(b"\n")
        handle.seek(max(0, os.fstat(handle.fileno()).st_size - 2 * PIECE_BYTES - 256))
        return handle.read().split(b"\n")


class FileLogger:
    """Plugin object that writes and reads container logs as files."""

    name = "filelog"

    def __init__(self, root: Path, max_size: int = 20 * 1024 * 1024, max_files: int = 5):
        self.root = root
        self.max_size = max_size
        self.max_files = max_files
        self.files: collections.OrderedDict[str, LogFile] = collections.OrderedDict()

    def folder(self, container_id: str) -> Path:
        return self.root / "containers" / container_id / "logs"

    def _file(self, container_id: str) -> LogFile:
        handle = self.files.get(container_id)
        if handle is None:
            handle = LogFile(self.folder(container_id), self.max_size, self.max_files)
            self.files[container_id] = handle
            if len(self.files) > 256:
                self.files.popitem(last=False)[1].close()
        return handle

    @hookimpl
    def moorage_container_output(self, container_id: str, generation: int, records: list[dict]) -> None:
        handle = self._file(container_id)
        for record in records:
            handle.write(encode_record(generation, record))

    @hookimpl
    def moorage_output_position(self, container_id: str):
        return last_position(log_files(self.folder(container_id)))

    @hookimpl
    def moorage_read_logs(self, container_id: str):
        return read_lines(log_files(self.folder(container_id)))

    @hookimpl
    def moorage_container_removed(self, container_id: str) -> None:
        handle = self.files.pop(container_id, None)
        if handle is not None:
            handle.close()
        shutil.rmtree(self.folder(container_id), ignore_errors=True)

    @hookimpl
    def moorage_shutdown(self) -> None:
        for handle in self.files.values():
            handle.close()
        self.files.clear()
