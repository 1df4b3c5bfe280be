"""Interactive containers: `moor run -i/-t`, `moor exec -i/-t` and `moor attach`.

The CLI runs on a real pty pair, as in a user's terminal.  The test types
into the master, reads what the client prints, and resizes the master, after
which the kernel sends SIGWINCH to the client.  Every
test uses real runc and a private moord through the `moord` fixture.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import uuid

import pytest

from conftest import REPO, wait_until
from shim import protocol
from shim.protocol import InvalidArgument
from supervisor import zmtp
from supervisor.ocispec import RunOptions, build_spec
from supervisor.terminal import DetachDetector, parse_detach_keys

READ_TIMEOUT = 30
CTRL_P_CTRL_Q = b"\x10\x11"


def _take_controlling_terminal() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """The moor CLI on a pty pair: the test uses the master, the client gets the slave."""

    def __init__(self, moord, *args: str, rows: int = 24, columns: int = 80):
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.attributes = termios.tcgetattr(self.slave)
        command = [sys.executable, "-m", "supervisor.cli", "--state", str(moord.state), *args]
        self.process = subprocess.Popen(command, stdin=self.slave, stdout=self.slave, stderr=self.slave,
                                        cwd=REPO, preexec_fn=_take_controlling_terminal)
        self.output = bytearray()
        self.seen = 0

    def _read_available(self, timeout: float) -> None:
        readable, _, _ = select.select([self.master], [], [], timeout)
        if readable:
            try:
                self.output += os.read(self.master, 65536)
            except OSError:
                pass

    def expect(self, text: bytes, timeout: float = READ_TIMEOUT) -> bytes:
        """Wait for ``text`` after what earlier calls matched; return the output up to its end."""
        def found() -> bool:
            self._read_available(0.05)
            return self.output.find(text, self.seen) >= 0

        wait_until(found, timeout, interval=0, message=f"{text!r} on the terminal; got {bytes(self.output)!r}")
        start = self.seen
        self.seen = self.output.find(text, self.seen) + len(text)
        return bytes(self.output[start:self.seen])

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def resize(self, rows: int, columns: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

    def wait(self, timeout: float = READ_TIMEOUT) -> int:
        wait_until(lambda: self._read_available(0.05) or self.process.poll() is not None, timeout,
                   interval=0, message=f"the moor client to exit; output {bytes(self.output)!r}")
        return self.process.returncode

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminals():
    """Open Terminals on demand; kill their clients and close the ptys at teardown."""
    opened: list[Terminal] = []

    def open_terminal(moord, *args: str, **size) -> Terminal:
        terminal = Terminal(moord, *args, **size)
        opened.append(terminal)
        return terminal

    yield open_terminal
    for terminal in opened:
        terminal.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class ShimPeer:
    """A raw connection to a container's shim, for what the CLI never does (stop reading, resend)."""

    def __init__(self, moord, ref: str):
        self.dealer = zmtp.Dealer(moord.inspect(ref)["Shim"]["Socket"])
        self.rid = 0

    def send(self, op: str, **args) -> int:
        self.rid += 1
        self.dealer.send(protocol.pack(protocol.request(op, self.rid, **args)))
        return self.rid

    def call(self, op: str, **args) -> dict:
        rid = self.send(op, **args)
        while True:
            assert self.dealer.poll(READ_TIMEOUT), f"the shim did not answer {op!r}"
            message = protocol.unpack(self.dealer.recv())
            if message.get("rid") == rid:
                return message

    def output_until(self, text: bytes) -> bytes:
        data = b""
        while text not in data:
            assert self.dealer.poll(READ_TIMEOUT), f"no {text!r} from the shim; got {data!r}"
            message = protocol.unpack(self.dealer.recv())
            data += message.get("d", b"")
        return data

    def close(self) -> None:
        self.dealer.close()


# -- stdin without a terminal ---------------------------------------------------

