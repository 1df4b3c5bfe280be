"""Tests of the logging drivers' formats and sinks without moord: files, datagrams and the drop count."""

from __future__ import annotations

import json
import socket
import struct
import tempfile
from pathlib import Path

import pytest

from conftest import wait_until
from plugins import filelog, jsonfile
from plugins.journald import encode_entry, encode_field
from plugins.logdrivers import LogRouter, parse_size
from plugins.shipper import LINE_PIECE_BYTES, LineSplitter, Shipper
from plugins.syslog import encode_message, parse_address
from shim.protocol import STDERR, STDOUT, FailedPrecondition, InvalidArgument


def record(seq: int, data: bytes, stream: int = STDOUT, ts: float = 1_700_000_000.25) -> dict:
    return {"seq": seq, "stream": stream, "data": data, "ts": ts}


@pytest.fixture
def socket_folder():
    """A short folder for unix sockets (their paths are limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="mld-", dir="/tmp") as folder:
        yield Path(folder)


def datagram_listener(path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(10)
    return listener


# -- local: gzip compression of rotated files ---------------------------------------

def write_local(folder: Path, count: int, max_files: int = 3) -> None:
    handle = filelog.LogFile(folder, 1024, max_files, compress=True)
    try:
        for seq in range(1, count + 1):
            handle.write(filelog.encode_record(1, record(seq, b"n=%05d\n" % seq)))
    finally:
        handle.close()
    filelog.COMPRESSOR.wait_idle()


def test_local_rotated_files_gzipped(tmp_path):
    write_local(tmp_path, 500)

    names = sorted(path.name for path in tmp_path.iterdir())

    assert names == ["container.log", "container.log.1.gz", "container.log.2.gz"]


def test_local_reads_across_gzipped_files(tmp_path):
    write_local(tmp_path, 500)

    numbers = [int(line[2:]) for _, _, line, _, _ in filelog.read_lines(filelog.log_files(tmp_path))]

    assert numbers[-1] == 500
    assert numbers == list(range(numbers[0], 501))


def test_local_position_from_gzipped_file(tmp_path):
    write_local(tmp_path, 300)
    handle = filelog.LogFile(tmp_path, 1024, 3, compress=True)
    handle.rotate()
    handle.close()
    filelog.COMPRESSOR.wait_idle()

    assert filelog.last_position(filelog.log_files(tmp_path)) == (1, 300)


def test_local_log_files_prefers_plain_over_gzipped(tmp_path):
    (tmp_path / "container.log.1").write_bytes(b"")
    (tmp_path / "container.log.1.gz").write_bytes(b"")
    (tmp_path / "container.log.2.gz").write_bytes(b"")

    assert [path.name for path in filelog.log_files(tmp_path)] == ["container.log.2.gz", "container.log.1"]


# -- json-file ------------------------------------------------------------------------

def test_json_line_is_docker_format():
    line = jsonfile.encode_record(record(1, b"hello\n", ts=1.5))

    assert line == b'{"log":"hello\\n","stream":"stdout","time":"1970-01-01T00:00:01.500000000Z"}\n'


def test_json_unfinished_line_has_no_newline():
    entry = json.loads(jsonfile.encode_record(record(1, b"no end", stream=STDERR)))

    assert entry == {"log": "no end", "stream": "stderr", "time": entry["time"]}


def test_json_long_line_in_pieces():
    lines = jsonfile.encode_record(record(1, b"x" * (2 * jsonfile.PIECE_BYTES + 5) + b"\n")).splitlines()

    assert [len(json.loads(line)["log"]) for line in lines] == [jsonfile.PIECE_BYTES, jsonfile.PIECE_BYTES, 6]


def test_json_invalid_utf8_replaced():
    entry = json.loads(jsonfile.encode_record(record(1, b"a\xffb\n")))

    assert entry["log"] == "a\ufffdb\n"


def json_driver(tmp_path: Path, **opts) -> jsonfile.JsonFileDriver:
    driver = jsonfile.JsonFileDriver(tmp_path, 1 << 20, 3)
    driver.configure("c1", "web", opts)
    return driver


def test_json_driver_reads_joined_lines(tmp_path):
    driver = json_driver(tmp_path)
    driver.write("c1", 1, [record(1, b"one "), record(2, b"two\n"), record(3, b"oops\n", stream=STDERR)])

    lines = [(item[1], item[2]) for item in driver.read("c1")]

    assert lines == [(STDOUT, b"one two\n"), (STDERR, b"oops\n")]


def test_json_driver_rotates_by_max_size(tmp_path):
    driver = json_driver(tmp_path, **{"max-size": "1k", "max-file": "2"})
    driver.write("c1", 1, [record(seq, b"n=%05d\n" % seq) for seq in range(1, 200)])

    names = sorted(path.name for path in driver.folder("c1").glob("c1-json.log*"))

    assert names == ["c1-json.log", "c1-json.log.1"]


def test_json_driver_position_is_last_record(tmp_path):
    driver = json_driver(tmp_path)
    driver.write("c1", 4, [record(1, b"a\n"), record(2, b"b\n")])

    assert driver.position("c1") == (4, 2)


def test_json_driver_cuts_line_written_after_position(tmp_path):
    driver = json_driver(tmp_path)
    driver.write("c1", 1, [record(1, b"kept\n")])
    log_path = Path(driver.log_path("c1"))
    with open(log_path, "ab") as handle:  # as if moord died between the line and its position
        handle.write(jsonfile.encode_record(record(2, b"replayed later\n")))

    driver.position("c1")

    assert [item[2] for item in driver.read("c1")] == [b"kept\n"]


def test_json_driver_read_carries_position(tmp_path):
    driver = json_driver(tmp_path)
    driver.write("c1", 2, [record(7, b"a\n")])

    assert [(item[3], item[4]) for item in driver.read("c1")] == [(2, 7)]


# -- option checks --------------------------------------------------------------------

@pytest.mark.parametrize("driver, opts", [
    ("local", {"max-size": "ten"}),
    ("local", {"max-file": "0"}),
    ("local", {"colour": "blue"}),
    ("json-file", {"compress": "true"}),
    ("syslog", {"syslog-address": "tcp://127.0.0.1:514"}),
    ("syslog", {"syslog-facility": "kitchen"}),
    ("none", {"max-size": "1k"}),
], ids=["bad-size", "zero-files", "unknown-local", "unknown-json", "tcp-syslog", "bad-facility", "none-opt"])
def test_router_rejects_bad_option(tmp_path, driver, opts):
    router = LogRouter(tmp_path)

    with pytest.raises(InvalidArgument):
        router.moorage_log_config(container_id="c1", container_name="web", driver=driver, opts=opts)


def test_router_rejects_unknown_driver(tmp_path):
    router = LogRouter(tmp_path)

    with pytest.raises(InvalidArgument, match="unknown log driver 'gelf'"):
        router.moorage_log_config(container_id="c1", container_name="web", driver="gelf", opts={})


def test_router_rejects_journald_without_socket(tmp_path):
    router = LogRouter(tmp_path)
    missing = tmp_path / "no-journal.sock"

    with pytest.raises(FailedPrecondition, match="does not exist"):
        router.moorage_log_config(container_id="c1", container_name="web", driver="journald",
                                  opts={"journald-socket": str(missing)})


@pytest.mark.parametrize("text, size", [("4096", 4096), ("1k", 1024), ("10m", 10 << 20), ("1g", 1 << 30),
                                        ("2KB", 2048)], ids=["bytes", "k", "m", "g", "kb"])
def test_parse_size_units(text, size):
    assert parse_size("max-size", text) == size


# -- line splitting for the socket drivers ------------------------------------------

def test_splitter_keeps_unfinished_line():
    splitter = LineSplitter()

    first = splitter.feed(STDOUT, b"a\nhal")
    second = splitter.feed(STDOUT, b"f\n")

    assert first == [(STDOUT, b"a", False)]
    assert second == [(STDOUT, b"half", False)]


def test_splitter_cuts_long_line_into_pieces():
    splitter = LineSplitter()

    pieces = splitter.feed(STDOUT, b"z" * (LINE_PIECE_BYTES + 3) + b"\n")

    assert [(len(text), partial) for _, text, partial in pieces] == [(LINE_PIECE_BYTES, True), (3, False)]


def test_splitter_flush_returns_pending():
    splitter = LineSplitter()
    splitter.feed(STDERR, b"tail")

    assert splitter.flush() == [(STDERR, b"tail", True)]


# -- journald --------------------------------------------------------------------------

def test_journal_field_plain():
    assert encode_field("MESSAGE", b"hello") == b"MESSAGE=hello\n"


def test_journal_field_with_newline_binary_safe():
    assert encode_field("MESSAGE", b"a\nb") == b"MESSAGE\n" + struct.pack("<Q", 3) + b"a\nb\n"


def test_journal_entry_joins_fields():
    assert encode_entry([("A", b"1"), ("B", b"2")]) == b"A=1\nB=2\n"


def parse_journal_entry(data: bytes) -> dict[str, bytes]:
    """Decode one native-protocol datagram, both field forms."""
    fields = {}
    while data:
        line_end = data.index(b"\n")
        line = data[:line_end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            data = data[line_end + 1:]
        else:
            size = struct.unpack("<Q", data[line_end + 1:line_end + 9])[0]
            key, value = line, data[line_end + 9:line_end + 9 + size]
            data = data[line_end + 10 + size:]
        fields[key.decode()] = value
    return fields


def test_journald_driver_sends_container_fields(tmp_path, socket_folder):
    listener = datagram_listener(socket_folder / "journal.sock")
    router = LogRouter(tmp_path)
    router.moorage_log_config(container_id="f" * 64, container_name="web", driver="journald",
                              opts={"journald-socket": str(socket_folder / "journal.sock")})

    router.moorage_container_output(container_id="f" * 64, generation=1, records=[record(1, b"oops\n", STDERR)])
    fields = parse_journal_entry(listener.recv(65536))
    router.moorage_shutdown()

    assert fields["MESSAGE"] == b"oops"
    assert fields["PRIORITY"] == b"3"
    assert fields["CONTAINER_ID"] == b"f" * 12
    assert fields["CONTAINER_ID_FULL"] == b"f" * 64
    assert fields["CONTAINER_NAME"] == b"web"
    assert fields["SYSLOG_IDENTIFIER"] == b"web"


# -- syslog ----------------------------------------------------------------------------

def test_syslog_message_is_rfc5424():
    message = encode_message(3, STDOUT, 1.5, "host1", "web", b"hello")

    assert message == b"<30>1 1970-01-01T00:00:01.500000Z host1 web - - - hello"


def test_syslog_stderr_has_error_severity():
    message = encode_message(16, STDERR, 1.5, "host1", "web", b"oops")

    assert message.startswith(b"<131>1 ")


@pytest.mark.parametrize("address, expected", [
    ("unix:///dev/log", (socket.AF_UNIX, "/dev/log")),
    ("unixgram:///run/x.sock", (socket.AF_UNIX, "/run/x.sock")),
    ("udp://127.0.0.1:5514", (socket.AF_INET, ("127.0.0.1", 5514))),
    ("udp://[::1]:5514", (socket.AF_INET6, ("::1", 5514))),
], ids=["unix", "unixgram", "udp4", "udp6"])
def test_syslog_address_parsed(address, expected):
    assert parse_address(address) == expected


def test_syslog_driver_sends_to_udp_loopback(tmp_path):
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    router = LogRouter(tmp_path)
    router.moorage_log_config(container_id="c1", container_name="web", driver="syslog",
                              opts={"syslog-address": f"udp://127.0.0.1:{port}", "syslog-facility": "local0",
                                    "tag": "webapp"})

    router.moorage_container_output(container_id="c1", generation=1, records=[record(1, b"hi\n")])
    message = listener.recv(65536)
    router.moorage_shutdown()
    listener.close()

    assert message.startswith(b"<134>1 ")
    assert message.split(b" ")[3] == b"webapp"
    assert message.endswith(b" - - - hi")


# -- broken and slow sinks --------------------------------------------------------------

def test_shipper_counts_drops_without_listener(socket_folder):
    shipper = Shipper(socket.AF_UNIX, str(socket_folder / "nobody.sock"), "test")

    for _ in range(5):
        shipper.send("c1", b"lost")
    shipper.close()

    assert shipper.dropped("c1") == 5


def test_shipper_send_returns_when_sink_stuck(socket_folder):
    # A bound socket that is never read: the kernel buffer fills, the thread's sends time out
    # and the bounded queue overflows, yet send() returns every time.
    listener = datagram_listener(socket_folder / "stuck.sock")
    shipper = Shipper(socket.AF_UNIX, str(socket_folder / "stuck.sock"), "test", queue_messages=16)

    for _ in range(2000):
        shipper.send("c1", b"x" * 1024)

    assert shipper.dropped("c1") > 0
    listener.close()
    shipper.close()


def test_router_reports_dropped_in_status(tmp_path, socket_folder):
    router = LogRouter(tmp_path)
    router.moorage_log_config(container_id="c1", container_name="web", driver="syslog",
                              opts={"syslog-address": f"unix://{socket_folder}/absent.sock"})

    router.moorage_container_output(container_id="c1", generation=1, records=[record(1, b"a\nb\n")])
    wait_until(lambda: router.moorage_log_status(container_id="c1")["Dropped"] == 2, 10,
               message="two dropped messages")
    status = router.moorage_log_status(container_id="c1")
    router.moorage_shutdown()

    assert status["Name"] == "syslog"


def test_router_counts_failed_file_write(tmp_path):
    router = LogRouter(tmp_path)
    router.moorage_log_config(container_id="c1", container_name="web", driver="local", opts={})
    (tmp_path / "containers" / "c1").mkdir(parents=True)
    (tmp_path / "containers" / "c1" / "logs").write_text("a file where the log folder should be")

    router.moorage_container_output(container_id="c1", generation=1, records=[record(1, b"a\n"), record(2, b"b\n")])

    assert router.moorage_log_status(container_id="c1")["Dropped"] == 2
