"""The shim of one container: runs it through the OCI runtime and serves moord.

The shim is a single-threaded poll loop over its ZeroMQ ROUTER socket, the
container's stdout and stderr pipes, the pipes of exec processes and the
SIGCHLD wake-up pipe.  It never waits on moord: output goes to the outbox
first and is sent only while moord's acknowledgements keep the window open.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import re
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from shim import console, oom, protocol
from shim.netns import has_new_network_namespace, loopback_up
from shim.outbox import Outbox
from shim.protocol import (FailedPrecondition, InvalidArgument, MoorError, NotFound,
                           NotImplementedOp, StartFailed)
from shim.reaper import Exit, Reaper, become_subreaper
from shim.runc import Runtime
from shim.sessions import Stream
from shim.stdio import ProcessStdio, open_stdio, receive_terminal

log = logging.getLogger(__name__)

READ_BYTES = 64 * 1024
INIT_DRAIN_SECONDS = 2.0
FINISHED_EXEC_STREAMS = 16
_SIGKILL = 9
EXEC_DRAIN_SECONDS = 0.1
# cgroup v1 can signal an OOM before the kill is counted, and one notice may stand for several kills,
# so the counter is read again every 0.1 s for 5 s after a notice.
# NOTE: a v1 kill that comes later than that without a notice of its own is reported when the init exits.
OOM_RECHECK_SECONDS = 0.1
OOM_RECHECKS = 50
_EXEC_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Plain ints for the receive path: combining pyzmq's enum constants runs enum code in Python.
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)
_NOBLOCK = int(zmq.NOBLOCK)


@dataclass(frozen=True)
class ShimConfig:
    """Everything a shim needs to run one container; sent by moord at spawn."""

    container_id: str
    bundle: Path
    folder: Path
    spool_dir: Path
    runtime: str = "runc"
    runtime_root: Path = Path("/run/moorage/runc")
    spool_limit: int = 256 * 1024 * 1024
    # Start the container right after creating it, in the same worker, instead
    # of waiting for a ``start`` request: one runtime call less to wait for.
    # moord sets it only for containers without stdin or a terminal.
    start: bool = False
    # Whether the runtime makes a new network namespace whose lo the shim must set up. None (from a
    # moord that does not set it) makes the shim read the bundle's config.json instead.
    loopback: bool | None = None
    # Interactive settings of the init: keep a stdin pipe open, or give it a terminal.
    stdin: bool = False
    tty: bool = False

    @property
    def socket_path(self) -> Path:
        return self.folder / "shim.sock"

    @classmethod
    def from_dict(cls, data: dict) -> "ShimConfig":
        paths = ("bundle", "folder", "spool_dir", "runtime_root")
        return cls(**{key: Path(value) if key in paths else value for key, value in data.items()})

    def to_dict(self) -> dict:
        return {key: str(value) if isinstance(value, Path) else value
                for key, value in self.__dict__.items()}


class Process:
    """The container's init or one exec process, with the pipes the shim reads."""

    def __init__(self, exec_id: str | None):
        self.exec_id = exec_id
        self.pid = 0
        self.pipes: dict[int, int] = {}
        self.exit: Exit | None = None
        self.drain_deadline = 0.0
        self.reported = False

    def __repr__(self) -> str:
        name = self.exec_id or "init"
        if self.exit is None:
            return f"<Process {name} pid={self.pid} running>"
        return f"<Process {name} pid={self.pid} {self.exit!r}>"


def run_in_worker(function, *args):
    """Run ``function(*args)`` in a short-lived child process and return its result.

    Work done once or rarely (calling the runtime, reading JSON, entering a
    namespace) runs in a child that exits afterwards, so the pages it touches
    are never copied into the long-lived shim.  Exceptions cross back too.
    """
    return finish_worker(start_worker(function, *args))


