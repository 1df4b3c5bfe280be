"""End-to-end cases of exit statuses and orphaned processes, run through `moor` against a private moord.

Covered: the exit code (and signal) of a container or exec process that a
signal ended, that exited with a code above 255, or that the host killed.
Also covered: orphans that a container's PID 1 never reaps.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from conftest import wait_until

CGROUP_ROOT = Path("/sys/fs/cgroup")
ZOMBIE_COUNT = 'grep -l "^State:.*Z" /proc/[0-9]*/status | wc -l'


def run_sleeper(moord, name: str, seconds: int = 300) -> int:
    """Start `sleep` as a detached container and return its host pid."""
    moord.moor("run", "-d", "--name", name, "busybox", "sleep", str(seconds))
    return moord.inspect(name)["State"]["Pid"]


def host_children(pid: int) -> list[int]:
    """List the host pids of the children of ``pid``, zombies included."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def process_state(pid: int) -> str | None:
    """Return the state letter of a process from /proc, or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    line = next(line for line in status.splitlines() if line.startswith("State:"))
    return line.split()[1]


# ---------------------------------------------------------------- exit status after a signal

def test_kill_signal_exit_137(moord):
    run_sleeper(moord, "victim")

    moord.moor("kill", "-s", "KILL", "victim")
    state = moord.wait_status("victim", "exited")["State"]

    assert state["ExitCode"] == 137
    assert state["ExitSignal"] == 9


EXEC_CASES = [
    pytest.param("kill -TERM $$", 143, 15, id="sigterm"),
    pytest.param("kill -ABRT $$", 134, 6, id="sigabrt"),
    pytest.param("exit 255", 255, 0, id="exit-255"),
    pytest.param("exit 300", 44, 0, id="exit-300-wraps"),
]


@pytest.mark.parametrize("script, code, signal_number", EXEC_CASES)
def test_exec_exit_code_cli(moord, script, code, signal_number):
    run_sleeper(moord, "box")

    result = moord.moor("exec", "box", "sh", "-c", script, check=False)

    assert result.returncode == code


@pytest.mark.parametrize("script, code, signal_number", EXEC_CASES)
def test_exec_exit_reports_signal(moord, script, code, signal_number):
    run_sleeper(moord, "box")

    result = moord.call("exec", id="box", args=["sh", "-c", script])

    assert result["exit_code"] == code
    assert result["signal"] == signal_number


def test_container_exit_code_3(moord):
    result = moord.moor("run", "--name", "three", "busybox", "sh", "-c", "exit 3", check=False)

    assert result.returncode == 3
    assert moord.inspect("three")["State"]["ExitCode"] == 3
    assert moord.inspect("three")["State"]["ExitSignal"] == 0


def test_host_kill_main_process_137(moord):
    pid = run_sleeper(moord, "target")
    assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x00300\x00"

    os.kill(pid, signal.SIGKILL)
    state = moord.wait_status("target", "exited")["State"]

    assert state["ExitCode"] == 137
    assert state["ExitSignal"] == 9
    assert state["ManuallyStopped"] is False
    assert moord.moor("wait", "target").stdout == b"137\n"


# ---------------------------------------------------------------- orphans and zombies

def make_orphans(moord, name: str) -> None:
    result = moord.moor("exec", name, "sh", "-c", "for i in 1 2 3 4 5; do (sleep 1 &); done")
    assert result.returncode == 0


def zombie_count(moord, name: str) -> int:
    return int(moord.moor("exec", name, "sh", "-c", ZOMBIE_COUNT).stdout)


def test_orphans_become_zombies_without_init(moord):
    """Orphans go to the container's PID 1, and `sleep` never waits, so their exits stay unreaped.

    The wait lets the orphans' `sleep 1` end.
    """
    pid = run_sleeper(moord, "reaperless", 3600)

    make_orphans(moord, "reaperless")
    wait_until(lambda: zombie_count(moord, "reaperless") == 5, 30, message="5 zombies in the container")

    children = host_children(pid)
    assert len(children) == 5
    assert [process_state(child) for child in children] == ["Z"] * 5


def test_stop_with_zombies_completes(moord):
    """`sleep` as PID 1 ignores SIGTERM, so `moor stop` ends it with SIGKILL: 137, and no process is left."""
    pid = run_sleeper(moord, "reaperless", 3600)
    cid = moord.inspect("reaperless")["Id"]
    make_orphans(moord, "reaperless")
    wait_until(lambda: zombie_count(moord, "reaperless") == 5, 30, message="5 zombies in the container")
    children = host_children(pid)

    moord.moor("stop", "-t", "1", "reaperless")
    state = moord.inspect("reaperless")["State"]

    assert state["Status"] == "exited"
    assert state["ExitCode"] == 137
    assert process_state(pid) is None
    assert [process_state(child) for child in children] == [None] * 5
    assert [h for h in CGROUP_ROOT.iterdir() if (h / "moorage" / cid).exists()] == []


def test_exec_returns_before_orphans_exit(moord):
    """The orphans keep the exec's stdout open for 300 s; the exec still returns once its shell exits."""
    pid = run_sleeper(moord, "parent", 3600)

    result = moord.moor("exec", "parent", "sh", "-c", "for i in 1 2 3 4 5; do (sleep 300 &); done; echo started")

    assert result.stdout == b"started\n"
    children = host_children(pid)
    assert len(children) == 5
    assert [Path(f"/proc/{child}/cmdline").read_bytes() for child in children] == [b"sleep\x00300\x00"] * 5


def run_with_init(moord, name: str) -> int:
    moord.moor("run", "-d", "--init", "--name", name, "busybox", "sleep", "3600")
    return moord.inspect(name)["State"]["Pid"]


def test_init_option_reaps_zombies(moord):
    """With --init, tini is PID 1 and collects the orphans, so none stays a zombie.

    The wait lets the orphans' `sleep 1` end and tini reap them.
    """
    run_with_init(moord, "reaper")

    make_orphans(moord, "reaper")
    wait_until(lambda: "sleep 1" not in moord.moor("exec", "reaper", "ps", "-o", "args").stdout.decode(), 30,
               message="the orphans' sleep 1 to end")

    assert zombie_count(moord, "reaper") == 0


def test_init_option_stop_ends_child_with_sigterm(moord):
    """tini passes SIGTERM on to `sleep`, which dies of it: 143, not a SIGKILL's 137."""
    run_with_init(moord, "reaper")

    moord.moor("stop", "-t", "10", "reaper")

    assert moord.inspect("reaper")["State"]["ExitCode"] == 143


def test_init_option_exit_code_is_child_code(moord):
    result = moord.moor("run", "--rm", "--init", "busybox", "sh", "-c", "exit 7", check=False)

    assert result.returncode == 7
