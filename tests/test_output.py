"""End-to-end tests of container output: long runs without newlines, spooling while moord is away, loss.

Each test runs its own moord with real shims and runc.  Containers signal the
test through a bind-mounted host folder (/hb), so the test can tell what a
container did while moord was not there to report it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
import zmq

from conftest import wait_until
from plugins.filelog import PIECE_BYTES, log_files, parse_line
from shim import protocol
from supervisor.client import subscribe_events

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running containers with runc needs root")

MIB = 1024 * 1024
# Memory that moord or a shim may use while a container floods its output.  Both use tens of MiB.
RSS_BOUND = 200 * 1000 * 1000
WAIT_FOR_GO = "while [ ! -e /hb/go ]; do sleep 0.05; done"


def alive(pid: int) -> bool:
    """Return whether ``pid`` runs, counting a zombie as gone."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def rss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.NoSuchProcess:
        return 0


class PeakMemory:
    """Largest RSS seen for each watched pid, and the RSS when watching began."""

    def __init__(self, **pids: int):
        self.pids = pids
        self.start = {name: rss(pid) for name, pid in pids.items()}
        self.peak = dict(self.start)

    def growth(self, name: str) -> int:
        return self.peak[name] - self.start[name]

    def sample(self) -> None:
        for name, pid in self.pids.items():
            self.peak[name] = max(self.peak[name], rss(pid))


@pytest.fixture
def host_folder(tmp_path) -> Path:
    """A host folder that containers see at /hb."""
    folder = tmp_path / "hb"
    folder.mkdir()
    return folder


def run(moord, name: str, host_folder: Path, script: str, *options: str) -> dict:
    moord.moor("run", "-d", "--name", name, "-v", f"{host_folder}:/hb", *options, "busybox", "sh", "-c", script)
    return moord.inspect(name)


def wait_exited(moord, name: str, memory: PeakMemory | None = None, timeout: float = 120) -> dict:
    def exited():
        if memory is not None:
            memory.sample()
        info = moord.inspect(name)
        return info if info["State"]["Status"] == "exited" else None
    return wait_until(exited, timeout, interval=0.1, message=f"container {name} to exit")


