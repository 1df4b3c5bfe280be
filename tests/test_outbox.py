"""Tests of shim.outbox.Outbox on real segment files: sequence, ack, replay, bound and loss."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from shim.outbox import WINDOW_RECORDS, Outbox
from shim.protocol import RECORD_EXIT, RECORD_LOSS, RECORD_OUTPUT, STDERR, STDOUT

MIB = 1024 * 1024


def output(data: bytes, stream: int = STDOUT) -> dict:
    return {"kind": RECORD_OUTPUT, "stream": stream, "exec": None, "data": data, "ts": 1.0}


def exit_record(code: int = 0) -> dict:
    return {"kind": RECORD_EXIT, "exec": None, "pid": 100, "code": code, "signal": 0, "at": 2.0, "ts": 2.0}


def drain(outbox: Outbox) -> list[dict]:
    """Return every record that the send window lets out now, decoded."""
    return [msgpack.unpackb(body, raw=False) for _, body in outbox.sendable()]


def segment_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.glob("*.seg"))


def frame_size(record: dict) -> int:
    """Return the bytes one record takes in a segment file: a 4-byte length, then msgpack."""
    return 4 + len(msgpack.packb({**record, "seq": 1}, use_bin_type=True))


@pytest.fixture
def spool(tmp_path) -> Path:
    return tmp_path / "spool"


# -- sequence and sending ------------------------------------------------------

def test_append_numbers_records_from_one(spool):
    outbox = Outbox(spool, limit=MIB)

    numbers = [outbox.append(output(b"line %d\n" % i)) for i in range(5)]

    assert numbers == [1, 2, 3, 4, 5]


def test_sendable_yields_records_in_order(spool):
    outbox = Outbox(spool, limit=MIB)
    for i in range(3):
        outbox.append(output(b"line %d\n" % i))

    records = drain(outbox)

    assert [r["seq"] for r in records] == [1, 2, 3]
    assert [r["data"] for r in records] == [b"line 0\n", b"line 1\n", b"line 2\n"]


def test_sendable_sends_each_record_once(spool):
    outbox = Outbox(spool, limit=MIB)
    outbox.append(output(b"a"))
    drain(outbox)
    outbox.append(output(b"b"))

    records = drain(outbox)

    assert [r["data"] for r in records] == [b"b"]


def test_window_limits_unacknowledged_records(spool):
    outbox = Outbox(spool, limit=64 * MIB)
    for _ in range(WINDOW_RECORDS + 10):
        outbox.append(output(b"x"))

    records = drain(outbox)

    assert len(records) == WINDOW_RECORDS


def test_ack_opens_window_again(spool):
    outbox = Outbox(spool, limit=64 * MIB)
    for _ in range(WINDOW_RECORDS + 10):
        outbox.append(output(b"x"))
    drain(outbox)

    outbox.ack(WINDOW_RECORDS)
    records = drain(outbox)

    assert [r["seq"] for r in records] == list(range(WINDOW_RECORDS + 1, WINDOW_RECORDS + 11))


def test_ack_beyond_last_record_is_clamped(spool):
    outbox = Outbox(spool, limit=MIB)
    outbox.append(output(b"a"))

    outbox.ack(50)

    assert outbox.acked_seq == 1


# -- segments --------------------------------------------------------------------

def test_segments_roll_over_at_size(spool):
    outbox = Outbox(spool, limit=MIB, segment_bytes=3 * frame_size(output(b"x" * 1000)))

    for _ in range(10):
        outbox.append(output(b"x" * 1000))

    assert len(segment_files(spool)) == 4


def test_ack_deletes_acknowledged_segments(spool):
    outbox = Outbox(spool, limit=MIB, segment_bytes=3 * frame_size(output(b"x" * 1000)))
    for _ in range(10):
        outbox.append(output(b"x" * 1000))
    drain(outbox)
    before = segment_files(spool)

    outbox.ack(8)

    assert segment_files(spool) == before[2:]


def test_ack_keeps_partly_acknowledged_segments(spool):
    outbox = Outbox(spool, limit=MIB, segment_bytes=3 * frame_size(output(b"x" * 1000)))
    for _ in range(10):
        outbox.append(output(b"x" * 1000))
    drain(outbox)
    before = segment_files(spool)

    outbox.ack(5)

    assert segment_files(spool) == before[1:]


def test_ack_releases_spooled_bytes(spool):
    outbox = Outbox(spool, limit=MIB, segment_bytes=4096)
    for _ in range(10):
        outbox.append(output(b"x" * 1000))
    drain(outbox)

    outbox.ack(8)

    assert outbox.spooled == sum(path.stat().st_size for path in spool.glob("*.seg"))


def test_close_removes_segment_files(spool):
    outbox = Outbox(spool, limit=MIB, segment_bytes=4096)
    for _ in range(10):
        outbox.append(output(b"x" * 1000))

    outbox.close()

    assert segment_files(spool) == []


def test_send_continues_after_sent_segment_deleted(spool):
    """The send cursor at the end of a segment that an ack deletes moves to the next segment's start."""
    big = output(b"x" * 1000)
    outbox = Outbox(spool, limit=MIB, segment_bytes=2 * frame_size(big))
    outbox.append(big)
    outbox.append(output(b"x" * 1000))
    drain(outbox)
    outbox.append(output(b"next"))

    outbox.ack(2)
    records = drain(outbox)

    assert [r["data"] for r in records] == [b"next"]


# -- replay after a reconnect ----------------------------------------------------

def test_rewind_replays_unacknowledged_records(spool):
    outbox = Outbox(spool, limit=MIB)
    for i in range(5):
        outbox.append(output(b"%d" % i))
    drain(outbox)

    outbox.rewind(3)
    records = drain(outbox)

    assert [r["seq"] for r in records] == [3, 4, 5]


