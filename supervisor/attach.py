"""The client side of an interactive session: ``run -i/-t``, ``exec -i/-t`` and ``attach``.

The client talks to the container's shim directly (its socket path comes
from moord), because the session lives in the shim: a restart of moord does
not touch it.  One loop multiplexes the shim's socket, the client's stdin, a
wake-up pipe for signals and, for ``run``, moord's pending reply.

Messages to the shim: ``attach``, ``detach``, ``attach_ack`` (output written up
to an offset), ``stdin`` (bytes at an offset, so that a chunk sent again is
written once), ``stdin_close``, ``resize`` and ``kill``.  Messages from the
shim carry ``att`` and one of ``d`` (output at ``off``), ``in`` (stdin written
up to an offset) or ``exit``.
"""

from __future__ import annotations

import itertools
import logging
import os
import select
import signal
import time
import uuid

from shim import protocol
from shim.protocol import FailedPrecondition, InvalidArgument, MoorError, NotFound, NotImplementedOp, Unavailable
from supervisor import terminal, zmtp

log = logging.getLogger(__name__)

STDIN_WINDOW_BYTES = 256 * 1024
READ_BYTES = 32 * 1024
CONNECT_SECONDS = 30.0
RECONNECT_SECONDS = 5.0
REMOVAL_SECONDS = 60.0
# Signals that --sig-proxy passes to the process; SIGWINCH is handled as a resize instead.
PROXIED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
DETACHED = object()