def test_run_stdin_pipe_prints_input(moord):
    result = moord.moor("run", "-i", "--rm", "busybox", "cat", input=b"hello\n")
    assert result.stdout == b"hello\n"
    assert result.returncode == 0


def test_run_stdin_eof_ends_process(moord):
    result = moord.moor("run", "-i", "--rm", "busybox", "sh", "-c", "wc -c; exit 4", input=b"12345", check=False)
    assert result.stdout.strip() == b"5"
    assert result.returncode == 4


def test_run_stdin_large_input_arrives_whole(moord):
    data = os.urandom(3 * 1024 * 1024 + 17)
    result = moord.moor("run", "-i", "--rm", "busybox", "md5sum", input=data)
    assert result.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()


def test_run_stdin_without_tty_ignores_detach_keys(moord):
    result = moord.moor("run", "-i", "--rm", "busybox", "cat", input=b"a" + CTRL_P_CTRL_Q + b"b")
    assert result.stdout == b"a" + CTRL_P_CTRL_Q + b"b"
    assert result.returncode == 0


def test_run_stdin_keeps_stderr_apart(moord):
    result = moord.moor("run", "-i", "--rm", "busybox", "sh", "-c", "cat >&2", input=b"to-stderr\n")
    assert result.stderr == b"to-stderr\n"
    assert result.stdout == b""


def test_exec_stdin_exit_code(moord):
    name = unique("execin")
    moord.moor("run", "-d", "--name", name, "busybox", "sleep", "300")
    result = moord.moor("exec", "-i", name, "sh", "-c", "read line; echo got $line; exit 5",
                        input=b"x\n", check=False)
    assert result.stdout == b"got x\n"
    assert result.returncode == 5


@pytest.mark.parametrize("command, code", [
    ("no-such-command", 127),
    ("/etc/passwd", 126),
], ids=["not-found", "not-executable"])
def test_exec_interactive_start_failure_code(moord, command, code):
    name = unique("execfail")
    moord.moor("run", "-d", "--name", name, "busybox", "sleep", "300")
    result = moord.moor("exec", "-i", name, command, input=b"", check=False)
    assert result.returncode == code
    assert command.encode() in result.stderr


def test_stdin_chunk_sent_twice_is_written_once(moord):
    name = unique("dedup")
    moord.moor("run", "-d", "-i", "--name", name, "busybox", "cat")
    peer = ShimPeer(moord, name)
    try:
        assert "ok" in peer.call("attach", token="client-1", stdin=True)
        peer.send("stdin", off=0, d=b"abc\n")
        peer.send("stdin", off=0, d=b"abc\n")
        peer.send("stdin", off=4, d=b"def\n")
        output = peer.output_until(b"def\n")
    finally:
        peer.close()
    assert output == b"abc\ndef\n"


# -- terminals ----------------------------------------------------------------

def test_run_tty_exit_code_is_process_code(moord, terminals):
    terminal = terminals(moord, "run", "-it", "--rm", "busybox", "sh")
    terminal.expect(b"# ")
    terminal.type(b"echo $((6 * 7))\r")
    terminal.expect(b"42")
    terminal.type(b"exit 3\r")
    assert terminal.wait() == 3


def test_run_tty_missing_command_exits_127(moord, terminals):
    terminal = terminals(moord, "run", "-it", "--rm", "busybox", "no-such-command")
    assert terminal.wait() == 127
    assert b"no-such-command" in terminal.output
    assert termios.tcgetattr(terminal.slave) == terminal.attributes


def test_run_tty_ctrl_c_reaches_container(moord, terminals):
    name = unique("ctrlc")
    terminal = terminals(moord, "run", "-it", "--name", name, "busybox", "sh")
    terminal.expect(b"# ")
    terminal.type(b"sleep 300\r")
    # Until sleep runs in the foreground, the ^C could reach the shell instead of sleep.
    wait_until(lambda: moord.moor("exec", name, "pidof", "sleep", check=False).returncode == 0, 30,
               message="sleep to run in the container")
    terminal.type(b"\x03")
    terminal.expect(b"# ")
    terminal.type(b"echo still-here\r")
    terminal.expect(b"still-here\r\n")
    assert terminal.process.poll() is None
    assert moord.inspect(name)["State"]["Status"] == "running"