def test_rewind_acknowledges_records_before_it(spool):
    outbox = Outbox(spool, limit=MIB)
    for i in range(5):
        outbox.append(output(b"%d" % i))

    outbox.rewind(3)

    assert outbox.acked_seq == 2


def test_rewind_replays_across_segments(spool):
    outbox = Outbox(spool, limit=MIB, segment_bytes=4096)
    for i in range(10):
        outbox.append(output(b"%d" % i * 1000))
    drain(outbox)

    outbox.rewind(2)
    records = drain(outbox)

    assert [r["seq"] for r in records] == list(range(2, 11))
    assert [r["data"][:1] for r in records] == [b"%d" % i for i in range(1, 10)]


def test_rewind_before_deleted_records_starts_at_oldest_kept(spool):
    outbox = Outbox(spool, limit=MIB, segment_bytes=3 * frame_size(output(b"x" * 1000)))
    for i in range(10):
        outbox.append(output(b"%d" % i * 1000))
    drain(outbox)
    outbox.ack(8)

    outbox.rewind(1)
    records = drain(outbox)

    assert [r["seq"] for r in records] == [7, 8, 9, 10]


def test_rewind_after_full_ack_sends_new_records(spool):
    """A moord that reconnects having stored everything still gets what comes next."""
    outbox = Outbox(spool, limit=MIB)
    outbox.append(output(b"before\n"))
    drain(outbox)
    outbox.ack(1)

    outbox.rewind(2)
    outbox.append(output(b"after\n"))
    records = drain(outbox)

    assert [r["data"] for r in records] == [b"after\n"]


def test_unsend_resends_same_record(spool):
    outbox = Outbox(spool, limit=MIB)
    for i in range(3):
        outbox.append(output(b"%d" % i))
    drain(outbox)

    outbox.unsend(2)
    records = drain(outbox)

    assert [r["seq"] for r in records] == [2, 3]


# -- the bound and loss records --------------------------------------------------

def test_output_over_bound_is_dropped(spool):
    outbox = Outbox(spool, limit=MIB)
    outbox.append(output(b"x" * (MIB - 1000)))

    seq = outbox.append(output(b"y" * 5000))

    assert seq is None
    assert outbox.lost_total == 5000


def test_dropped_output_is_never_sent(spool):
    outbox = Outbox(spool, limit=MIB)
    outbox.append(output(b"x" * (MIB - 1000)))
    outbox.append(output(b"y" * 5000))

    records = drain(outbox)

    assert [r["data"][:1] for r in records] == [b"x"]


def test_exit_record_written_when_spool_full(spool):
    outbox = Outbox(spool, limit=MIB)
    outbox.append(output(b"x" * (MIB - 1000)))
    outbox.append(output(b"y" * 5000))

    seq = outbox.append(exit_record(3), durable=True)

    assert seq is not None
    assert drain(outbox)[-1]["code"] == 3


def test_loss_record_precedes_exit_record(spool):
    outbox = Outbox(spool, limit=MIB)
    outbox.append(output(b"x" * (MIB - 1000)))
    outbox.append(output(b"y" * 5000, stream=STDERR))

    outbox.append(exit_record(), durable=True)
    kinds = [(r["kind"], r.get("stream"), r.get("bytes")) for r in drain(outbox)]

    assert kinds == [(RECORD_OUTPUT, STDOUT, None), (RECORD_LOSS, STDERR, 5000), (RECORD_EXIT, None, None)]


def test_loss_record_written_after_ack_makes_room(spool):
    outbox = Outbox(spool, limit=MIB, segment_bytes=256 * 1024)
    for _ in range(4):
        outbox.append(output(b"x" * 200_000))
    outbox.append(output(b"y" * 300_000))
    drain(outbox)

    outbox.ack(4)
    records = drain(outbox)

    assert [(r["kind"], r["bytes"], r["total"]) for r in records] == [(RECORD_LOSS, 300_000, 300_000)]


def test_loss_records_count_each_stream(spool):
    outbox = Outbox(spool, limit=MIB)
    outbox.append(output(b"x" * (MIB - 1000)))
    outbox.append(output(b"a" * 3000, stream=STDOUT))
    outbox.append(output(b"b" * 4000, stream=STDERR))
    outbox.append(output(b"c" * 5000, stream=STDOUT))

    outbox.append(exit_record(), durable=True)
    losses = [(r["stream"], r["bytes"]) for r in drain(outbox) if r["kind"] == RECORD_LOSS]

    assert losses == [(STDOUT, 8000), (STDERR, 4000)]


def test_loss_total_accumulates_across_records(spool):
    outbox = Outbox(spool, limit=MIB, segment_bytes=256 * 1024)
    for _ in range(4):
        outbox.append(output(b"x" * 200_000))
    outbox.append(output(b"y" * 300_000))
    drain(outbox)
    outbox.ack(4)
    for _ in range(4):
        outbox.append(output(b"x" * 200_000))
    outbox.append(output(b"z" * 300_000))

    outbox.append(exit_record(), durable=True)
    totals = [r["total"] for r in drain(outbox) if r["kind"] == RECORD_LOSS]

    assert totals == [300_000, 600_000]


def test_small_bound_keeps_room_once_acknowledged(spool):
    """With a bound below the segment size, acknowledged output must not fill the spool for good."""
    outbox = Outbox(spool, limit=MIB)
    for _ in range(20):
        outbox.append(output(b"x" * 60_000))
        drain(outbox)
        outbox.ack(outbox.next_seq - 1)

    assert outbox.lost_total == 0
