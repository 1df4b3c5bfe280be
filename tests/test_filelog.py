"""Tests of plugins.filelog on real files: pieces, rejoined lines, rotation and the stored position."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugins.filelog import (PIECE_BYTES, FileLogger, LogFile, encode_record, format_time, last_position,
                             log_files, parse_line, read_lines)
from shim.protocol import STDERR, STDOUT


def record(seq: int, data: bytes, stream: int = STDOUT, ts: float = 1_700_000_000.25) -> dict:
    return {"seq": seq, "stream": stream, "data": data, "ts": ts}


def write_records(folder: Path, records: list[dict], generation: int = 1, max_size: int = 1 << 30,
                  max_files: int = 5) -> None:
    handle = LogFile(folder, max_size, max_files)
    try:
        for item in records:
            handle.write(encode_record(generation, item))
    finally:
        handle.close()


def lines_of(folder: Path) -> list[tuple[int, bytes]]:
    """Return ``(stream, line)`` for every rejoined line of the log in ``folder``."""
    return [(stream, line) for _, stream, line, _, _ in read_lines(log_files(folder))]


def tags(encoded: bytes) -> list[bytes]:
    return [b"P" if parse_line(raw)[2] else b"F" for raw in encoded.splitlines()]


# -- encoding ------------------------------------------------------------------

def test_format_time_has_nanoseconds_utc():
    assert format_time(1.5) == "1970-01-01T00:00:01.500000000Z"


def test_encode_full_line_as_one_f_line():
    encoded = encode_record(3, record(7, b"hello\n", ts=1.5))

    assert encoded == b"1970-01-01T00:00:01.500000000Z stdout F 3:7 hello\n"


def test_encode_unfinished_line_as_partial():
    encoded = encode_record(3, record(7, b"no newline yet", ts=1.5))

    assert encoded == b"1970-01-01T00:00:01.500000000Z stdout P 3:7 no newline yet\n"


def test_encode_names_stderr_stream():
    encoded = encode_record(1, record(1, b"oops\n", stream=STDERR))

    assert encoded.split(b" ")[1] == b"stderr"


def test_encode_several_lines_share_position():
    encoded = encode_record(2, record(9, b"a\nb\nc"))

    assert [raw.split(b" ")[3] for raw in encoded.splitlines()] == [b"2:9", b"2:9", b"2:9"]
    assert tags(encoded) == [b"F", b"F", b"P"]


def test_encode_long_line_in_16_kib_pieces():
    encoded = encode_record(1, record(1, b"x" * (2 * PIECE_BYTES + 100) + b"\n"))

    pieces = [parse_line(raw) for raw in encoded.splitlines()]

    assert [len(piece[5]) for piece in pieces] == [PIECE_BYTES, PIECE_BYTES, 100]
    assert [piece[2] for piece in pieces] == [True, True, False]


def test_encode_newline_right_after_full_piece():
    encoded = encode_record(1, record(1, b"y" * PIECE_BYTES + b"\n"))

    pieces = [parse_line(raw) for raw in encoded.splitlines()]

    assert [(len(piece[5]), piece[2]) for piece in pieces] == [(PIECE_BYTES, True), (0, False)]


# -- reading lines back ----------------------------------------------------------

def test_read_rejoins_partial_pieces(tmp_path):
    data = b"z" * (5 * PIECE_BYTES + 17)
    write_records(tmp_path, [record(1, data + b"\n")])

    assert lines_of(tmp_path) == [(STDOUT, data + b"\n")]


def test_read_rejoins_line_split_across_records(tmp_path):
    write_records(tmp_path, [record(1, b"first half "), record(2, b"second half\n")])

    assert lines_of(tmp_path) == [(STDOUT, b"first half second half\n")]


def test_read_rejoins_line_split_in_many_records(tmp_path):
    write_records(tmp_path, [record(seq, b"%d," % seq) for seq in range(1, 50)] + [record(50, b"end\n")])

    assert lines_of(tmp_path) == [(STDOUT, b"".join(b"%d," % seq for seq in range(1, 50)) + b"end\n")]


def test_read_joins_each_stream_separately(tmp_path):
    write_records(tmp_path, [record(1, b"out-start "), record(2, b"err line\n", stream=STDERR),
                             record(3, b"out-end\n")])

    assert lines_of(tmp_path) == [(STDERR, b"err line\n"), (STDOUT, b"out-start out-end\n")]


def test_read_returns_unfinished_last_line(tmp_path):
    write_records(tmp_path, [record(1, b"done\nstill going")])

    assert lines_of(tmp_path) == [(STDOUT, b"done\n"), (STDOUT, b"still going")]


def test_read_skips_record_being_written(tmp_path):
    write_records(tmp_path, [record(1, b"whole\n")])
    with open(tmp_path / "container.log", "ab") as handle:
        handle.write(b"2023-11-14T22:13:20.250000000Z stdout F 1:2 half-writ")

    assert lines_of(tmp_path) == [(STDOUT, b"whole\n")]


def test_read_gives_first_piece_time(tmp_path):
    write_records(tmp_path, [record(1, b"early ", ts=10.0), record(2, b"late\n", ts=20.0)])

    items = list(read_lines(log_files(tmp_path)))

    assert [item[0] for item in items] == [format_time(10.0)]


def test_read_gives_generation_and_seq(tmp_path):
    write_records(tmp_path, [record(4, b"a\n")], generation=2)

    items = list(read_lines(log_files(tmp_path)))

    assert [(item[3], item[4]) for item in items] == [(2, 4)]


def test_read_keeps_bytes_exact(tmp_path):
    data = bytes(range(256)).replace(b"\n", b"") + " naïve 日本語 ✓".encode() + b"\n"
    write_records(tmp_path, [record(1, data)])

    assert lines_of(tmp_path) == [(STDOUT, data)]


# -- rotation --------------------------------------------------------------------

def numbered(count: int) -> list[dict]:
    return [record(seq, b"n=%05d\n" % seq) for seq in range(1, count + 1)]


@pytest.mark.parametrize("max_files", [1, 3], ids=["one-file", "three-files"])
def test_rotation_keeps_at_most_max_files(tmp_path, max_files):
    write_records(tmp_path, numbered(500), max_size=1024, max_files=max_files)

    assert len(list(tmp_path.glob("container.log*"))) == max_files


@pytest.mark.parametrize("max_files", [1, 3], ids=["one-file", "three-files"])
def test_rotation_keeps_files_under_max_size(tmp_path, max_files):
    write_records(tmp_path, numbered(500), max_size=1024, max_files=max_files)

    sizes = {path.name: path.stat().st_size for path in tmp_path.glob("container.log*")}

    assert all(size <= 1024 for size in sizes.values()), sizes


@pytest.mark.parametrize("max_files", [1, 3], ids=["one-file", "three-files"])
def test_rotation_keeps_newest_lines_in_order(tmp_path, max_files):
    write_records(tmp_path, numbered(500), max_size=1024, max_files=max_files)

    numbers = [int(line[2:]) for _, line in lines_of(tmp_path)]

    assert numbers[-1] == 500
    assert numbers == list(range(numbers[0], 501))


def test_log_files_sorts_rotated_numerically(tmp_path):
    write_records(tmp_path, numbered(2000), max_size=1024, max_files=12)

    names = [path.name for path in log_files(tmp_path)]

    assert names == [f"container.log.{index}" for index in range(11, 0, -1)] + ["container.log"]


def test_rotation_never_splits_record(tmp_path):
    write_records(tmp_path, [record(1, b"p" * 3000)], max_size=1024, max_files=3)
    write_records(tmp_path, [record(2, b"q\n")], max_size=1024, max_files=3)

    assert lines_of(tmp_path) == [(STDOUT, b"p" * 3000 + b"q\n")]


# -- last position ---------------------------------------------------------------

def test_last_position_without_files_is_none(tmp_path):
    assert last_position(log_files(tmp_path)) is None


def test_last_position_is_last_record(tmp_path):
    write_records(tmp_path, [record(1, b"a\n"), record(2, b"b\n"), record(3, b"c\n")], generation=4)

    assert last_position(log_files(tmp_path)) == (4, 3)


def test_last_position_after_long_partial_run(tmp_path):
    write_records(tmp_path, [record(1, b"short\n"), record(2, b"r" * (10 * PIECE_BYTES))])

    assert last_position(log_files(tmp_path)) == (1, 2)


def test_last_position_ignores_half_written_record(tmp_path):
    write_records(tmp_path, [record(1, b"a\n"), record(2, b"b\n")])
    with open(tmp_path / "container.log", "ab") as handle:
        handle.write(b"2023-11-14T22:13:20.250000000Z stdout F 1:3 cut sho")

    assert last_position(log_files(tmp_path)) == (1, 2)


def test_last_position_falls_back_to_rotated_file(tmp_path):
    write_records(tmp_path, numbered(300), max_size=1024, max_files=3)
    handle = LogFile(tmp_path, 1024, 3)
    handle.rotate()
    handle.close()

    assert last_position(log_files(tmp_path)) == (1, 300)


# -- the plugin hooks -------------------------------------------------------------

def test_plugin_stores_and_reads_output(tmp_path):
    logger = FileLogger(tmp_path, max_size=1 << 20, max_files=2)

    logger.moorage_container_output(container_id="c1", generation=1, records=[record(1, b"one "), record(2, b"two\n")])
    items = list(logger.moorage_read_logs(container_id="c1"))

    assert [item[2] for item in items] == [b"one two\n"]


def test_plugin_reports_output_position(tmp_path):
    logger = FileLogger(tmp_path, max_size=1 << 20, max_files=2)

    logger.moorage_container_output(container_id="c1", generation=2, records=[record(5, b"x\n")])

    assert logger.moorage_output_position(container_id="c1") == (2, 5)


def test_plugin_removes_logs_with_container(tmp_path):
    logger = FileLogger(tmp_path, max_size=1 << 20, max_files=2)
    logger.moorage_container_output(container_id="c1", generation=1, records=[record(1, b"x\n")])

    logger.moorage_container_removed(container_id="c1")

    assert not logger.folder("c1").exists()