def connect_shim(path: str, timeout: float = CONNECT_SECONDS, pending=None) -> zmtp.Dealer:
    """Connect to a shim's socket, waiting while the shim starts.

    ``pending`` is called between attempts; it may raise to stop waiting
    (moord reported an error).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return zmtp.Dealer(path)
        except (FileNotFoundError, ConnectionRefusedError, zmtp.ProtocolError) as exc:
            if time.monotonic() > deadline:
                raise Unavailable(f"could not connect to the container's shim at {path} within "
                                  f"{timeout:g} s: {exc}") from None
        if pending is not None:
            pending(0.01)
        else:
            time.sleep(0.01)


class Session:
    """One attached client: forwards stdin, writes output, returns the exit code."""

    def __init__(self, shim_path: str, exec_id: str | None = None, *, tty: bool, stdin: bool,
                 detach_keys: bytes | None, sig_proxy: bool, close_stdin_on_eof: bool):
        self.shim_path = shim_path
        self.exec_id = exec_id or ""
        self.tty = tty
        self.forward_stdin = stdin
        # As in docker, only a terminal session watches for detach keys, so piped binary data passes unchanged.
        self.detector = terminal.DetachDetector(detach_keys) if detach_keys and stdin and tty else None
        self.sig_proxy = sig_proxy and not tty
        self.close_stdin_on_eof = close_stdin_on_eof
        self.token = uuid.uuid4().hex
        self.rids = itertools.count(1)
        self.shim: zmtp.Dealer | None = None
        self.out_offset: int | None = None
        self.stdin_sent = 0
        self.stdin_written = 0
        self.stdin_open = stdin
        self.dropped = 0
        self.signals: list[int] = []
        self.moord = None
        self.moord_rid = None
        self.moord_result: dict | None = None
        self.exit_code: int | None = None

    # -- set-up -------------------------------------------------------------

    def follow_moord(self, client, rid: int) -> None:
        """Also watch moord's reply to ``rid``; an error there ends the session."""
        self.moord, self.moord_rid = client, rid

    def attach(self, since: int | None, start: bool = False) -> dict:
        """Connect and attach; ``since=0`` requests the output from the first byte."""
        self.shim = connect_shim(self.shim_path, pending=self._poll_moord)
        rid = next(self.rids)
        self._send("attach", rid=rid, since=since, token=self.token, stdin=self.forward_stdin, start=start)
        try:
            result = self._wait_reply(rid)
        except NotImplementedOp:
            raise FailedPrecondition("the container's shim is from an older release of moorage and has no "
                                     "interactive sessions: restart the container to attach to it") from None
        if self.out_offset is None:
            self.out_offset = result["offset"] if since is None else since
        self.stdin_sent = self.stdin_written = result["stdin_offset"]
        if result.get("exit") is not None:
            # The process exited before this client attached; its output came with the reply.
            self.exit_code = int(result["exit"]["code"])
        return result

    def _wait_reply(self, rid: int):
        while True:
            self._poll_moord(0)
            if not self.shim.poll(0.05):
                continue
            message = protocol.unpack(self.shim.recv())
            if message.get("rid") == rid:
                if "err" in message:
                    raise protocol.error_from_wire(message["err"])
                return message["ok"]
            self._on_shim_message(message)

    # -- the loop -----------------------------------------------------------

    def run(self) -> int | object:
        """Serve the session until the process exits (its code) or the user detaches (``DETACHED``)."""
        read_signal, write_signal = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        previous = self._install_signals(write_signal)
        try:
            if self.exit_code is not None:
                return self.exit_code
            if self.tty:
                self._send_size()
            return self._loop(read_signal)
        finally:
            signal.set_wakeup_fd(-1)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(read_signal)
            os.close(write_signal)

    def _install_signals(self, write_fd: int) -> dict:
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        handled = set(PROXIED_SIGNALS) if self.sig_proxy else {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        if self.tty:
            handled.add(signal.SIGWINCH)
        return {signum: signal.signal(signum, lambda number, frame: self.signals.append(number))
                for signum in handled}

    def _loop(self, read_signal: int) -> int | object:
        while True:
            readers = [self.shim.sock, read_signal]
            if self.stdin_open and self.stdin_sent - self.stdin_written < STDIN_WINDOW_BYTES:
                readers.append(0)
            if self.moord is not None:
                readers.append(self.moord.dealer.sock)
            buffered = bool(self.shim.buffer) or (self.moord is not None and bool(self.moord.dealer.buffer))
            ready = set(self._select(readers, 0 if buffered or self.signals else 1.0))

            if read_signal in ready or self.signals:
                outcome = self._handle_signals(read_signal)
                if outcome is not None:
                    return outcome
            if self.shim.sock in ready or self.shim.buffer:
                outcome = self._read_shim()
                if outcome is not None:
                    return outcome
            if 0 in ready and self._read_stdin():
                return DETACHED
            if self.moord is not None and (self.moord.dealer.sock in ready or self.moord.dealer.buffer):
                self._poll_moord(0)

    @staticmethod
    def _select(readers: list, timeout: float) -> list:
        try:
            return select.select(readers, [], [], timeout)[0]
        except InterruptedError:
            return []

    def _read_shim(self):
        while True:
            try:
                message = protocol.unpack(self.shim.recv())
            except zmtp.ProtocolError:
                return self._reconnect()
            outcome = self._on_shim_message(message)
            if outcome is not None or not self.shim.poll(0):
                return outcome

    def _on_shim_message(self, message: dict):
        if "d" in message:
            self._write_output(message)
        elif "in" in message:
            self.stdin_written = max(self.stdin_written, int(message["in"]))
        elif "exit" in message:
            self._note_dropped(message.get("dropped", 0))
            return int(message["exit"]["code"])
        return None

    def _write_output(self, message: dict) -> None:
        self._note_dropped(message.get("dropped", 0))
        data = message["d"]
        fd = 2 if message.get("s") == protocol.STDERR and not self.tty else 1
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        self.out_offset = int(message["off"]) + len(data)
        self._send("attach_ack", off=self.out_offset)

    def _note_dropped(self, dropped: int) -> None:
        if dropped > self.dropped:
            log.warning("%d bytes of output were dropped because this client read too slowly", dropped)
            self.dropped = dropped

    def _read_stdin(self) -> bool:
        """Forward what the user typed; return True when the detach sequence was typed."""
        data = os.read(0, READ_BYTES)
        if not data:
            self.stdin_open = False
            if self.close_stdin_on_eof:
                self._send("stdin_close", off=self.stdin_sent)
            return False
        detached = False
        if self.detector is not None:
            data, detached = self.detector.feed(data)
        if data:
            self._send("stdin", off=self.stdin_sent, d=data)
            self.stdin_sent += len(data)
        if detached:
            self._send("detach")
        return detached

    def _handle_signals(self, read_signal: int):
        try:
            while os.read(read_signal, 512):
                pass
        except BlockingIOError:
            pass
        pending, self.signals = self.signals, []
        for signum in pending:
            if signum == signal.SIGWINCH:
                self._send_size()
            elif self.sig_proxy:
                self._send("kill", rid=next(self.rids), signal=int(signum))
            else:
                # Without a proxy, the client stops; the process keeps running in its shim.
                self._send("detach")
                return 128 + signum
        return None

    def _send_size(self) -> None:
        size = terminal.window_size(1) or terminal.window_size(0)
        if size is not None:
            self._send("resize", rid=next(self.rids), rows=size[0], cols=size[1])

    # -- connections ----------------------------------------------------------

    def _send(self, op: str, rid=None, **args) -> None:
        message = {"v": protocol.VERSION, "op": op, "exec": self.exec_id, **args}
        if rid is not None:
            message["rid"] = rid
        try:
            self.shim.send(protocol.pack(message))
        except OSError as exc:
            log.debug("send of %s to the shim failed: %s", op, exc)

    def _reconnect(self):
        """Attach again after the shim's connection broke, from the last offset written."""
        self.shim.close()
        # A shim goes away when its task is deleted, for example after a failed start.
        # moord's reply then contains the reason.
        self.wait_moord(timeout=2)
        if self.moord_result is not None:
            return int(self.moord_result.get("exit_code", 0))
        try:
            self.shim = connect_shim(self.shim_path, RECONNECT_SECONDS)
            rid = next(self.rids)
            self._send("attach", rid=rid, since=self.out_offset, token=self.token, stdin=self.forward_stdin)
            result = self._wait_reply(rid)
        except MoorError:
            return self._exit_from_moord()
        self.stdin_written = result["stdin_offset"]
        if result.get("exit") is not None and not self.shim.poll(0):
            return int(result["exit"]["code"])
        return None

    def _exit_from_moord(self):
        if self.moord_result is not None:
            return int(self.moord_result.get("exit_code", 0))
        raise Unavailable(f"lost the connection to the container's shim at {self.shim_path}; "
                          "run `moor attach` to attach again or `moor inspect` to see its state")

    def _poll_moord(self, timeout: float) -> None:
        """Read moord's messages for the pending request; raise its error; drop a lost connection."""
        if self.moord is None:
            if timeout:
                time.sleep(timeout)
            return
        try:
            while self.moord.dealer.poll(timeout):
                timeout = 0
                message = protocol.unpack(self.moord.dealer.recv())
                if message.get("rid") != self.moord_rid or "out" in message:
                    continue
                if "err" in message:
                    raise protocol.error_from_wire(message["err"])
                self.moord_result = message.get("ok") or {}
                self.moord = None
                return
        except zmtp.ProtocolError:
            # moord restarted; the session goes on with the shim alone.
            log.info("lost the connection to moord; the session continues with the shim")
            self.moord = None

    def wait_moord(self, timeout: float) -> dict | None:
        """Wait for moord's final reply (after ``--rm`` removed the container); None if moord went away."""
        deadline = time.monotonic() + timeout
        while self.moord is not None and time.monotonic() < deadline:
            self._poll_moord(0.1)
        return self.moord_result

    def close(self) -> None:
        if self.shim is not None:
            self.shim.close()


# -- the interactive commands of `moor` ----------------------------------------------------

def interactive_request(args, attached: bool) -> dict:
    """Return the request fields of -i and -t; -t takes the size of moor's own terminal."""
    if attached and args.tty and args.interactive and not terminal.is_terminal(0):
        raise InvalidArgument("the input device is not a terminal: run without -t, or from a terminal")
    request = {"tty": args.tty, "open_stdin": args.interactive}
    size = None
    if args.tty:
        size = terminal.window_size(1) or terminal.window_size(0)
    if size is not None:
        request["console_size"] = list(size)
    return request


def run_interactive(client, request: dict, args) -> int:
    """Run ``moor run -i/-t``: create, attach before the start, return the exit code (0 on detach)."""
    keys = terminal.parse_detach_keys(args.detach_keys)
    rid = client.send("run", **request)
    container_id, address = _wait_attach_address(client, rid)
    session = Session(address, tty=args.tty, stdin=args.interactive, detach_keys=keys,
                      sig_proxy=args.sig_proxy, close_stdin_on_eof=True)
    session.follow_moord(client, rid)
    code = _serve_session(session, since=0, start=True)
    if code is DETACHED:
        return 0
    if args.rm and session.wait_moord(timeout=REMOVAL_SECONDS) is None:
        _wait_removed(args.state, container_id)
    return code


def _wait_removed(state, container_id: str) -> None:
    """Wait until a restarted moord has removed the container, as ``--rm`` promises on return."""
    from supervisor.client import Client

    deadline = time.monotonic() + REMOVAL_SECONDS
    while time.monotonic() < deadline:
        try:
            client = Client(state)
            try:
                client.call("inspect", timeout=10, id=container_id)
            finally:
                client.close()
        except NotFound:
            return
        except MoorError as exc:
            log.debug("waiting for moord to remove %s: %s", container_id, exc.message)
        time.sleep(0.1)
    log.warning("container %s was not removed within %g s", container_id[:12], REMOVAL_SECONDS)


def _wait_attach_address(client, rid: int) -> str:
    """Return the container id and the shim's address from the first message of an interactive run."""
    while True:
        client.dealer.poll(None)
        message = protocol.unpack(client.dealer.recv())
        if message.get("rid") != rid:
            continue
        if "err" in message:
            raise protocol.error_from_wire(message["err"])
        first = message.get("out", {})
        if "attach" in first:
            return first["id"], first["attach"]
        raise FailedPrecondition(
            f"moord is older than this moor and started container {first.get('id', '')[:12]} without "
            "stdin or a terminal: upgrade moord to use -i and -t")


def attach_container(client, args) -> int:
    """Run ``moor attach``: follow the container's main process until it exits (its code) or a detach (0)."""
    keys = terminal.parse_detach_keys(args.detach_keys)
    info = client.call("attach", id=args.container)
    session = Session(info["attach"], tty=info["tty"], stdin=info["open_stdin"] and not args.no_stdin,
                      detach_keys=keys, sig_proxy=args.sig_proxy, close_stdin_on_eof=False)
    code = _serve_session(session, since=None)
    return 0 if code is DETACHED else code


def exec_interactive(client, args, env: list[str]) -> int:
    """Run ``moor exec -i/-t``: start the exec, attach from its first byte, return its exit code."""
    keys = terminal.parse_detach_keys(args.detach_keys)
    result = client.call("exec", id=args.container, args=list(args.command), env=env, workdir=args.workdir,
                         user=args.user, **interactive_request(args, attached=True))
    session = Session(result["attach"], result["exec_id"], tty=args.tty, stdin=args.interactive,
                      detach_keys=keys, sig_proxy=False, close_stdin_on_eof=True)
    code = _serve_session(session, since=0)
    return 0 if code is DETACHED else code


def _serve_session(session: Session, since: int | None, start: bool = False):
    """Attach, put the terminal in raw mode for -it, run the session and always restore the terminal."""
    raw = None
    try:
        if session.tty and session.forward_stdin and terminal.is_terminal(0):
            raw = terminal.RawMode(0).__enter__()
        session.attach(since, start)
        return session.run()
    finally:
        if raw is not None:
            raw.restore()
        session.close()
