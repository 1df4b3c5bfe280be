"""moord's side of the shims: the launcher that forks them and one client per shim."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import resource
import sys
from collections.abc import Callable
from pathlib import Path

import msgpack
import zmq
import zmq.asyncio

from shim import protocol
from shim.protocol import DeadlineExceeded, MoorError, Unavailable
from shim.service import ShimConfig

log = logging.getLogger(__name__)

# Plain ints: the enum lookups cost more than the poll check itself in the read loop.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def _same_code_env() -> dict[str, str]:
    """Return an environment in which ``-m shim.main`` imports the shim from moord's own source tree.

    Without it, a moord run from a checkout would start the shims of whatever
    copy is installed in site-packages.
    """
    tree = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{path}" if path else tree}


class Launcher:
    """The ``moor-shim launcher`` child process that forks every shim."""

    def __init__(self, log_path: Path, rlimits: dict[int, tuple[int, int]]):
        self.log_path = log_path
        self.rlimits = rlimits
        self.process: asyncio.subprocess.Process | None = None
        self.lock = asyncio.Lock()
        self.unpacker = msgpack.Unpacker(raw=False)

    def _restore_limits(self) -> None:
        for kind, limits in self.rlimits.items():
            resource.setrlimit(kind, limits)

    async def start(self) -> None:
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "shim.main", "launcher",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log_fd,
                preexec_fn=self._restore_limits, cwd="/", env=_same_code_env())
        finally:
            os.close(log_fd)
        log.info("shim launcher started, pid %d", self.process.pid)

    async def spawn(self, config: ShimConfig) -> int:
        """Fork a shim for ``config`` and return its pid."""
        async with self.lock:
            if self.process is None or self.process.returncode is not None:
                log.warning("shim launcher is not running; starting it again")
                await self.start()
            self.process.stdin.write(msgpack.packb({"config": config.to_dict()}))
            await self.process.stdin.drain()
            reply = await self._read_reply()
        if "error" in reply:
            raise MoorError(f"failed to start a shim for container {config.container_id}: {reply['error']}")
        return int(reply["pid"])

    async def _read_reply(self) -> dict:
        while True:
            for reply in self.unpacker:
                return reply
            data = await self.process.stdout.read(65536)
            if not data:
                raise Unavailable("the shim launcher exited; see launcher.log in the state folder")
            self.unpacker.feed(data)

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 5)
        except asyncio.TimeoutError:
            log.warning("shim launcher %d did not exit; killing it", self.process.pid)
            self.process.kill()
            await self.process.wait()


class ShimClient:
    """A DEALER connection to one shim: requests, replies and pushed records."""

    def __init__(self, context: zmq.asyncio.Context, container_id: str, socket_path: Path,
                 on_records: Callable[[list[dict]], None]):
        self.container_id = container_id
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        # A new shim binds its socket a few milliseconds after the fork; the
        # default 100 ms reconnect interval would add that much to every start.
        self.socket.setsockopt(zmq.RECONNECT_IVL, 2)
        self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        self.socket.setsockopt(zmq.RCVHWM, 8192)
        self.socket.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        self.socket.connect(f"ipc://{socket_path}")
        self.on_records = on_records
        self.pending: dict[int, asyncio.Future] = {}
        self.rids = itertools.count(1)
        self.reader = asyncio.get_running_loop().create_task(self._read())
        self.closed = False

    async def call(self, op: str, timeout: float = 30.0, **args):
        """Send one request and return its result, or raise the shim's error."""
        rid = next(self.rids)
        future = asyncio.get_running_loop().create_future()
        self.pending[rid] = future
        try:
            await self.socket.send(protocol.pack(protocol.request(op, rid, **args)))
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(
                f"shim of container {self.container_id} did not respond to {op!r} within {timeout:g} s") from None
        finally:
            self.pending.pop(rid, None)

    def ack(self, seq: int) -> None:
        try:
            self.socket.send(protocol.pack({"op": "ack", "seq": seq}), zmq.NOBLOCK)
        except zmq.Again:
            log.debug("container %s: ack %d not sent; the shim will resend", self.container_id, seq)

    async def _read(self) -> None:
        while not self.closed:
            try:
                frames = await self.socket.recv_multipart()
            except (zmq.ZMQError, asyncio.CancelledError):
                return
            records = []
            while True:
                self._dispatch(frames, records)
                if not self.socket.getsockopt(_EVENTS) & _POLLIN or len(records) >= 512:
                    break
                frames = await self.socket.recv_multipart()
            if records:
                try:
                    self.on_records(records)
                except Exception:
                    log.exception("container %s: handling of shim records failed", self.container_id)
            # An awaited recv returns at once while messages are queued, so
            # without this a fast writer's shim would starve the API socket.
            await asyncio.sleep(0)

    def _dispatch(self, frames: list[bytes], records: list[dict]) -> None:
        if frames[0] == b"R" and len(frames) == 2:
            records.append(msgpack.unpackb(frames[1], raw=False))
            return
        try:
            message = protocol.unpack(frames[-1])
        except MoorError as exc:
            log.error("container %s: bad message from shim: %s", self.container_id, exc)
            return
        future = self.pending.get(message.get("rid"))
        if future is None or future.done():
            return
        if "err" in message:
            future.set_exception(protocol.error_from_wire(message["err"]))
        else:
            future.set_result(message.get("ok"))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.reader.cancel()
        self.socket.close(linger=0)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(Unavailable(f"connection to the shim of {self.container_id} closed"))


def process_start_time(pid: int) -> int:
    """Return the start time of ``pid`` in clock ticks, or 0 if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0
    if fields[0] == b"Z":
        return 0
    return int(fields[19])
