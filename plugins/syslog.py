"""The ``syslog`` logging driver: one RFC 5424 message per output line, on a datagram socket.

A message is ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG`` with
PRI = facility * 8 + severity (6 informational for stdout, 3 error for
stderr), the read time in RFC 3339 with microseconds, APP-NAME from the
``tag`` option (default the container's name), PROCID and MSGID as ``-``,
no structured data, and the line's bytes as MSG.

Options: ``syslog-address`` (``unix:///dev/log``, the default;
``unixgram:///path``; or ``udp://HOST:PORT``), ``syslog-facility`` (a name
such as ``daemon`` or ``local0``, default ``daemon``) and ``tag``.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

from plugins.logdrivers import Driver, check_opts
from plugins.shipper import LineSplitter, Shipper
from shim.protocol import InvalidArgument

DEFAULT_ADDRESS = "unix:///dev/log"
FACILITIES = {name: number for number, name in enumerate(
    ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp"))}
FACILITIES.update({f"local{index}": 16 + index for index in range(8)})
SEVERITY = {1: 6, 2: 3}
# RFC 5424 limits APP-NAME to 48 printable US-ASCII characters.
APP_NAME_CHARS = 48


def parse_address(value: str) -> tuple[int, object]:
    """Return the socket family and address of a ``syslog-address`` option."""
    parts = urlsplit(value)
    if parts.scheme in ("unix", "unixgram") and parts.path:
        return socket.AF_UNIX, parts.path
    if parts.scheme == "udp" and parts.hostname:
        try:
            port = parts.port or 514
        except ValueError:
            port = None
        if port is None:
            raise InvalidArgument(f"invalid syslog-address {value!r}: the port must be a number from 1 to 65535")
        family = socket.AF_INET6 if ":" in parts.hostname else socket.AF_INET
        return family, (parts.hostname, port)
    raise InvalidArgument(f"invalid syslog-address {value!r}: use unix:///dev/log, unixgram:///PATH "
                          "or udp://HOST:PORT (tcp is not supported)")


def format_timestamp(ts: float) -> str:
    micros = int((ts - int(ts)) * 1e6)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(ts))) + f".{micros:06d}Z"


def app_name(tag: str) -> str:
    printable = "".join(char for char in tag if 33 <= ord(char) <= 126)
    return printable[:APP_NAME_CHARS] or "-"


def encode_message(facility: int, stream: int, ts: float, hostname: str, tag: str, text: bytes) -> bytes:
    priority = facility * 8 + SEVERITY.get(stream, 6)
    head = f"<{priority}>1 {format_timestamp(ts)} {hostname} {app_name(tag)} - - - "
    return head.encode() + text


class SyslogDriver(Driver):
    """Send each container's lines to a syslog socket from a shipper thread per address."""

    name = "syslog"
    OPTS = ("syslog-address", "syslog-facility", "tag")

    def __init__(self):
        self.hostname = socket.gethostname() or "-"
        self.settings: dict[str, tuple[str, int, str]] = {}
        self.splitters: dict[str, LineSplitter] = {}
        self.shippers: dict[str, Shipper] = {}

    def configure(self, container_id: str, container_name: str, opts: dict) -> None:
        check_opts(self.name, opts, self.OPTS)
        address = opts.get("syslog-address", DEFAULT_ADDRESS)
        parse_address(address)
        facility_name = opts.get("syslog-facility", "daemon")
        if facility_name not in FACILITIES:
            raise InvalidArgument(f"invalid syslog-facility {facility_name!r}: use one of {', '.join(FACILITIES)}")
        self.settings[container_id] = (address, FACILITIES[facility_name], opts.get("tag", container_name))

    def _shipper(self, address: str) -> Shipper:
        shipper = self.shippers.get(address)
        if shipper is None:
            family, target = parse_address(address)
            shipper = Shipper(family, target, f"syslog:{address}")
            self.shippers[address] = shipper
        return shipper

    def write(self, container_id: str, generation: int, records: list[dict]) -> None:
        splitter = self.splitters.setdefault(container_id, LineSplitter())
        for record in records:
            self._send(container_id, record["ts"], splitter.feed(record["stream"], record["data"]))

    def _send(self, container_id: str, ts: float, lines: list[tuple[int, bytes, bool]]) -> None:
        address, facility, tag = self.settings[container_id]
        shipper = self._shipper(address)
        for stream, text, _partial in lines:
            shipper.send(container_id, encode_message(facility, stream, ts, self.hostname, tag, text))

    def dropped(self, container_id: str) -> int:
        setting = self.settings.get(container_id)
        shipper = self.shippers.get(setting[0]) if setting else None
        return shipper.dropped(container_id) if shipper else 0

    def forget(self, container_id: str) -> None:
        splitter = self.splitters.pop(container_id, None)
        if splitter is not None and container_id in self.settings:
            self._send(container_id, time.time(), splitter.flush())
        setting = self.settings.pop(container_id, None)
        if setting and setting[0] in self.shippers:
            self.shippers[setting[0]].forget(container_id)

    def close(self) -> None:
        for container_id, splitter in self.splitters.items():
            if container_id in self.settings:
                self._send(container_id, time.time(), splitter.flush())
        self.splitters.clear()
        for shipper in self.shippers.values():
            shipper.close()
        self.shippers.clear()
