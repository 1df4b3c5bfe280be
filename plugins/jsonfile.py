"""The ``json-file`` logging driver: docker's JSON lines, so tools that parse docker's logs read these.

Each line of ``<container id>-json.log`` is one object::

    {"log":"hello\\n","stream":"stdout","time":"2026-12-04T20:05:19.602779000Z"}

``log`` is the text, ending with ``\\n`` when the line ended.  A line longer
than 16 KiB, or one still unfinished when its record arrived, is written as
pieces without ``\\n`` that a reader joins.  Bytes that are not UTF-8 are
replaced by U+FFFD, as docker does.  Rotation renames the file to
``<id>-json.log.1`` up to ``.N-1`` (options ``max-size`` and ``max-file``).

The docker format has no record positions, so the driver keeps
``json.position`` next to the log: ``GENERATION SEQ INODE SIZE`` after each
record.  After a moord crash, ``position`` cuts off any line written after
the last saved position, and the shim replays from there, so the file gets
neither a gap nor a duplicate.
"""

from __future__ import annotations

import collections
import json
import logging
import os
from pathlib import Path

from plugins.filelog import format_time
from plugins.logdrivers import Driver, check_opts, parse_count, parse_size

log = logging.getLogger(__name__)

PIECE_BYTES = 16 * 1024
STREAMS = {1: "stdout", 2: "stderr"}
STREAM_NUMBERS = {"stdout": 1, "stderr": 2}
POSITION_FILE = "json.position"


def encode_record(record: dict) -> bytes:
    """Turn one output record into JSON lines."""
    stream = STREAMS.get(record["stream"], "stdout")
    stamp = format_time(record["ts"])
    data = record["data"]
    out = []
    start = 0
    while start < len(data):
        newline = data.find(b"\n", start, start + PIECE_BYTES)
        end = newline + 1 if newline >= 0 else min(len(data), start + PIECE_BYTES)
        text = data[start:end].decode("utf-8", errors="replace")
        out.append(json.dumps({"log": text, "stream": stream, "time": stamp}, ensure_ascii=False,
                              separators=(",", ":")).encode() + b"\n")
        start = end
    return b"".join(out)


def read_lines(files: list[Path], current_limit: int | None, position: tuple[int, int]):
    """Yield ``(time, stream, line, generation, seq)`` for every joined line, oldest first.

    The current (last) file is read up to ``current_limit`` bytes, the size
    saved with ``position``, so every yielded line is at or before it.
    """
    pending: dict[int, tuple[str, list[str]]] = {}
    for index, path in enumerate(files):
        limit = current_limit if index == len(files) - 1 else None
        try:
            with open(path, "rb") as handle:
                data = handle.read() if limit is None else handle.read(limit)
        except FileNotFoundError:
            continue
        for raw in data.split(b"\n")[:-1]:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            stream = STREAM_NUMBERS.get(entry.get("stream"), 1)
            stamp, pieces = pending.pop(stream, (entry.get("time", ""), []))
            pieces.append(entry.get("log", ""))
            if not pieces[-1].endswith("\n"):
                pending[stream] = (stamp, pieces)
                continue
            yield stamp, stream, "".join(pieces).encode(), position[0], position[1]
    for stream, (stamp, pieces) in pending.items():
        yield stamp, stream, "".join(pieces).encode(), position[0], position[1]


class JsonLog:
    """The current JSON log file of one container, its rotation and its saved position."""

    def __init__(self, folder: Path, container_id: str, max_size: int, max_files: int):
        self.folder = folder
        self.path = folder / f"{container_id}-json.log"
        self.max_size = max_size
        self.max_files = max_files
        folder.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self.size = os.fstat(self.fd).st_size
        self.position_fd = os.open(folder / POSITION_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write(self, generation: int, record: dict) -> None:
        data = encode_record(record)
        if self.size and self.size + len(data) > self.max_size:
            self.rotate()
        os.write(self.fd, data)
        self.size += len(data)
        inode = os.fstat(self.fd).st_ino
        os.pwrite(self.position_fd, f"{generation} {record['seq']} {inode} {self.size}\n".ljust(80).encode(), 0)

    def rotate(self) -> None:
        os.close(self.fd)
        if self.max_files <= 1:
            self.path.unlink(missing_ok=True)
        else:
            for index in range(self.max_files - 1, 0, -1):
                newer = self.path if index == 1 else self.path.with_name(f"{self.path.name}.{index - 1}")
                if newer.exists():
                    os.replace(newer, self.path.with_name(f"{self.path.name}.{index}"))
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self.size = 0

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.position_fd)


