"""The client's small msgpack codec against the msgpack package that moord and the shims use."""

from __future__ import annotations

import math

import msgpack
import pytest

from shim import minipack, protocol
from shim.protocol import InvalidArgument

VALUES = [
    pytest.param(None, id="nil"),
    pytest.param(True, id="true"),
    pytest.param(False, id="false"),
    *(pytest.param(n, id=f"int{n}") for n in (0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32,
                                              2**64 - 1, -1, -32, -33, -128, -129, -32768, -32769,
                                              -2**31, -2**31 - 1, -2**63)),
    pytest.param(1.5, id="float"),
    pytest.param(-0.0, id="negative-zero"),
    pytest.param(math.inf, id="infinity"),
    pytest.param("", id="empty-string"),
    pytest.param("x" * 31, id="fixstr-max"),
    pytest.param("x" * 32, id="str8"),
    pytest.param("y" * 256, id="str16"),
    pytest.param("z" * 65536, id="str32"),
    pytest.param("héllo ☃ \U0001f600", id="unicode"),
    pytest.param(b"", id="empty-bin"),
    pytest.param(b"\x00\xff" * 200, id="bin16"),
    pytest.param(bytes(70000), id="bin32"),
    pytest.param([], id="empty-array"),
    pytest.param(list(range(15)), id="fixarray-max"),
    pytest.param(list(range(16)), id="array16"),
    pytest.param(list(range(70000)), id="array32"),
    pytest.param({f"k{i}": i for i in range(15)}, id="fixmap-max"),
    pytest.param({f"k{i}": i for i in range(16)}, id="map16"),
    pytest.param({"v": 1, "op": "run", "rid": 7, "options": {"args": ["sh", "-c", "exit 3"], "env": [],
                  "volumes": []}, "labels": {"a": "b"}, "rm": True, "data": b"\x01\x02"}, id="request"),
]


@pytest.mark.parametrize("value", VALUES)
def test_minipack_encodes_as_msgpack(value):
    assert minipack.packb(value) == msgpack.packb(value, use_bin_type=True)


@pytest.mark.parametrize("value", VALUES)
def test_minipack_decodes_msgpack(value):
    decoded = minipack.unpackb(msgpack.packb(value, use_bin_type=True))

    assert decoded == value or (isinstance(value, float) and math.isnan(value))


def test_minipack_decodes_float32():
    assert minipack.unpackb(msgpack.packb(0.5, use_single_float=True)) == 0.5


def test_minipack_tuple_becomes_array():
    assert minipack.packb(("a", 1)) == msgpack.packb(["a", 1], use_bin_type=True)


@pytest.mark.parametrize("data, fragment", [
    pytest.param(b"\xd9\x05ab", "ends in the middle", id="truncated-string"),
    pytest.param(b"\x01\x02", "extra data", id="extra-data"),
    pytest.param(b"\xc1", "unsupported", id="reserved-byte"),
    pytest.param(b"\xd4\x01\x00", "unsupported", id="ext-type"),
    pytest.param(b"\x81\x01\x02", "not a string", id="int-key"),
    pytest.param(b"\xa2\xff\xfe", "UTF-8", id="bad-utf8"),
    pytest.param(b"\x91" * 100 + b"\xc0", "nesting", id="too-deep"),
])
def test_minipack_rejects_malformed(data, fragment):
    with pytest.raises(minipack.FormatError, match=fragment):
        minipack.unpackb(data)


def test_minipack_limits_items():
    with pytest.raises(minipack.FormatError, match="exceed the limit"):
        minipack.unpackb(msgpack.packb(list(range(20))), max_items=10)


def test_minipack_rejects_unknown_type():
    with pytest.raises(minipack.FormatError, match="set"):
        minipack.packb({1, 2})


def test_unpack_light_checks_version():
    with pytest.raises(InvalidArgument, match="unsupported protocol version"):
        protocol.unpack_light(msgpack.packb({"v": protocol.VERSION + 1}))


def test_unpack_light_reads_what_unpack_reads():
    frame = protocol.pack(protocol.reply(3, {"id": "abc", "exit_code": 0}))

    assert protocol.unpack_light(frame) == protocol.unpack(frame)