def test_run_tty_restores_terminal_mode(moord, terminals):
    terminal = terminals(moord, "run", "-it", "--rm", "busybox", "sh")
    terminal.expect(b"# ")
    raw = termios.tcgetattr(terminal.slave)
    terminal.type(b"exit\r")
    terminal.wait()
    assert raw != terminal.attributes
    assert termios.tcgetattr(terminal.slave) == terminal.attributes


def test_run_tty_restores_terminal_after_sigterm(moord, terminals):
    terminal = terminals(moord, "run", "-it", "busybox", "sh")
    terminal.expect(b"# ")
    terminal.process.send_signal(signal.SIGTERM)
    assert terminal.wait() == 128 + signal.SIGTERM
    assert termios.tcgetattr(terminal.slave) == terminal.attributes


def test_run_tty_initial_size_then_resize(moord, terminals):
    """The size is set before the process starts, and a resize reaches it as SIGWINCH."""
    # The shell waits in `read` with its trap set ("ready") until the test presses Enter.
    script = "stty size; trap 'echo winch' WINCH; echo ready; read line; stty size"
    terminal = terminals(moord, "run", "-it", "--rm", "busybox", "sh", "-c", script, rows=42, columns=173)
    first = terminal.expect(b"\r\n")
    terminal.expect(b"ready")
    terminal.resize(50, 200)
    terminal.expect(b"winch")
    terminal.type(b"\r")
    last = terminal.expect(b"50 200")
    assert first.strip() == b"42 173"
    assert b"42 173" not in last
    assert terminal.wait() == 0


def test_spec_terminal_initial_size_then_resize(moord, tmp_path):
    """A --spec file's terminal and consoleSize apply before the start; a resize reaches the process."""
    rootfs = tmp_path / "unused-rootfs"
    (rootfs / "bin").mkdir(parents=True)
    # The shell waits with its trap set ("ready") until the test creates /go.
    script = "stty size; trap 'echo winch' WINCH; echo ready; until [ -e /go ]; do sleep 0.1; done; stty size"
    spec = build_spec({}, RunOptions(args=("/bin/sh", "-c", script)), rootfs=str(rootfs), container_id="spec",
                      hostname="box", cgroups_path=f"/moorage/test-{uuid.uuid4().hex[:12]}")
    spec["process"]["terminal"] = True
    spec["process"]["consoleSize"] = {"height": 42, "width": 173}
    (tmp_path / "config.json").write_text(json.dumps(spec))
    name = unique("specsize")
    moord.moor("run", "-d", "--name", name, "--spec", str(tmp_path / "config.json"), "busybox")
    wait_until(lambda: b"ready" in moord.logs(name), 30, message="the trap to be set")
    peer = ShimPeer(moord, name)
    try:
        reply = peer.call("resize", rows=50, cols=200)
    finally:
        peer.close()
    wait_until(lambda: b"winch" in moord.logs(name), 30, message="the trap to run")
    moord.moor("exec", name, "touch", "/go")
    moord.wait_status(name, "exited")
    output = moord.logs(name)
    lines = [line.strip() for line in output.splitlines()]
    assert "ok" in reply
    assert moord.inspect(name)["Config"]["Tty"] is True
    assert lines[0] == b"42 173"
    assert b"winch" in lines
    assert lines[-1] == b"50 200"


def test_run_tty_without_stdin(moord, terminals):
    terminal = terminals(moord, "run", "-t", "--rm", "busybox", "sh", "-c", "stty size; exit 2", rows=30, columns=90)
    assert terminal.wait() == 2
    assert b"30 90" in terminal.output