def saved_position(folder: Path) -> tuple[int, int, int, int] | None:
    try:
        fields = (folder / POSITION_FILE).read_text().split()
    except FileNotFoundError:
        return None
    if len(fields) != 4 or not all(field.isdigit() for field in fields):
        return None
    generation, seq, inode, size = (int(field) for field in fields)
    return generation, seq, inode, size


def json_files(folder: Path, container_id: str) -> list[Path]:
    """Return the files of one container's JSON log, oldest first."""
    name = f"{container_id}-json.log"
    rotated = [path for path in folder.glob(f"{name}.*") if path.suffix[1:].isdigit()]
    rotated.sort(key=lambda path: -int(path.suffix[1:]))
    current = folder / name
    return rotated + ([current] if current.exists() else [])


def cut_after_position(folder: Path, container_id: str) -> tuple[int, int] | None:
    """Truncate lines written after the saved position (a crash between the two writes); return it."""
    saved = saved_position(folder)
    if saved is None:
        return None
    generation, seq, inode, size = saved
    current = folder / f"{container_id}-json.log"
    rotated = folder / f"{container_id}-json.log.1"
    try:
        stat = current.stat()
    except FileNotFoundError:
        return generation, seq
    if stat.st_ino == inode and stat.st_size > size:
        cut_to = size
    elif stat.st_ino != inode and rotated.exists() and rotated.stat().st_ino == inode:
        cut_to = 0  # the saved record is in the rotated file; all of the current one came after it
    else:
        return generation, seq
    log.warning("container %s: cutting %d bytes written after the saved position of its json-file log",
                container_id, stat.st_size - cut_to)
    os.truncate(current, cut_to)
    return generation, seq


class JsonFileDriver(Driver):
    """Write docker's JSON lines per container under its log folder."""

    name = "json-file"
    readable = True
    OPTS = ("max-size", "max-file")

    def __init__(self, root: Path, max_size: int, max_files: int, open_limit: int = 256):
        self.root = root
        self.max_size = max_size
        self.max_files = max_files
        self.open_limit = open_limit
        self.settings: dict[str, tuple[int, int]] = {}
        self.files: collections.OrderedDict[str, JsonLog] = collections.OrderedDict()

    def folder(self, container_id: str) -> Path:
        return self.root / "containers" / container_id / "logs"

    def configure(self, container_id: str, container_name: str, opts: dict) -> None:
        check_opts(self.name, opts, self.OPTS)
        max_size = parse_size("max-size", opts["max-size"]) if "max-size" in opts else self.max_size
        max_files = parse_count("max-file", opts["max-file"]) if "max-file" in opts else self.max_files
        self.settings[container_id] = (max_size, max_files)

    def _file(self, container_id: str) -> JsonLog:
        handle = self.files.get(container_id)
        if handle is None:
            max_size, max_files = self.settings.get(container_id, (self.max_size, self.max_files))
            handle = JsonLog(self.folder(container_id), container_id, max_size, max_files)
            self.files[container_id] = handle
            if len(self.files) > self.open_limit:
                self.files.popitem(last=False)[1].close()
        self.files.move_to_end(container_id)
        return handle

    def write(self, container_id: str, generation: int, records: list[dict]) -> None:
        handle = self._file(container_id)
        for record in records:
            handle.write(generation, record)

    def position(self, container_id: str) -> tuple[int, int] | None:
        handle = self.files.pop(container_id, None)
        if handle is not None:
            handle.close()
        return cut_after_position(self.folder(container_id), container_id)

    def read(self, container_id: str):
        folder = self.folder(container_id)
        saved = saved_position(folder)
        files = json_files(folder, container_id)
        if saved is None:
            return read_lines(files, None, (0, 0))
        current = files[-1] if files else None
        same_file = current is not None and current.stat().st_ino == saved[2]
        return read_lines(files, saved[3] if same_file else None, saved[:2])

    def forget(self, container_id: str) -> None:
        handle = self.files.pop(container_id, None)
        if handle is not None:
            handle.close()
        self.settings.pop(container_id, None)

    def log_path(self, container_id: str) -> str:
        return str(self.folder(container_id) / f"{container_id}-json.log")

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()
        self.files.clear()
