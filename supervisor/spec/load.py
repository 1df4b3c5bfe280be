"""Reading of a user-supplied OCI config.json (``moor run --spec FILE``)."""

from __future__ import annotations

import codecs
import json
import os
from pathlib import Path

from shim.protocol import InvalidArgument

from .files import read_regular_file

MAX_SPEC_BYTES = 16 * 1024 * 1024
_JSON_WHITESPACE = " \t\n\r"


class _RejectedValue(ValueError):
    """Error for JSON that Python's decoder accepts but an OCI config must not contain."""


def load_spec_file(path: Path) -> dict:
    """Read a config.json file and return its JSON object, without validating the config.

    Call ``validate_spec(spec, bundle=path.parent)`` next.
    """
    path = Path(path)
    data = _read_bytes(path)
    if not data.strip(_JSON_WHITESPACE.encode()):
        raise InvalidArgument(f"invalid spec file {path}: the file is empty. It must contain one JSON object")
    if data.startswith(codecs.BOM_UTF8):
        raise InvalidArgument(
            f"invalid spec file {path}: it starts with a UTF-8 byte order mark, which JSON does "
            f"not allow. Save it without one")

    text = _decode(path, data)
    document = _parse(path, text)
    if not isinstance(document, dict):
        kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
        kind = kinds.get(type(document), "a number")
        raise InvalidArgument(
            f"invalid spec file {path}: it contains {kind}, but an OCI config must be a JSON object {{...}}")
    return document


def _read_bytes(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InvalidArgument(f"spec file {path} not found. Check the path given to --spec") from None
    except OSError as exc:
        raise InvalidArgument(f"failed to open spec file {path}: {exc.strerror}") from None

    data = read_regular_file(fd, MAX_SPEC_BYTES)
    if data is None:
        raise InvalidArgument(f"invalid spec file {path}: it is not a regular file")
    if len(data) > MAX_SPEC_BYTES:
        raise InvalidArgument(f"invalid spec file {path}: it is larger than {MAX_SPEC_BYTES} bytes")
    return data


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _byte_position(data, exc.start)
        raise InvalidArgument(
            f"invalid spec file {path}: invalid UTF-8 byte 0x{data[exc.start]:02x} at line {line}, "
            f"column {column} (byte offset {exc.start}). Save the file as UTF-8") from None


def _byte_position(data: bytes, offset: int) -> tuple[int, int]:
    line_start = data.rfind(b"\n", 0, offset) + 1
    return data.count(b"\n", 0, offset) + 1, offset - line_start + 1


def _text_position(text: str, offset: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset) + 1, offset - line_start + 1


def _parse(path: Path, text: str):
    decoder = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    start = len(text) - len(text.lstrip(_JSON_WHITESPACE))
    try:
        document, end = decoder.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(
            f"invalid spec file {path}: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except _RejectedValue as exc:
        raise InvalidArgument(f"invalid spec file {path}: {exc}") from None
    except RecursionError:
        raise InvalidArgument(f"invalid spec file {path}: the JSON is nested too deeply") from None

    trailing = len(text) - len(text[end:].lstrip(_JSON_WHITESPACE))
    if trailing < len(text):
        line, column = _text_position(text, trailing)
        raise InvalidArgument(
            f"invalid spec file {path}: unexpected text after the JSON object at line {line}, "
            f"column {column}: {text[trailing:trailing + 20]!r}. The file must contain only one JSON object")
    return document


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    document = {}
    for key, value in pairs:
        if key in document:
            raise _RejectedValue(f"the key {key!r} appears twice in one object. Keep one of them")
        document[key] = value
    return document


def _reject_constant(name: str):
    raise _RejectedValue(f"{name} is not valid JSON. Use a number")