def test_attach_invalid_offset_is_rejected(moord):
    name = unique("badoffset")
    moord.moor("run", "-d", "--name", name, "busybox", "sleep", "300")
    peer = ShimPeer(moord, name)
    try:
        reply = peer.call("attach", since="start")
        state = peer.call("state")
    finally:
        peer.close()
    assert reply["err"]["code"] == "invalid_argument"
    assert "'start'" in reply["err"]["message"]
    assert state["ok"]["status"] == "running"


def test_resize_without_terminal_is_rejected(moord):
    name = unique("notty")
    moord.moor("run", "-d", "--name", name, "busybox", "sleep", "300")
    peer = ShimPeer(moord, name)
    try:
        reply = peer.call("resize", rows=30, cols=100)
        state = peer.call("state")
    finally:
        peer.close()
    assert reply["err"]["code"] == "failed_precondition"
    assert "no terminal" in reply["err"]["message"]
    assert state["ok"]["status"] == "running"


def test_exec_tty_exit_code_and_inspect(moord, terminals):
    name = unique("exectty")
    moord.moor("run", "-d", "--name", name, "busybox", "sleep", "300")
    terminal = terminals(moord, "exec", "-it", name, "sh")
    terminal.expect(b"# ")
    running = moord.inspect(name)["ExecIDs"]
    terminal.type(b"exit 7\r")
    assert terminal.wait() == 7
    assert len(running) == 1
    wait_until(lambda: moord.inspect(name)["ExecIDs"] is None, 30, message="the exec to leave ExecIDs")


def test_exec_tty_gets_client_size(moord, terminals):
    name = unique("execsize")
    moord.moor("run", "-d", "--name", name, "busybox", "sleep", "300")
    terminal = terminals(moord, "exec", "-it", name, "stty", "size", rows=33, columns=121)
    assert terminal.wait() == 0
    assert b"33 121" in terminal.output


# -- detach and attach -----------------------------------------------------------

@pytest.mark.parametrize("option, keys", [
    ((), CTRL_P_CTRL_Q),
    (("--detach-keys", "ctrl-a,x"), b"\x01x"),
], ids=["default", "custom"])
def test_detach_keys_leave_container_running(moord, terminals, option, keys):
    name = unique("detach")
    terminal = terminals(moord, "run", "-it", *option, "--name", name, "busybox", "sh")
    terminal.expect(b"# ")
    terminal.type(keys)
    assert terminal.wait() == 0
    assert moord.inspect(name)["State"]["Status"] == "running"


def test_attach_after_detach_reaches_same_shell(moord, terminals):
    name = unique("reattach")
    first = terminals(moord, "run", "-it", "--name", name, "busybox", "sh")
    first.expect(b"# ")
    first.type(b"MARK=kept\r")
    first.type(CTRL_P_CTRL_Q)
    first.wait()
    second = terminals(moord, "attach", name)
    second.type(b"echo $MARK\r")
    second.expect(b"kept")
    second.type(b"exit 4\r")
    assert second.wait() == 4
    assert moord.wait_status(name, "exited")["State"]["ExitCode"] == 4


def test_attach_to_stopped_container_fails(moord):
    name = unique("stopped")
    moord.moor("run", "--name", name, "busybox", "true")
    result = moord.moor("attach", name, check=False)
    assert result.returncode == 5
    assert b"not running" in result.stderr


def _dropped_bytes(peer: ShimPeer) -> int:
    """Return the output bytes that the shim dropped for slow clients of the container's init."""
    return peer.call("state")["ok"]["sessions"].get("init", {}).get("dropped", 0)


def test_two_clients_one_not_reading(moord, terminals):
    name = unique("twoclients")
    moord.moor("run", "-d", "--name", name, "busybox", "sh", "-c",
               "i=0; while true; do echo line $i; i=$((i+1)); done")
    stalled = ShimPeer(moord, name)
    try:
        assert "ok" in stalled.call("attach", token="stalled")
        reader = terminals(moord, "attach", "--no-stdin", name)
        wait_until(lambda: _dropped_bytes(stalled) > 0, 60,
                   message="the shim to drop output of the client that does not read")
        reader.expect(b"line ")
        reader.output.clear()
        reader.seen = 0
        reader.expect(b"line ")
        state = stalled.call("state")["ok"]
    finally:
        stalled.close()
    assert state["status"] == "running"
    assert state["sessions"]["init"]["clients"] == 2


