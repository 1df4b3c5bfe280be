"""The ``journald`` logging driver: one journal entry per output line, over the native protocol.

The native protocol (systemd's journal-native-protocol document) is one
datagram per entry on ``/run/systemd/journal/socket``.  Each field is
``KEY=VALUE\\n``, or, for a value that contains a newline,
``KEY\\n`` + the value's length as a 64-bit little-endian integer + the value
+ ``\\n``.  Entries carry MESSAGE, PRIORITY (6 for stdout, 3 for stderr),
SYSLOG_IDENTIFIER, CONTAINER_ID (12 characters), CONTAINER_ID_FULL and
CONTAINER_NAME, so ``journalctl CONTAINER_NAME=web`` finds a container's lines.

Options: ``tag`` (SYSLOG_IDENTIFIER, default the container's name) and
``journald-socket`` (another socket path, for tests or a relay).
"""

from __future__ import annotations

import os
import socket
import struct

from plugins.logdrivers import Driver, check_opts
from plugins.shipper import LineSplitter, Shipper
from shim.protocol import FailedPrecondition

JOURNAL_SOCKET = "/run/systemd/journal/socket"
PRIORITY = {1: b"6", 2: b"3"}


def encode_field(key: str, value: bytes) -> bytes:
    if b"\n" in value:
        return key.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
    return key.encode() + b"=" + value + b"\n"


def encode_entry(fields: list[tuple[str, bytes]]) -> bytes:
    return b"".join(encode_field(key, value) for key, value in fields)


class JournaldDriver(Driver):
    """Send each container's lines to the journal from a shipper thread per socket path."""

    name = "journald"
    OPTS = ("tag", "journald-socket")

    def __init__(self):
        self.settings: dict[str, tuple[str, list[tuple[str, bytes]]]] = {}
        self.splitters: dict[str, LineSplitter] = {}
        self.shippers: dict[str, Shipper] = {}

    def configure(self, container_id: str, container_name: str, opts: dict) -> None:
        check_opts(self.name, opts, self.OPTS)
        path = opts.get("journald-socket", JOURNAL_SOCKET)
        if not os.path.exists(path):
            raise FailedPrecondition(f"log driver journald needs the journal socket {path}, which does not exist: "
                                     "run systemd-journald or choose another --log-driver")
        fields = [("CONTAINER_ID", container_id[:12].encode()), ("CONTAINER_ID_FULL", container_id.encode()),
                  ("CONTAINER_NAME", container_name.encode()),
                  ("SYSLOG_IDENTIFIER", opts.get("tag", container_name).encode())]
        self.settings[container_id] = (path, fields)

    def _shipper(self, path: str) -> Shipper:
        shipper = self.shippers.get(path)
        if shipper is None:
            shipper = Shipper(socket.AF_UNIX, path, f"journald:{path}")
            self.shippers[path] = shipper
        return shipper

    def write(self, container_id: str, generation: int, records: list[dict]) -> None:
        splitter = self.splitters.setdefault(container_id, LineSplitter())
        for record in records:
            self._send(container_id, splitter.feed(record["stream"], record["data"]))

    def _send(self, container_id: str, lines: list[tuple[int, bytes, bool]]) -> None:
        path, fields = self.settings[container_id]
        shipper = self._shipper(path)
        for stream, text, partial in lines:
            entry = [("MESSAGE", text), ("PRIORITY", PRIORITY.get(stream, b"6")), *fields]
            if partial:
                entry.append(("CONTAINER_PARTIAL_MESSAGE", b"true"))
            shipper.send(container_id, encode_entry(entry))

    def read(self, container_id: str):
        raise FailedPrecondition(f"this container logs to the journal; read it with "
                                 f"`journalctl CONTAINER_ID_FULL={container_id}`")

    def dropped(self, container_id: str) -> int:
        setting = self.settings.get(container_id)
        shipper = self.shippers.get(setting[0]) if setting else None
        return shipper.dropped(container_id) if shipper else 0

    def forget(self, container_id: str) -> None:
        splitter = self.splitters.pop(container_id, None)
        if splitter is not None and container_id in self.settings:
            self._send(container_id, splitter.flush())
        setting = self.settings.pop(container_id, None)
        if setting and setting[0] in self.shippers:
            self.shippers[setting[0]].forget(container_id)

    def close(self) -> None:
        for container_id, splitter in self.splitters.items():
            if container_id in self.settings:
                self._send(container_id, splitter.flush())
        self.splitters.clear()
        for shipper in self.shippers.values():
            shipper.close()
        self.shippers.clear()