def start_worker(function, *args) -> tuple[int, int]:
    """Fork a worker that runs ``function(*args)``; return what ``finish_worker`` needs."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            try:
                outcome = (0, function(*args))
            except MoorError as exc:
                outcome = (1, exc.to_wire())
            except BaseException as exc:
                try:
                    outcome = (2, pickle.dumps(exc))
                except Exception:
                    outcome = (2, pickle.dumps(RuntimeError(repr(exc))))
            view = memoryview(pickle.dumps(outcome))
            while view:
                view = view[os.write(write_fd, view):]
        finally:
            os._exit(0)
    os.close(write_fd)
    return pid, read_fd


def finish_worker(worker: tuple[int, int]):
    """Wait for a worker from ``start_worker`` and return its result, or raise its error."""
    pid, read_fd = worker
    chunks = []
    try:
        while chunk := os.read(read_fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    if not chunks:
        raise MoorError("the shim's worker process exited without a result")
    kind, value = pickle.loads(b"".join(chunks))
    if kind == 0:
        return value
    if kind == 1:
        raise protocol.error_from_wire(value)
    raise pickle.loads(value)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Shim:
    """Serve loop and task service for one container."""

    def __init__(self, config: ShimConfig):
        self.config = config
        self.id = config.container_id
        self.folder = os.fspath(config.folder)
        self.runtime = Runtime(config.runtime, config.runtime_root, os.path.join(self.folder, "runtime.log"))
        self.outbox = Outbox(os.fspath(config.spool_dir), config.spool_limit)
        self.status = "creating"
        self.error: dict | None = None
        self.init = Process(None)
        self.execs: dict[str, Process] = {}
        self.peer: bytes | None = None
        self.waiters: list[tuple[bytes, object]] = []
        self.deleted = False
        self.fd_owner: dict[int, Process] = {}
        self.streams: dict[str, Stream] = {}
        self.start_waiter: tuple[bytes, object] | None = None
        self.attach_started = False
        self.console_count = 0
        # Plain attributes and not an object, to keep the code that every shim runs small.
        self.oom_fd = -1
        self.oom_folder = ""
        self.oom_reported = 0
        self.oom_recheck_at = 0.0
        self.oom_rechecks_left = 0

    # -- start-up ---------------------------------------------------------

    def run(self) -> int:
        """Create the container, then serve until moord deletes it."""
        log.info("shim starting for container %s (pid %d)", self.id, os.getpid())
        become_subreaper()
        self.reaper = Reaper()
        # The runtime's create runs in a worker while this process sets up its socket.
        creating = self._begin_create()
        self.context = zmq.Context(io_threads=1)
        self.socket = self._bind()
        self._finish_create(*creating)

        try:
            self._loop()
        finally:
            self.socket.close(linger=1000)
            self.context.term()
            self.outbox.close()
        log.info("shim for container %s stopped", self.id)
        return 0

    def _bind(self) -> zmq.Socket:
        socket = self.context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        socket.setsockopt(zmq.SNDHWM, 4096)
        socket.setsockopt(zmq.RCVHWM, 4096)
        socket.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        path = os.path.join(self.folder, "shim.sock")
        _unlink(path)
        socket.bind("ipc://" + path)
        os.chmod(path, 0o600)
        return socket

    def _begin_create(self) -> tuple[ProcessStdio | None, tuple[int, int] | None, StartFailed | None]:
        stdio = None
        self._open_oom_notifier()
        try:
            stdio = open_stdio(self.config.stdin, self.config.tty, os.path.join(self.folder, "tty.sock"))
            return stdio, start_worker(self._create_container, stdio.for_runtime(), stdio.console_path()), None
        except StartFailed as exc:
            return stdio, None, exc

    def _finish_create(self, stdio: ProcessStdio | None, worker: tuple[int, int] | None,
                       failure: StartFailed | None) -> None:
        init_pid, start_error, memory_cgroup = 0, None, None
        try:
            if failure is not None:
                raise failure
            init_pid, start_error, memory_cgroup = finish_worker(worker)
            receive_terminal(stdio)
        except StartFailed as exc:
            log.error("create of container %s failed: %s", self.id, exc.message)
            self.status, self.error = "failed", exc.to_wire()
            if stdio is not None:
                stdio.close_all()
            if init_pid:
                run_in_worker(self.runtime.delete, self.id, True)
            self._close_oom_notifier()
            return

        self._adopt_stdio(self.init, stdio)
        self.init.pid = init_pid
        self.status = "created"
        log.info("container %s created, init pid %d", self.id, self.init.pid)
        if memory_cgroup is None:
            self._close_oom_notifier()
        else:
            self.oom_folder = memory_cgroup
        if not self.config.start:
            return
        if start_error is None:
            self._mark_started()
        else:
            # moord reads "created" with an error in the state, and deletes the task.
            self.error = start_error
            log.error("start of container %s failed: %s", self.id, start_error.get("message"))

    def _adopt_stdio(self, process: Process, stdio: ProcessStdio) -> None:
        """Watch the output of a just-created process and open its interactive stream."""
        for stream, read_fd in stdio.outputs():
            self._watch_pipe(process, read_fd, stream)
        if stdio.interactive:
            key = process.exec_id or ""
            self.streams[key] = Stream(self.id, key, stdio.tty, stdio.take_stdin(), self._send_attached)
        stdio.close_child_ends()

    def _create_container(self, stdio: tuple[int, int, int],
                          console_socket: str | None) -> tuple[int, dict | None, str | None]:
        """Run the runtime's ``create`` (and ``start`` if configured) in a worker process.

        Returns the init pid, the start's error in its wire form when the
        start failed after the create worked, and the folder of the init's memory
        cgroup when the OOM notifier is registered with it.
        """
        pid_file = os.path.join(self.folder, "init.pid")
        self.runtime.create(self.id, self.config.bundle, pid_file, stdio, console_socket)
        with open(pid_file) as handle:
            pid = int(handle.read())
        read: list[dict] = []

        def spec() -> dict:
            # Parsing config.json costs the start about 1.5 ms, so only when moord's config does not say enough.
            if not read:
                read.append(self._read_spec())
            return read[0]
        self._setup_loopback(pid, spec)
        memory_cgroup = self._register_oom_notifier(pid, spec) if self.oom_fd >= 0 else None
        if self.config.start:
            try:
                self.runtime.start(self.id)
            except MoorError as exc:
                return pid, exc.to_wire(), memory_cgroup
        return pid, None, memory_cgroup

    def _mark_started(self) -> None:
        self.status = "running"
        log.info("container %s started", self.id)
        exit_ = self.reaper.claim(self.init.pid)
        if exit_ is not None:
            self._mark_exited(self.init, exit_)

    def _read_spec(self) -> dict:
        try:
            with open(os.path.join(self.config.bundle, "config.json"), "rb") as handle:
                return json.loads(handle.read())
        except (OSError, ValueError) as exc:
            log.error("container %s: could not read its config.json: %s", self.id, exc)
            return {}

    def _setup_loopback(self, pid: int, spec) -> None:
        """Set lo up when the runtime made a new network namespace; ``spec`` returns the spec if needed."""
        try:
            wanted = self.config.loopback
            if wanted is None:
                wanted = has_new_network_namespace(spec())
            if wanted:
                loopback_up(pid)
        except OSError as exc:
            log.error("container %s: could not bring up lo in its network namespace: %s", self.id, exc)

    # -- OOM kills --------------------------------------------------------

    def _open_oom_notifier(self) -> None:
        try:
            self.oom_fd = oom.new_notifier(oom.HOST_VERSION)
        except OSError as exc:
            log.error("container %s: failed to open an OOM notifier, so OOM kills go unreported: %s", self.id, exc)

    def _register_oom_notifier(self, pid: int, spec) -> str | None:
        """Register the inherited notifier with the init's memory cgroup and return its folder (in the create worker)."""
        memory_cgroup = oom.find_memory_cgroup(pid)
        if memory_cgroup is None:  # the init is already gone: the spec's path is the fallback
            memory_cgroup = oom.find_memory_cgroup(pid, (spec().get("linux") or {}).get("cgroupsPath"))
        if memory_cgroup is None or memory_cgroup[0] != oom.HOST_VERSION:
            log.warning("container %s: no cgroup %s memory controller found, so OOM kills go unreported",
                        self.id, oom.HOST_VERSION)
            return None
        try:
            oom.register(oom.HOST_VERSION, memory_cgroup[1], self.oom_fd)
        except OSError as exc:
            log.error("container %s: failed to watch %s for OOM kills, so they go unreported: %s",
                      self.id, memory_cgroup[1], exc)
            return None
        return memory_cgroup[1]

    def _on_oom_notice(self) -> None:
        oom.drain(self.oom_fd, oom.HOST_VERSION)
        found = self._report_oom_kills()
        if oom.HOST_VERSION == oom.V2:
            return  # memory.events changes again for each kill that the kernel counts
        if not found and not os.path.isdir(self.oom_folder):
            self._stop_oom_watch()  # the cgroup was removed, which also wakes the eventfd
            return
        self.oom_rechecks_left = OOM_RECHECKS
        self.oom_recheck_at = time.monotonic() + OOM_RECHECK_SECONDS

    def _recheck_oom(self) -> None:
        if time.monotonic() < self.oom_recheck_at:
            return
        self.oom_rechecks_left -= 1
        self.oom_recheck_at = time.monotonic() + OOM_RECHECK_SECONDS
        self._report_oom_kills()

    def _report_oom_kills(self) -> int:
        """Journal one durable record per OOM kill that the cgroup's counter shows since the last check."""
        count = oom.read_oom_kills(oom.HOST_VERSION, self.oom_folder)
        if count is None or count <= self.oom_reported:
            return 0
        now = time.time()
        for number in range(self.oom_reported + 1, count + 1):
            log.warning("container %s: the OOM killer ended a process in its cgroup (kill %d)", self.id, number)
            self.outbox.append({"kind": protocol.RECORD_OOM, "count": number, "at": now, "ts": now}, durable=True)
        fresh, self.oom_reported = count - self.oom_reported, count
        return fresh

    def _stop_oom_watch(self) -> None:
        """Report the kills not reported yet and stop watching, once the cgroup's processes are gone."""
        if self.oom_fd < 0:
            return
        self._report_oom_kills()
        self._close_oom_notifier()

    def _close_oom_notifier(self) -> None:
        if self.oom_fd >= 0:
            os.close(self.oom_fd)
        self.oom_fd = -1
        self.oom_rechecks_left = 0

    def _watch_pipe(self, process: Process, fd: int, stream: int) -> None:
        process.pipes[fd] = stream
        self.fd_owner[fd] = process

    # -- the loop ---------------------------------------------------------

    def _loop(self) -> None:
        while not self.deleted:
            poller = zmq.Poller()
            poller.register(self.socket, zmq.POLLIN)
            poller.register(self.reaper.read_fd, zmq.POLLIN)
            for fd in self.fd_owner:
                poller.register(fd, zmq.POLLIN)
            if self.oom_fd >= 0:
                poller.register(self.oom_fd, zmq.POLLIN)
            writers = {stream.stdin_fd: stream for stream in self.streams.values() if stream.wants_write()}
            for fd in writers:
                poller.register(fd, zmq.POLLOUT)

            for item, _ in poller.poll(self._poll_timeout()):
                if item is self.socket:
                    self._receive_all()
                elif item == self.reaper.read_fd:
                    self.reaper.drain_wakeups()
                elif item in writers:
                    writers[item].flush_stdin()
                elif item == self.oom_fd:
                    self._on_oom_notice()
                elif item in self.fd_owner:
                    self._read_pipe(item)
            if self.oom_rechecks_left:
                self._recheck_oom()
            self._collect_exits()
            self._finish_exits()
            self._pump()

    def _poll_timeout(self) -> int:
        deadlines = [process.drain_deadline for process in self._processes()
                     if process.exit is not None and not process.reported]
        if self.oom_rechecks_left:
            deadlines.append(self.oom_recheck_at)
        if not deadlines:
            return 1000
        return max(0, int((min(deadlines) - time.monotonic()) * 1000) + 1)

    def _processes(self):
        yield self.init
        yield from self.execs.values()

    def _read_pipe(self, fd: int) -> bool:
        """Move one read of output to the outbox; return whether data came."""
        process = self.fd_owner[fd]
        try:
            data = os.read(fd, READ_BYTES)
        except BlockingIOError:
            return False
        except OSError as exc:
            # A pty master reads EIO once every slave is closed: the terminal's end of file.
            if exc.errno != errno.EIO:
                log.error("container %s: reading output of %s failed: %s", self.id, process.exec_id or "init", exc)
            data = b""
        if not data:
            self._close_pipe(fd)
            return False
        stream = self.streams.get(process.exec_id or "")
        if stream is not None:
            stream.output(process.pipes[fd], data)
            if process.exec_id:
                return True  # interactive exec output goes only to its clients, as docker does
        record = {"kind": protocol.RECORD_OUTPUT, "stream": process.pipes[fd],
                  "exec": process.exec_id, "data": data, "ts": time.time()}
        self.outbox.append(record)
        return True

    def _close_pipe(self, fd: int) -> None:
        process = self.fd_owner.pop(fd)
        process.pipes.pop(fd, None)
        os.close(fd)

    # -- exits ------------------------------------------------------------

    def _collect_exits(self) -> None:
        for exit_ in self.reaper.reap():
            process = self._process_by_pid(exit_.pid)
            if process is None:
                self.reaper.keep(exit_)
                continue
            self._mark_exited(process, exit_)

    def _process_by_pid(self, pid: int) -> Process | None:
        for process in self._processes():
            if process.pid == pid and process.exit is None:
                return process
        return None

    def _mark_exited(self, process: Process, exit_: Exit) -> None:
        process.exit = exit_
        grace = EXEC_DRAIN_SECONDS if process.exec_id else INIT_DRAIN_SECONDS
        process.drain_deadline = time.monotonic() + grace
        log.info("container %s: process %s exited with %d", self.id, process.exec_id or "init", exit_.code)

    def _finish_exits(self) -> None:
        """Report exits whose output is drained; exec exits before the init's."""
        now = time.monotonic()
        for process in list(self.execs.values()):
            if process.exit is not None and not process.reported and self._drained(process, now):
                self._report_exit(process, protocol.RECORD_EXEC_EXIT)

        init = self.init
        if init.exit is not None and not init.reported and self._drained(init, now):
            if all(p.reported or p.exit is None and not self._alive(p.pid) for p in self.execs.values()):
                # The kernel counts a kill before the victim exits, so this read includes a kill of the init.
                self._stop_oom_watch()
                self._report_exit(init, protocol.RECORD_EXIT)
                self.status = "stopped"
                self._answer_waiters()

    def _drained(self, process: Process, now: float) -> bool:
        self._read_available(process)
        if process.pipes and now < process.drain_deadline:
            return False
        for fd in list(process.pipes):
            self._close_pipe(fd)
        return True

    def _read_available(self, process: Process) -> None:
        for fd in list(process.pipes):
            for _ in range(64):
                if not self._read_pipe(fd):
                    break

    @staticmethod
    def _alive(pid: int) -> bool:
        if pid <= 0:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def _report_exit(self, process: Process, kind: str) -> None:
        exit_ = process.exit
        record = {"kind": kind, "exec": process.exec_id, "pid": exit_.pid, "code": exit_.code,
                  "signal": exit_.signal, "at": exit_.at, "ts": time.time()}
        self.outbox.append(record, durable=True)
        process.reported = True
        stream = self.streams.get(process.exec_id or "")
        if stream is not None:
            stream.finish(exit_.code, exit_.signal)
            self._forget_finished_streams()

    def _forget_finished_streams(self) -> None:
        """Keep the rings of the last few exited execs only, for clients that attach late."""
        finished = [key for key, stream in self.streams.items() if key and stream.exit is not None]
        for key in finished[:-FINISHED_EXEC_STREAMS]:
            del self.streams[key]

    # -- moord messages ---------------------------------------------------

    def _receive_all(self) -> None:
        while self.socket.getsockopt(_EVENTS) & _POLLIN:
            try:
                identity, body = self.socket.recv_multipart(_NOBLOCK)[:2]
            except zmq.Again:
                return
            except ValueError:
                continue
            self._handle(identity, body)

    def _handle(self, identity: bytes, body: bytes) -> None:
        rid = None
        try:
            message = protocol.unpack(body)
            rid = message.get("rid")
            handler = self.HANDLERS.get(message.get("op"))
            if handler is None:
                raise NotImplementedOp(f"unknown shim operation {message.get('op')!r}")
            result = handler(self, identity, message)
        except MoorError as exc:
            self._send(identity, protocol.error_reply(rid, exc))
            return
        except Exception as exc:  # the shim must outlive any bad request
            log.exception("container %s: request %r failed", self.id, rid)
            self._send(identity, protocol.error_reply(rid, MoorError(f"internal shim error: {exc}")))
            return
        if result is not _DEFERRED and rid is not None:
            self._send(identity, protocol.reply(rid, result))

    def _send(self, identity: bytes, message: dict) -> bool:
        try:
            self.socket.send_multipart([identity, protocol.pack(message)], zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError) as exc:
            log.warning("container %s: could not send to moord: %s", self.id, exc)
            return False
        return True

    def _pump(self) -> None:
        """Send outbox records to the subscribed moord while the window allows."""
        if self.peer is None:
            return
        for seq, body in self.outbox.sendable():
            try:
                self.socket.send_multipart([self.peer, b"R", body], zmq.NOBLOCK)
            except zmq.Again:
                self.outbox.unsend(seq)
                return
            except zmq.ZMQError as exc:
                log.info("container %s: moord went away (%s); spooling output", self.id, exc)
                self.outbox.unsend(seq)
                self.peer = None
                return

    def state(self) -> dict:
        init = self.init
        result = {"id": self.id, "status": self.status, "pid": init.pid, "shim_pid": os.getpid(),
                  "error": self.error, "next_seq": self.outbox.next_seq, "acked_seq": self.outbox.acked_seq,
                  "lost_bytes": self.outbox.lost_total, "version": protocol.VERSION,
                  "execs": {key: {"pid": p.pid, "running": p.exit is None} for key, p in self.execs.items()},
                  "sessions": {key or "init": stream.describe() for key, stream in self.streams.items()},
                  "features": [protocol.FEATURE_SESSIONS]}
        if init.exit is not None:
            result.update(exit_code=init.exit.code, signal=init.exit.signal, exited_at=init.exit.at)
        return result

    def op_subscribe(self, identity: bytes, message: dict) -> dict:
        self.peer = identity
        self.outbox.rewind(int(message.get("from", 1)))
        log.info("container %s: moord subscribed from record %d", self.id, self.outbox.send_seq)
        return self.state()

    def op_ack(self, identity: bytes, message: dict) -> None:
        self.outbox.ack(int(message["seq"]))

    def op_state(self, identity: bytes, message: dict) -> dict:
        return self.state()

    def op_start(self, identity: bytes, message: dict) -> dict:
        if self.status != "created":
            raise FailedPrecondition(f"cannot start container {self.id}: it is {self.status}, not created")
        if message.get("wait_attach") and not self.attach_started:
            # `moor run -i/-t` attaches before the start, so that it receives the first byte of output.
            self.start_waiter = (identity, message.get("rid"))
            log.info("container %s: start waits for the interactive client to attach", self.id)
            return _DEFERRED
        return self._start_init()

    def _start_init(self) -> dict:
        run_in_worker(self.runtime.start, self.id)
        self._mark_started()
        return {"pid": self.init.pid}

    def op_kill(self, identity: bytes, message: dict) -> None:
        signal_number = int(message.get("signal", 15))
        exec_id = message.get("exec")
        if exec_id:
            process = self._exec(exec_id)
            if process.exit is None:
                os.kill(process.pid, signal_number)
            return None
        if self.status not in ("created", "running"):
            raise FailedPrecondition(f"cannot kill container {self.id}: it is {self.status}")
        run_in_worker(self.runtime.kill, self.id, signal_number, bool(message.get("all", False)))
        return None

    def _exec(self, exec_id: str) -> Process:
        process = self.execs.get(exec_id)
        if process is None:
            raise NotFound(f"exec {exec_id!r} not found in container {self.id}")
        return process

    def op_exec(self, identity: bytes, message: dict) -> dict:
        exec_id = str(message.get("exec", ""))
        if not _EXEC_ID.match(exec_id):
            raise InvalidArgument(f"invalid exec id {exec_id!r}: use letters, digits, '_', '.', '-'")
        if exec_id in self.execs:
            raise InvalidArgument(f"exec id {exec_id!r} is already used in container {self.id}")
        if self.status != "running" or self.init.exit is not None:
            raise FailedPrecondition(f"cannot exec in container {self.id}: it is {self.status}, not running")
        return self._start_exec(exec_id, message["process"], bool(message.get("stdin")))

    def _start_exec(self, exec_id: str, process_spec: dict, stdin: bool = False) -> dict:
        tty = bool(process_spec.get("terminal"))
        # Numbered, not named by exec id: a unix socket path must fit in 107 bytes.
        self.console_count += 1
        stdio = open_stdio(stdin, tty, os.path.join(self.folder, f"tty{self.console_count}.sock"))
        process = Process(exec_id)
        try:
            process.pid = run_in_worker(self._exec_process, exec_id, process_spec, stdio.for_runtime(),
                                        stdio.console_path())
            receive_terminal(stdio)
        except StartFailed:
            if process.pid:
                os.kill(process.pid, _SIGKILL)
            stdio.close_all()
            raise

        self.execs[exec_id] = process
        self._adopt_stdio(process, stdio)
        exit_ = self.reaper.claim(process.pid)
        if exit_ is not None:
            self._mark_exited(process, exit_)
        log.info("container %s: exec %s started as pid %d", self.id, exec_id, process.pid)
        return {"pid": process.pid}

    def _exec_process(self, exec_id: str, process_spec: dict, stdio: tuple[int, int, int],
                      console_socket: str | None) -> int:
        """Run the runtime's ``exec --detach`` and return the pid (in a worker process)."""
        folder = os.path.join(self.folder, "execs")
        os.makedirs(folder, exist_ok=True)
        process_file = os.path.join(folder, f"{exec_id}.json")
        pid_file = os.path.join(folder, f"{exec_id}.pid")
        with open(process_file, "w") as handle:
            handle.write(json.dumps(process_spec))
        try:
            self.runtime.exec(self.id, process_file, pid_file, stdio, console_socket)
        finally:
            _unlink(process_file)
        with open(pid_file) as handle:
            pid = int(handle.read())
        _unlink(pid_file)
        return pid

    def op_wait(self, identity: bytes, message: dict):
        if self.status in ("stopped", "failed"):
            return self.state()
        self.waiters.append((identity, message.get("rid")))
        return _DEFERRED

    def _answer_waiters(self) -> None:
        for identity, rid in self.waiters:
            self._send(identity, protocol.reply(rid, self.state()))
        self.waiters.clear()

    def op_delete(self, identity: bytes, message: dict) -> dict:
        running = self.status in ("created", "running") and self.init.exit is None
        if running and not message.get("force"):
            raise FailedPrecondition(f"cannot delete container {self.id}: it is {self.status}; stop it first")
        if self.status != "failed":
            run_in_worker(self.runtime.delete, self.id, running)
        self.deleted = True
        self._stop_oom_watch()
        for stream in self.streams.values():
            stream.close_stdin()
        log.info("container %s deleted", self.id)
        return {"deleted": True}

    # -- interactive sessions (clients attach to the shim directly) ---------

    def _send_attached(self, identity: bytes, message: dict) -> bool:
        message["v"] = protocol.VERSION
        try:
            self.socket.send_multipart([identity, protocol.pack(message)], zmq.NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            log.info("container %s: an attached client went away (%s)", self.id, exc)
            for stream in self.streams.values():
                stream.detach(identity)
            return False
        return True

    def _stream(self, message: dict, create: bool = False) -> tuple[Process, Stream]:
        """Return the process and session named by ``exec``; ``create`` opens one for a plain init."""
        key = str(message.get("exec") or "")
        process = self._exec(key) if key else self.init
        stream = self.streams.get(key)
        if stream is not None:
            return process, stream
        if key and process.reported:
            raise FailedPrecondition(f"exec {key} in container {self.id} exited with {process.exit.code}; "
                                     "its session is gone")
        if key or not create:
            raise FailedPrecondition(f"{_describe(self.id, key)} was started without -i or -t, so it takes "
                                     "no input and has no terminal")
        # The init of a container without -i or -t still has output to follow.
        stream = self.streams[key] = Stream(self.id, key, False, None, self._send_attached)
        if process.reported:
            stream.exit = {"code": process.exit.code, "signal": process.exit.signal}
        return process, stream

    def op_attach(self, identity: bytes, message: dict) -> dict:
        process, stream = self._stream(message, create=True)
        since = message.get("since")
        token = str(message.get("token") or identity.hex())
        since = None if since is None else _offset(message, "since")
        result = stream.attach(identity, token, since, bool(message.get("stdin")))
        log.info("container %s: client attached to %s (%d attached)", self.id, process.exec_id or "init",
                 len(stream.clients))
        if message.get("start"):
            self._release_start()
        return dict(result, pid=process.pid, status=self.status)

    def _release_start(self) -> None:
        self.attach_started = True
        if self.start_waiter is None:
            return
        identity, rid = self.start_waiter
        self.start_waiter = None
        try:
            reply = protocol.reply(rid, self._start_init())
        except MoorError as exc:
            reply = protocol.error_reply(rid, exc)
        self._send(identity, reply)

    def op_detach(self, identity: bytes, message: dict) -> None:
        self._stream(message)[1].detach(identity)
        log.info("container %s: client detached from %s", self.id, message.get("exec") or "init")

    def op_attach_ack(self, identity: bytes, message: dict) -> None:
        self._stream(message)[1].ack(identity, _offset(message, "off"))

    def op_stdin(self, identity: bytes, message: dict) -> None:
        data = message.get("d")
        if not isinstance(data, bytes) or len(data) > protocol.MAX_CHUNK_BYTES:
            raise InvalidArgument("stdin data must be bytes of at most "
                                  f"{protocol.MAX_CHUNK_BYTES} per message")
        self._stream(message)[1].write_stdin(identity, _offset(message, "off"), data)

    def op_stdin_close(self, identity: bytes, message: dict) -> None:
        self._stream(message)[1].request_close()

    def op_resize(self, identity: bytes, message: dict) -> None:
        rows, columns = console.check_size(message.get("rows"), message.get("cols"))
        key = str(message.get("exec") or "")
        stream = self.streams.get(key)
        if key and key not in self.execs:
            raise NotFound(f"exec {key!r} not found in container {self.id}")
        if stream is None or not stream.tty:
            raise FailedPrecondition(f"{_describe(self.id, key)} has no terminal to resize; start it with -t")
        if stream.stdin_fd is None:
            raise FailedPrecondition(f"the terminal of {_describe(self.id, key)} is closed because its process exited")
        console.set_window_size(stream.stdin_fd, rows, columns)
        return None

    HANDLERS = {
        "subscribe": op_subscribe, "ack": op_ack, "state": op_state, "start": op_start,
        "kill": op_kill, "exec": op_exec, "wait": op_wait, "delete": op_delete, "resize": op_resize,
        "attach": op_attach, "detach": op_detach, "attach_ack": op_attach_ack, "stdin": op_stdin,
        "stdin_close": op_stdin_close,
    }


_DEFERRED = object()


def _describe(container_id: str, exec_id: str) -> str:
    return f"exec {exec_id} in container {container_id}" if exec_id else f"container {container_id}"


def _offset(message: dict, key: str) -> int:
    """Return a byte offset field of a session message (0 when it is missing)."""
    value = message.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument(f"invalid {key} {value!r}: a byte offset must be an integer of 0 or more")
    return value