def test_two_terminals_one_not_reading(moord, terminals):
    name = unique("twoterms")
    moord.moor("run", "-d", "--name", name, "busybox", "sh", "-c",
               "i=0; while true; do echo line $i; i=$((i+1)); done")
    terminals(moord, "attach", "--no-stdin", name)  # its master is never read, so its client blocks
    reader = terminals(moord, "attach", "--no-stdin", name)
    peer = ShimPeer(moord, name)
    try:
        wait_until(lambda: _dropped_bytes(peer) > 0, 60,
                   message="the shim to drop output of the terminal that is not read")
        reader.expect(b"line ")
        reader.output.clear()
        reader.seen = 0
        reader.expect(b"line ")
        state = peer.call("state")["ok"]
    finally:
        peer.close()
    assert state["status"] == "running"
    assert state["sessions"]["init"]["clients"] == 2


# -- signals -----------------------------------------------------------------------

def _start_trapping_run(moord, *options: str) -> subprocess.Popen:
    script = "trap 'echo got-term; exit 9' TERM; echo ready; while true; do sleep 0.1; done"
    command = [sys.executable, "-m", "supervisor.cli", "--state", str(moord.state), "run", "-i", *options,
               "busybox", "sh", "-c", script]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO)
    assert process.stdout.readline() == b"ready\n"
    return process


def test_sig_proxy_forwards_sigterm(moord):
    process = _start_trapping_run(moord, "--rm")
    try:
        process.send_signal(signal.SIGTERM)
        output = process.stdout.read()
        code = process.wait(READ_TIMEOUT)
    finally:
        process.kill()
    assert output == b"got-term\n"
    assert code == 9


def test_sig_proxy_false_leaves_container_running(moord):
    name = unique("noproxy")
    process = _start_trapping_run(moord, "--sig-proxy=false", "--name", name)
    try:
        process.send_signal(signal.SIGTERM)
        code = process.wait(READ_TIMEOUT)
    finally:
        process.kill()
    assert code == 128 + signal.SIGTERM
    assert moord.inspect(name)["State"]["Status"] == "running"


def test_attach_sig_proxy_forwards_sigterm(moord):
    name = unique("attachproxy")
    moord.moor("run", "-d", "--name", name, "busybox", "sh", "-c",
               "trap 'echo got-term; exit 9' TERM; while true; do sleep 0.1; done")
    command = [sys.executable, "-m", "supervisor.cli", "--state", str(moord.state), "attach", name]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, cwd=REPO)
    peer = ShimPeer(moord, name)
    try:
        wait_until(lambda: peer.call("state")["ok"]["sessions"].get("init", {}).get("clients") == 1, 30,
                   message="the attach client to attach")
        process.send_signal(signal.SIGTERM)
        output = process.stdout.read()
        code = process.wait(READ_TIMEOUT)
    finally:
        peer.close()
        process.kill()
    assert output == b"got-term\n"
    assert code == 9


# -- moord restarts ------------------------------------------------------------------

def test_session_survives_moord_kill9(moord, terminals):
    name = unique("survive")
    terminal = terminals(moord, "run", "-it", "--name", name, "busybox", "sh")
    terminal.expect(b"# ")
    moord.kill9()
    terminal.type(b"echo $((3 * 4))\r")
    terminal.expect(b"12")
    moord.start()
    terminal.type(b"echo $((5 * 5))\r")
    terminal.expect(b"25")
    terminal.type(b"exit 6\r")
    assert terminal.wait() == 6
    assert moord.wait_status(name, "exited")["State"]["ExitCode"] == 6