def next_event(sub: zmq.Socket, topic: str, timeout: float) -> dict | None:
    """Return the next event with ``topic`` within ``timeout`` seconds, or None."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not sub.poll(int(left * 1000) + 1):
            return None
        name, body = sub.recv_multipart()
        if name.decode() == topic:
            return protocol.unpack(body)
    return None


def subscribed_events(moord) -> zmq.Socket:
    """Return a SUB socket on moord's events that is known to receive them.

    A new subscription reaches the PUB side a moment after connect, so the
    test creates containers until one of their create events comes through.
    """
    sub = subscribe_events(moord.state)
    probes = iter(range(1000))

    def receives():
        moord.moor("create", "--name", f"probe-{next(probes)}", "busybox", "true")
        return next_event(sub, protocol.TOPIC_CONTAINER_CREATE, 0.5)
    wait_until(receives, 30, message="the event subscription to receive")
    return sub


# -- runs without newlines and long lines ---------------------------------------------

def test_long_run_without_newline_logged_exactly(moord):
    """50 MiB without a newline come back byte for byte.

    50 MiB, not 200 MiB, to keep the test short: it already crosses every
    limit on the way (16 KiB log pieces, 8 MiB spool segments, 16 MiB messages).
    """
    size = 50 * MIB
    moord.moor("run", "-d", "--name", "flood", "busybox", "sh", "-c",
               f"head -c {size} /dev/zero | tr '\\000' x; sleep 2")
    wait_exited(moord, "flood")

    logged = moord.moor("logs", "flood").stdout

    assert len(logged) == size
    assert logged.count(b"x") == size


def test_long_run_without_newline_keeps_memory_bounded(moord, host_folder):
    """While a container writes 50 MiB without a newline, moord and the shim grow by far less than that."""
    size = 50 * MIB
    shim_pid = run(moord, "flood", host_folder, f"{WAIT_FOR_GO}; head -c {size} /dev/zero | tr '\\000' x; sleep 2")[
        "Shim"]["Pid"]
    memory = PeakMemory(moord=moord.process.pid, shim=shim_pid)

    (host_folder / "go").touch()
    wait_exited(moord, "flood", memory)

    assert memory.peak["moord"] < RSS_BOUND
    assert memory.peak["shim"] < RSS_BOUND
    assert memory.growth("moord") < size // 2, memory.peak
    assert memory.growth("shim") < size // 2, memory.peak


def test_long_run_stored_as_partial_pieces(moord):
    moord.moor("run", "-d", "--name", "wide", "busybox", "sh", "-c",
               f"head -c {3 * MIB} /dev/zero | tr '\\000' y; echo; echo tail")
    info = wait_exited(moord, "wide")

    pieces = [parse_line(raw) for path in log_files(Path(info["LogPath"]).parent)
              for raw in path.read_bytes().splitlines()]

    # Where the newline lands depends on how the shim's reads split the output, so the
    # last piece of the long line may hold data or be empty; only the joined line is fixed.
    assert all(len(piece[5]) <= PIECE_BYTES for piece in pieces)
    assert [piece[2] for piece in pieces[:-2]] == [True] * (len(pieces) - 2)
    assert [piece[2] for piece in pieces[-2:]] == [False, False]
    assert b"".join(piece[5] for piece in pieces[:-1]) == b"y" * (3 * MIB)
    assert pieces[-1][5] == b"tail"


def test_3_mib_line_then_tail_read_back(moord):
    moord.moor("run", "-d", "--name", "wide", "busybox", "sh", "-c",
               f"head -c {3 * MIB} /dev/zero | tr '\\000' y; echo; echo tail")
    wait_exited(moord, "wide")

    logged = moord.moor("logs", "wide").stdout

    assert logged == b"y" * (3 * MIB) + b"\ntail\n"


def test_line_split_across_reads_read_back_whole(moord):
    moord.moor("run", "-d", "--name", "halves", "busybox", "sh", "-c",
               "printf 'first half '; sleep 1; printf 'second half\\n'")
    wait_exited(moord, "halves")

    assert moord.logs("halves") == b"first half second half\n"


def test_endless_output_stops_cleanly(moord):
    """A container that prints forever without newlines is stopped by SIGTERM, with nothing lost in between."""
    pattern = b"abcdefgh"
    moord.moor("run", "-d", "--name", "chatter", "busybox", "sh", "-c",
               "trap 'exit 0' TERM; while :; do printf abcdefgh; done")
    info = moord.inspect("chatter")
    memory = PeakMemory(moord=moord.process.pid, shim=info["Shim"]["Pid"])
    log_path = Path(info["LogPath"])
    # The file also contains a header per 16 KiB piece, so 5 MiB of file is more than 4 MiB of output.
    wait_until(lambda: log_path.exists() and log_path.stat().st_size > 5 * MIB, 60,
               message="5 MiB of log file")
    memory.sample()

    moord.moor("stop", "chatter")
    state = moord.inspect("chatter")["State"]
    logged = moord.moor("logs", "chatter").stdout

    assert state["ExitCode"] == 0
    assert len(logged) > 4 * MIB
    assert logged == (pattern * (len(logged) // len(pattern) + 1))[:len(logged)]
    assert memory.peak["moord"] < RSS_BOUND
    assert memory.peak["shim"] < RSS_BOUND


# -- output while moord is away ----------------------------------------------------------

def test_50_mb_while_stopped_neither_blocked_nor_truncated(moord, host_folder):
    """A container writes 50 MB without a newline and exits 0 while moord is stopped."""
    size = 50 * 1000 * 1000
    script = f"{WAIT_FOR_GO}; head -c {size} /dev/zero | tr '\\000' x && touch /hb/done"
    init_pid = run(moord, "flood", host_folder, script)["State"]["Pid"]

    moord.stop()
    (host_folder / "go").touch()
    wait_until(lambda: (host_folder / "done").exists(), 120, message="the container to write everything")
    wait_until(lambda: not alive(init_pid), 30, message="the container to exit")
    moord.start()
    state = moord.wait_status("flood", "exited")["State"]
    logged = moord.moor("logs", "flood").stdout

    assert state["ExitCode"] == 0
    assert state["LostOutputBytes"] == 0
    assert len(logged) == size
    assert logged.count(b"x") == size


def test_heartbeat_continues_while_moord_killed(moord, host_folder):
    """A container printing as fast as it can keeps running while moord is SIGKILLed, and its shim stays small.

    Watching for 10 s is enough, because a blocked pipe (1 MiB) would fill in
    well under a second at this rate.
    """
    # The rename makes each update of the beat file atomic for the reader.
    script = ('i=0; while :; do i=$((i+1)); echo "line $i"; '
              '[ $((i % 500)) -eq 0 ] && echo $i > /hb/beat.new && mv /hb/beat.new /hb/beat; done')
    info = run(moord, "beater", host_folder, script)
    shim_pid = info["Shim"]["Pid"]
    beat = lambda: int((host_folder / "beat").read_text()) if (host_folder / "beat").exists() else 0
    wait_until(lambda: beat() >= 5000, 60, message="5000 lines before moord is killed")

    moord.kill9()
    beats, shim_memory = [beat()], []
    for _ in range(10):
        # Time has to pass here: the container must keep going while no process reads its output.
        time.sleep(1)
        beats.append(beat())
        shim_memory.append(rss(shim_pid))
    moord.start()
    state = moord.inspect("beater")["State"]
    at_start = beat()
    wait_until(lambda: beat() > at_start, 30, message="lines written after the restart")
    moord.moor("kill", "beater")
    # The exit is reported after all output before it, so the log is complete once the container is exited.
    lost = moord.wait_status("beater", "exited", timeout=180)["State"]["LostOutputBytes"]
    last_lines = [int(line.split()[1]) for line in moord.moor("logs", "--tail", "5", "beater").stdout.splitlines()]

    assert all(later > earlier for earlier, later in zip(beats, beats[1:])), beats
    assert max(shim_memory) < RSS_BOUND
    assert state["Status"] == "running"
    assert lost == 0
    assert last_lines[-1] > at_start
    assert last_lines == list(range(last_lines[0], last_lines[0] + 5))


# -- output over the spool bound -------------------------------------------------------------

SMALL_SPOOL = 2 * MIB
LOSS_OUTPUT = 10 * 1000 * 1000


def test_output_over_bound_counted_after_restart(moord_factory, host_folder):
    """10 MB written while moord is stopped, with a 2 MiB spool: every byte is either logged or counted lost.

    The shim journals its loss record before the exit record, so moord replays
    it during its restore, before any client can subscribe to events.  The
    event is checked by test_output_over_bound_publishes_loss_event instead.
    """
    moord = moord_factory("--spool-limit", str(SMALL_SPOOL))
    script = f"{WAIT_FOR_GO}; head -c {LOSS_OUTPUT} /dev/zero | tr '\\000' x && touch /hb/done"
    init_pid = run(moord, "flood", host_folder, script)["State"]["Pid"]

    moord.stop()
    (host_folder / "go").touch()
    wait_until(lambda: (host_folder / "done").exists(), 60, message="the container to write everything")
    wait_until(lambda: not alive(init_pid), 30, message="the container to exit")
    moord.start()
    state = moord.wait_status("flood", "exited")["State"]
    logged = len(moord.moor("logs", "flood").stdout)

    assert state["ExitCode"] == 0
    assert state["LostOutputBytes"] > 0
    assert logged + state["LostOutputBytes"] == LOSS_OUTPUT


def test_loss_count_survives_moord_restart(moord_factory, host_folder):
    moord = moord_factory("--spool-limit", str(SMALL_SPOOL))
    script = f"{WAIT_FOR_GO}; head -c {LOSS_OUTPUT} /dev/zero | tr '\\000' x"
    init_pid = run(moord, "flood", host_folder, script)["State"]["Pid"]
    moord.stop()
    (host_folder / "go").touch()
    wait_until(lambda: not alive(init_pid), 60, message="the container to exit")
    moord.start()
    lost = moord.wait_status("flood", "exited")["State"]["LostOutputBytes"]

    moord.restart()

    assert lost > 0
    assert moord.inspect("flood")["State"]["LostOutputBytes"] == lost


def test_output_over_bound_publishes_loss_event(moord_factory, host_folder):
    """While moord is frozen (SIGSTOP), 10 MB overflow a 2 MiB spool, and moord reports the loss when it resumes.

    A smaller read that still fits after a drop closes one loss record, so the
    loss can come as several events.  The last one carries the total.
    """
    moord = moord_factory("--spool-limit", str(SMALL_SPOOL))
    sub = subscribed_events(moord)
    script = f"{WAIT_FOR_GO}; head -c {LOSS_OUTPUT} /dev/zero | tr '\\000' x && touch /hb/done; exec sleep 3600"
    container_id = run(moord, "flood", host_folder, script)["Id"]

    moord.process.send_signal(signal.SIGSTOP)
    try:
        (host_folder / "go").touch()
        wait_until(lambda: (host_folder / "done").exists(), 60, message="the container to write everything")
    finally:
        moord.process.send_signal(signal.SIGCONT)
    first = next_event(sub, protocol.TOPIC_TASK_OUTPUT_LOSS, 30)
    moord.moor("kill", "flood")
    state = moord.wait_status("flood", "exited")["State"]
    events = [first]
    while (event := next_event(sub, protocol.TOPIC_TASK_OUTPUT_LOSS, 0.5)) is not None:
        events.append(event)
    sub.close()
    logged = len(moord.moor("logs", "flood").stdout)

    assert first is not None, "no task.output.loss event within 30 s"
    assert {event["id"] for event in events} == {container_id}
    assert sum(event["payload"]["bytes"] for event in events) == state["LostOutputBytes"]
    assert events[-1]["payload"]["total"] == state["LostOutputBytes"]
    assert logged + state["LostOutputBytes"] == LOSS_OUTPUT
