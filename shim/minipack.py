"""A small msgpack encoder and decoder in pure Python, for the ``moor`` client.

The msgpack package costs a short ``moor`` command about 3.5 ms to import
(its extension types pull in ``datetime``), which is more than encoding and
decoding the few small messages of one command takes in Python.  This module
covers the types that Moorage's envelopes use: nil, booleans, integers,
floats, strings, binary, arrays and maps with string keys.  Extension types
are rejected.  moord and the shims keep using the msgpack package; the tests
check that both produce and accept the same bytes.
"""

from __future__ import annotations

import struct

MAX_DEPTH = 64


class FormatError(ValueError):
    """The bytes are not msgpack of the supported subset, or break a limit."""


def packb(value) -> bytes:
    """Encode ``value`` with the smallest form of each item, as the msgpack package does."""
    out = bytearray()
    _pack(value, out, 0)
    return bytes(out)


def _pack(value, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise FormatError(f"nesting deeper than {MAX_DEPTH} levels")
    if value is None:
        out.append(0xC0)
    elif value is True:
        out.append(0xC3)
    elif value is False:
        out.append(0xC2)
    elif isinstance(value, int):
        _pack_int(value, out)
    elif isinstance(value, float):
        out.append(0xCB)
        out += struct.pack(">d", value)
    elif isinstance(value, str):
        data = value.encode("utf-8")
        _pack_length(len(data), out, 0xA0, 31, 0xD9, 0xDA, 0xDB)
        out += data
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        _pack_length(len(data), out, None, 0, 0xC4, 0xC5, 0xC6)
        out += data
    elif isinstance(value, (list, tuple)):
        _pack_length(len(value), out, 0x90, 15, None, 0xDC, 0xDD)
        for item in value:
            _pack(item, out, depth + 1)
    elif isinstance(value, dict):
        _pack_length(len(value), out, 0x80, 15, None, 0xDE, 0xDF)
        for key, item in value.items():
            _pack(key, out, depth + 1)
            _pack(item, out, depth + 1)
    else:
        raise FormatError(f"cannot encode a value of type {type(value).__name__}")


def _pack_int(value: int, out: bytearray) -> None:
    if 0 <= value <= 0x7F:
        out.append(value)
    elif -32 <= value < 0:
        out.append(value & 0xFF)
    elif 0 <= value <= 0xFF:
        out += b"\xcc" + struct.pack(">B", value)
    elif 0 <= value <= 0xFFFF:
        out += b"\xcd" + struct.pack(">H", value)
    elif 0 <= value <= 0xFFFFFFFF:
        out += b"\xce" + struct.pack(">I", value)
    elif 0 <= value <= 0xFFFFFFFFFFFFFFFF:
        out += b"\xcf" + struct.pack(">Q", value)
    elif -0x80 <= value < 0:
        out += b"\xd0" + struct.pack(">b", value)
    elif -0x8000 <= value < 0:
        out += b"\xd1" + struct.pack(">h", value)
    elif -0x80000000 <= value < 0:
        out += b"\xd2" + struct.pack(">i", value)
    elif -0x8000000000000000 <= value < 0:
        out += b"\xd3" + struct.pack(">q", value)
    else:
        raise FormatError(f"integer {value} does not fit in 64 bits")


def _pack_length(length: int, out: bytearray, fix_base, fix_max: int, one, two, four) -> None:
    if fix_base is not None and length <= fix_max:
        out.append(fix_base | length)
    elif one is not None and length <= 0xFF:
        out += bytes((one, length))
    elif length <= 0xFFFF:
        out += bytes((two,)) + struct.pack(">H", length)
    elif length <= 0xFFFFFFFF:
        out += bytes((four,)) + struct.pack(">I", length)
    else:
        raise FormatError(f"length {length} does not fit in 32 bits")


def unpackb(data: bytes, max_items: int = 100_000) -> object:
    """Decode exactly one value from ``data``; map keys must be strings."""
    reader = _Reader(memoryview(data), max_items)
    value = reader.value(0)
    if reader.pos != len(data):
        raise FormatError(f"{len(data) - reader.pos} bytes of extra data after the value")
    return value


_FIXED = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q", 0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q",
          0xCA: ">f", 0xCB: ">d"}
_LENGTHS = {0xD9: ">B", 0xDA: ">H", 0xDB: ">I", 0xC4: ">B", 0xC5: ">H", 0xC6: ">I",
            0xDC: ">H", 0xDD: ">I", 0xDE: ">H", 0xDF: ">I"}


class _Reader:
    def __init__(self, data: memoryview, max_items: int):
        self.data = data
        self.pos = 0
        self.max_items = max_items

    def take(self, count: int) -> memoryview:
        end = self.pos + count
        if end > len(self.data):
            raise FormatError("the data ends in the middle of a value")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def number(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def value(self, depth: int):
        if depth > MAX_DEPTH:
            raise FormatError(f"nesting deeper than {MAX_DEPTH} levels")
        tag = self.take(1)[0]
        if tag <= 0x7F:
            return tag
        if tag >= 0xE0:
            return tag - 0x100
        if 0xA0 <= tag <= 0xBF:
            return self.text(tag & 0x1F)
        if 0x90 <= tag <= 0x9F:
            return self.array(tag & 0x0F, depth)
        if 0x80 <= tag <= 0x8F:
            return self.map(tag & 0x0F, depth)
        if tag == 0xC0:
            return None
        if tag in (0xC2, 0xC3):
            return tag == 0xC3
        if tag in _FIXED:
            return self.number(_FIXED[tag])
        if tag in _LENGTHS:
            length = self.number(_LENGTHS[tag])
            if tag in (0xD9, 0xDA, 0xDB):
                return self.text(length)
            if tag in (0xC4, 0xC5, 0xC6):
                return bytes(self.take(length))
            if tag in (0xDC, 0xDD):
                return self.array(length, depth)
            return self.map(length, depth)
        raise FormatError(f"unsupported msgpack type byte 0x{tag:02x}")

    def text(self, length: int) -> str:
        try:
            return str(self.take(length), "utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError(f"a string is not valid UTF-8: {exc}") from None

    def array(self, length: int, depth: int) -> list:
        self.check_items(length)
        return [self.value(depth + 1) for _ in range(length)]

    def map(self, length: int, depth: int) -> dict:
        self.check_items(length)
        result = {}
        for _ in range(length):
            key = self.value(depth + 1)
            if not isinstance(key, str):
                raise FormatError(f"a map key is a {type(key).__name__}, not a string")
            result[key] = self.value(depth + 1)
        return result

    def check_items(self, length: int) -> None:
        if length > self.max_items:
            raise FormatError(f"{length} items exceed the limit of {self.max_items}")