def test_run_rm_after_moord_kill9_removes_container(moord, terminals):
    name = unique("rmsurvive")
    terminal = terminals(moord, "run", "-it", "--rm", "--name", name, "busybox", "sh")
    terminal.expect(b"# ")
    moord.kill9()
    moord.start()
    terminal.type(b"exit 2\r")
    code = terminal.wait()
    names = [item["name"] for item in moord.call("ps", all=True)]
    assert code == 2
    assert name not in names


def test_exec_session_survives_moord_kill9(moord, terminals):
    name = unique("execsurvive")
    moord.moor("run", "-d", "--name", name, "busybox", "sleep", "300")
    terminal = terminals(moord, "exec", "-it", name, "sh")
    terminal.expect(b"# ")
    running = moord.inspect(name)["ExecIDs"]
    moord.kill9()
    moord.start()
    restored = moord.inspect(name)["ExecIDs"]
    terminal.type(b"echo $((7 * 6))\r")
    terminal.expect(b"42")
    terminal.type(b"exit 8\r")
    assert terminal.wait() == 8
    assert restored == running
    wait_until(lambda: moord.inspect(name)["ExecIDs"] is None, 30, message="the exec to leave ExecIDs")


def test_attach_after_moord_restart(moord, terminals):
    name = unique("restarted")
    moord.moor("run", "-d", "-it", "--name", name, "busybox", "sh")
    moord.kill9()
    moord.start()
    terminal = terminals(moord, "attach", name)
    terminal.type(b"echo $((8 * 8))\r")
    terminal.expect(b"64")
    terminal.type(CTRL_P_CTRL_Q)
    assert terminal.wait() == 0


# -- the client's key handling ---------------------------------------------------------

@pytest.mark.parametrize("text, keys", [
    ("ctrl-p,ctrl-q", b"\x10\x11"),
    ("ctrl-a,x", b"\x01x"),
    ("CTRL-Z", b"\x1a"),
    ("ctrl-@,ctrl-[,ctrl-\\,ctrl-],ctrl-^,ctrl-_", b"\x00\x1b\x1c\x1d\x1e\x1f"),
    ("a,b", b"ab"),
], ids=["default", "ctrl-and-letter", "upper-case", "symbols", "letters"])
def test_parse_detach_keys(text, keys):
    assert parse_detach_keys(text) == keys


@pytest.mark.parametrize("text", ["", "ctrl-", "ctrl-1", "ab", "ctrl-p,,ctrl-q", "alt-x"],
                         ids=["empty", "ctrl-alone", "ctrl-digit", "two-letters", "empty-key", "alt"])
def test_parse_detach_keys_rejects(text):
    with pytest.raises(InvalidArgument):
        parse_detach_keys(text)


@pytest.mark.parametrize("chunks, forwarded, detached", [
    ([b"abc"], b"abc", False),
    ([b"a\x10b"], b"a\x10b", False),
    ([b"a\x10", b"\x11"], b"a", True),
    ([b"\x10\x10\x11"], b"\x10", True),
    ([b"\x10"], b"", False),
], ids=["plain", "broken-sequence", "split-sequence", "repeated-first-key", "pending-prefix"])
def test_detach_detector(chunks, forwarded, detached):
    detector = DetachDetector(CTRL_P_CTRL_Q)
    output, found = b"", False
    for chunk in chunks:
        data, found = detector.feed(chunk)
        output += data
    assert output == forwarded
    assert found is detached


# -- shims of the previous release -------------------------------------------------------

def _previous_release(folder) -> str:
    """Unpack the tree as it was before interactive sessions existed; return its path."""
    added = subprocess.run(["git", "-C", str(REPO), "log", "--diff-filter=A", "--format=%H", "--",
                            "shim/sessions.py"], capture_output=True, timeout=60)
    commits = added.stdout.split()
    if added.returncode != 0 or not commits:
        pytest.skip("needs the git history of the checkout to find the previous release")
    tree = folder / "previous"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commits[-1].decode() + "^"],
                             capture_output=True, timeout=60, check=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, timeout=60, check=True)
    return str(tree)


