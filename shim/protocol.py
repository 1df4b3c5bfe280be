"""Wire protocol shared by moor, moord and moor-shim.

This module imports nothing else from the project, so the shim, the supervisor
and the client can all depend on it.  Every message is one msgpack map (the
envelope) sent as a single ZeroMQ frame, or as two frames ``[topic, envelope]``
on the events PUB socket.

Envelope keys:

* ``v``: protocol version of the sender (int).  Receivers accept any version
  from ``MIN_VERSION`` to ``VERSION``.
* ``op``: operation name, on requests.
* ``rid``: request id chosen by the requester; replies and stream messages
  carry the same ``rid``.
* ``ok`` / ``err``: on replies, ``ok`` is the result; ``err`` is
  ``{"code": str, "message": str}``.
* ``ts``: sender's wall-clock time in seconds, on events and records.

Errors cross the wire only as ``(code, message)``; ``error_from_wire`` and
``MoorError.to_wire`` are the single conversion point on each side.
"""

from __future__ import annotations

import time

VERSION = 1
MIN_VERSION = 1

# Limits on every decoded message.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_CHUNK_BYTES = 256 * 1024
_MAX_ITEMS = 100_000

# Stream numbers on output records.
STDOUT = 1
STDERR = 2

# Event topics published by moord, subject then verb.
TOPIC_CONTAINER_CREATE = "container.create"
TOPIC_CONTAINER_UPDATE = "container.update"
TOPIC_CONTAINER_DELETE = "container.delete"
TOPIC_TASK_CREATE = "task.create"
TOPIC_TASK_START = "task.start"
TOPIC_TASK_EXIT = "task.exit"
TOPIC_TASK_OOM = "task.oom"
TOPIC_TASK_EXEC_ADDED = "task.exec.added"
TOPIC_TASK_EXEC_STARTED = "task.exec.started"
TOPIC_TASK_EXEC_EXIT = "task.exec.exit"
TOPIC_TASK_OUTPUT_LOSS = "task.output.loss"
TOPIC_TASK_RESTART = "task.restart"
TOPIC_TASK_HEALTH_STATUS = "task.health_status"
TOPIC_IMAGE_IMPORT = "image.import"
TOPIC_IMAGE_DELETE = "image.delete"
TOPIC_PLUGIN_ERROR = "plugin.error"
TOPIC_NETWORK_CHECK_FAILED = "network.check_failed"

# Features that a shim lists in its state; a shim of the first release lists none.
FEATURE_SESSIONS = "sessions"

# Record kinds in a shim's outbox.
RECORD_OUTPUT = "output"
RECORD_EXIT = "exit"
RECORD_EXEC_EXIT = "exec_exit"
RECORD_LOSS = "loss"
RECORD_OOM = "oom"


class MoorError(Exception):
    """Error with a stable category code that survives the wire."""

    code = "internal"
    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_wire(self) -> dict:
        return {"code": self.code, "message": self.message}


class InvalidArgument(MoorError):
    code = "invalid_argument"
    exit_code = 2


class NotFound(MoorError):
    code = "not_found"
    exit_code = 3


class AlreadyExists(MoorError):
    code = "already_exists"
    exit_code = 4


class FailedPrecondition(MoorError):
    code = "failed_precondition"
    exit_code = 5


class Unavailable(MoorError):
    code = "unavailable"
    exit_code = 6


class DeadlineExceeded(MoorError):
    code = "deadline_exceeded"
    exit_code = 7


class NotImplementedOp(MoorError):
    code = "not_implemented"
    exit_code = 8


class StartFailed(MoorError):
    """The OCI runtime could not start the process (docker reports 125-127)."""

    code = "start_failed"
    exit_code = 125

    def __init__(self, message: str, status: int = 125):
        super().__init__(message)
        self.status = status

    def to_wire(self) -> dict:
        return {"code": self.code, "message": self.message, "status": self.status}


_ERRORS = {cls.code: cls for cls in (
    MoorError, InvalidArgument, NotFound, AlreadyExists, FailedPrecondition,
    Unavailable, DeadlineExceeded, NotImplementedOp, StartFailed)}


def error_from_wire(err: dict) -> MoorError:
    """Rebuild the exception that a peer reported as ``{"code", "message"}``."""
    cls = _ERRORS.get(err.get("code"), MoorError)
    message = str(err.get("message", "unknown error"))
    if cls is StartFailed:
        return StartFailed(message, int(err.get("status", 125)))
    return cls(message)


_msgpack = None


def _codec():
    """Return the msgpack module, imported on first use.

    The client uses pack_light and so never loads msgpack. Later calls run no
    import statement, because in a shim that statement would copy the pages it touches.
    """
    global _msgpack
    if _msgpack is None:
        import msgpack
        _msgpack = msgpack
    return _msgpack


def pack(message: dict) -> bytes:
    message.setdefault("v", VERSION)
    return _codec().packb(message, use_bin_type=True)


def unpack(frame: bytes) -> dict:
    """Decode one envelope, enforcing the size limits and the version range."""
    msgpack = _codec()
    _check_size(frame)
    try:
        message = msgpack.unpackb(
            frame, raw=False, strict_map_key=True,
            max_str_len=MAX_MESSAGE_BYTES, max_bin_len=MAX_MESSAGE_BYTES,
            max_array_len=_MAX_ITEMS, max_map_len=_MAX_ITEMS)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise InvalidArgument(f"malformed message: {exc}") from None
    return _check_envelope(message)


def pack_light(message: dict) -> bytes:
    """``pack`` through ``shim.minipack``, which is cheaper to import than msgpack; the same bytes."""
    from shim import minipack

    message.setdefault("v", VERSION)
    return minipack.packb(message)


def unpack_light(frame: bytes) -> dict:
    """``unpack`` through ``shim.minipack``, with the same limits and checks."""
    from shim import minipack

    _check_size(frame)
    try:
        message = minipack.unpackb(frame, max_items=_MAX_ITEMS)
    except minipack.FormatError as exc:
        raise InvalidArgument(f"malformed message: {exc}") from None
    return _check_envelope(message)


def _check_size(frame: bytes) -> None:
    if len(frame) > MAX_MESSAGE_BYTES:
        raise InvalidArgument(f"message of {len(frame)} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")


def _check_envelope(message) -> dict:
    if not isinstance(message, dict):
        raise InvalidArgument("malformed message: the envelope is not a map")
    version = message.get("v")
    if not isinstance(version, int) or not MIN_VERSION <= version <= VERSION:
        raise InvalidArgument(
            f"unsupported protocol version {version!r}; this side speaks {MIN_VERSION} to {VERSION}")
    return message


def request(op: str, rid: int, **args) -> dict:
    return {"v": VERSION, "op": op, "rid": rid, **args}


def reply(rid, result=None) -> dict:
    return {"v": VERSION, "rid": rid, "ok": result}


def error_reply(rid, error: MoorError) -> dict:
    return {"v": VERSION, "rid": rid, "err": error.to_wire()}


def event(topic: str, container_id: str | None, payload: dict) -> dict:
    return {"v": VERSION, "topic": topic, "id": container_id, "ts": time.time(), "payload": payload}


def exit_code_from_status(status: int) -> tuple[int, int]:
    """Convert a raw wait status to ``(exit_code, signal)``; a signal gives 128 + signal."""
    import os
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return 128 + sig, sig
    return os.WEXITSTATUS(status), 0