@pytest.fixture
def previous_release_moord(moord_factory, tmp_path):
    """A moord of the previous release, run from its own tree; stopped at teardown if still running."""
    old_tree = _previous_release(tmp_path)
    daemon = moord_factory(start=False)
    log = open(tmp_path / "old-moord.out", "ab")
    daemon.process = subprocess.Popen([sys.executable, "-m", "supervisor.daemon", "--root", str(daemon.root),
                                       "--state", str(daemon.state)], cwd=old_tree, stdout=log, stderr=log,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    old = daemon.process
    try:
        wait_until(daemon._answers, 30, message="the previous release's moord to answer")
        yield daemon
    finally:
        if old.poll() is None:
            old.kill()
            old.wait(10)


@pytest.fixture
def previous_release_container(previous_release_moord):
    """Run a container under the previous release's moord and shim, then restore it with this moord."""
    daemon = previous_release_moord
    name = unique("oldshim")
    daemon.moor("run", "-d", "--name", name, "busybox", "sleep", "300")
    daemon.stop()
    daemon.start()
    return daemon, name


def test_run_interactive_on_previous_release_moord_fails_clearly(previous_release_moord):
    result = previous_release_moord.moor("run", "-i", "--rm", "busybox", "cat", input=b"x", check=False)
    assert result.returncode == 125
    assert b"older than this moor" in result.stderr


def test_attach_to_previous_release_shim_fails_clearly(previous_release_container):
    daemon, name = previous_release_container
    result = daemon.moor("attach", name, check=False)
    assert daemon.inspect(name)["State"]["Status"] == "running"
    assert result.returncode == 5
    assert b"older release" in result.stderr


def test_exec_in_previous_release_shim_fails_clearly(previous_release_container):
    daemon, name = previous_release_container
    result = daemon.moor("exec", "-i", name, "cat", input=b"", check=False)
    assert result.returncode == 125
    assert b"older release" in result.stderr


def test_exec_replay_keeps_streams_apart(moord):
    name = unique("execstreams")
    moord.moor("run", "-d", "--name", name, "busybox", "sleep", "300")
    result = moord.moor("exec", "-i", name, "sh", "-c", "echo out; echo err >&2", input=b"")
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"


# -- the shim's per-client buffers ---------------------------------------------------------

def _recording_stream():
    from shim.sessions import Stream

    sent: list[tuple[bytes, dict]] = []
    stream = Stream("c" * 64, "", False, None, lambda identity, message: sent.append((identity, message)) or True)
    return stream, sent


def test_stream_slow_client_drops_only_its_own_output():
    from shim.sessions import WINDOW_BYTES

    stream, sent = _recording_stream()
    stream.attach(b"reader", "reader", None, False)
    stream.attach(b"stalled", "stalled", None, False)
    chunk = b"x" * 16384
    for _ in range(64):
        stream.output(1, chunk)
        stream.ack(b"reader", stream.out_offset)
    received = {identity: sum(len(message["d"]) for peer, message in sent if peer == identity)
                for identity in (b"reader", b"stalled")}
    assert received[b"reader"] == 64 * len(chunk)
    assert received[b"stalled"] == WINDOW_BYTES
    assert stream.clients[b"stalled"].dropped == 64 * len(chunk) - WINDOW_BYTES


def test_stream_attach_before_ring_counts_drop():
    from shim.sessions import RING_BYTES

    stream, sent = _recording_stream()
    for _ in range(8):
        stream.output(1, b"y" * (RING_BYTES // 2))
    stream.attach(b"late", "late", 0, False)
    replayed = sum(len(message["d"]) for _, message in sent)
    assert replayed == stream.out_offset - stream.ring_start
    assert stream.clients[b"late"].dropped == stream.ring_start
    assert sent[0][1]["off"] == stream.ring_start
