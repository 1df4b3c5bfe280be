"""End-to-end tests of live restore: containers outlive moord, and moord catches up when it returns.

Each test runs its own moord (the ``moord`` fixture), real shims, real runc and
a bind-mounted host folder that the containers use to signal the test.  While
moord is down, the test drives the containers through that folder or kills
processes from the host, then starts moord again and checks what it reports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from conftest import REPO, wait_until
from shim.protocol import NotFound

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running containers with runc needs root")

# Shell loop that waits until the test creates /hb/go in the bind-mounted folder.
WAIT_FOR_GO = "while [ ! -e /hb/go ]; do sleep 0.05; done"
# Numbered lines every 10 ms. /hb/beat contains the last number and is replaced by a rename,
# so a reader never sees it empty.
NUMBERED_LINES = ('i=0; while :; do i=$((i+1)); echo "line $i"; '
                  'echo $i > /hb/beat.new; mv /hb/beat.new /hb/beat; sleep 0.01; done')


def alive(pid: int) -> bool:
    """Return whether ``pid`` runs, counting a zombie as gone."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def is_shim(pid: int) -> bool:
    try:
        return any("shim" in part for part in psutil.Process(pid).cmdline())
    except psutil.NoSuchProcess:
        return False


def running_after_restarts(moord, name: str, count: int) -> dict:
    """Wait until the container runs again after ``count`` restarts; return ``inspect``."""
    def ready():
        info = moord.inspect(name)
        return info if info["State"]["Running"] and info["RestartCount"] >= count else None
    return wait_until(ready, 30, message=f"container {name} to run after {count} restart(s)")


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def last_beat(host_folder: Path) -> int:
    path = host_folder / "beat"
    return int(path.read_text()) if path.exists() else 0


def log_numbers(output: bytes) -> list[int]:
    return [int(line.split()[1]) for line in output.decode().splitlines()]


def ps_rows(moord) -> dict[str, str]:
    """Return the STATUS column of ``moor ps -a`` by container name."""
    lines = moord.moor("ps", "-a").stdout.decode().splitlines()
    header = lines[0]
    start, end = header.index("STATUS"), header.index("NAMES")
    return {line[end:].strip(): line[start:end].strip() for line in lines[1:]}


@pytest.fixture
def host_folder(tmp_path) -> Path:
    """A host folder that containers see at /hb."""
    folder = tmp_path / "hb"
    folder.mkdir()
    return folder


def run(moord, name: str, host_folder: Path, script: str, *options: str) -> dict:
    moord.moor("run", "-d", "--name", name, "-v", f"{host_folder}:/hb", *options, "busybox", "sh", "-c", script)
    return moord.wait_status(name, "running")


# -- moord going away leaves containers alone ---------------------------------------

def test_kill9_leaves_container_running(moord, host_folder):
    pid = run(moord, "sleeper", host_folder, "exec sleep 3600")["State"]["Pid"]

    moord.kill9()

    assert alive(pid)


def test_kill9_restart_finds_same_process(moord, host_folder):
    before = run(moord, "sleeper", host_folder, "exec sleep 3600")

    moord.kill9()
    moord.start()
    after = moord.inspect("sleeper")

    assert after["State"]["Status"] == "running"
    assert after["State"]["Pid"] == before["State"]["Pid"]
    assert after["Shim"]["Pid"] == before["Shim"]["Pid"]


def test_sigterm_leaves_container_running(moord, host_folder):
    pid = run(moord, "sleeper", host_folder, "exec sleep 3600")["State"]["Pid"]

    moord.stop()

    assert moord.process.returncode == 0
    assert alive(pid)


def test_sigterm_restart_finds_same_process(moord, host_folder):
    before = run(moord, "sleeper", host_folder, "exec sleep 3600")

    moord.stop()
    moord.start()
    after = moord.inspect("sleeper")

    assert after["State"]["Status"] == "running"
    assert after["State"]["Pid"] == before["State"]["Pid"]
    assert after["Shim"]["Pid"] == before["Shim"]["Pid"]


# -- what happened while moord was down ---------------------------------------------

def test_ps_after_restart_shows_downtime_exit(moord, host_folder):
    """One container keeps running and another exits with 7 while moord is killed."""
    run(moord, "writer", host_folder, "i=0; while :; do i=$((i+1)); echo \"line $i\"; sleep 0.01; done")
    quitter = run(moord, "quitter", host_folder, f"{WAIT_FOR_GO}; exit 7")

    moord.kill9()
    (host_folder / "go").touch()
    wait_until(lambda: not alive(quitter["State"]["Pid"]), 30, message="quitter to exit")
    moord.start()
    moord.wait_status("quitter", "exited")
    rows = ps_rows(moord)

    assert rows["writer"].startswith("Up ")
    assert rows["quitter"].startswith("Exited (7) ")
    assert moord.inspect("quitter")["State"]["ExitCode"] == 7


def test_logs_across_kill9_have_no_gap(moord, host_folder):
    """Numbered lines written before, during and after moord's downtime come back once each, in order."""
    run(moord, "writer", host_folder, NUMBERED_LINES)
    wait_until(lambda: len(log_numbers(moord.logs("writer"))) >= 20, 30, message="first lines in the log")
    beat = lambda: last_beat(host_folder)

    moord.kill9()
    at_kill = beat()
    wait_until(lambda: beat() >= at_kill + 50, 30, message="50 lines written while moord is down")
    at_start = beat()
    moord.start()
    wait_until(lambda: log_numbers(moord.logs("writer"))[-1] > at_start + 20, 30,
               message="lines written after the restart in the log")
    moord.moor("kill", "writer")
    moord.wait_status("writer", "exited")
    numbers = log_numbers(moord.logs("writer"))

    assert numbers == list(range(1, len(numbers) + 1))
    assert numbers[-1] > at_start


def test_logs_across_sigterm_have_no_gap(moord, host_folder):
    run(moord, "writer", host_folder, NUMBERED_LINES)
    wait_until(lambda: len(log_numbers(moord.logs("writer"))) >= 20, 30, message="first lines in the log")
    beat = lambda: last_beat(host_folder)

    moord.stop()
    at_stop = beat()
    wait_until(lambda: beat() >= at_stop + 50, 30, message="50 lines written while moord is down")
    at_start = beat()
    moord.start()
    wait_until(lambda: log_numbers(moord.logs("writer"))[-1] > at_start + 20, 30,
               message="lines written after the restart in the log")
    moord.moor("kill", "writer")
    moord.wait_status("writer", "exited")
    numbers = log_numbers(moord.logs("writer"))

    assert numbers == list(range(1, len(numbers) + 1))
    assert numbers[-1] > at_start


def test_output_after_caught_up_restart_is_logged(moord, host_folder):
    """Output that starts after moord came back, having stored everything before, reaches the log."""
    run(moord, "speaker", host_folder, f"echo before; {WAIT_FOR_GO}; echo after; exec sleep 3600")
    wait_until(lambda: moord.logs("speaker") == b"before\n", 30, message="the first line in the log")

    moord.kill9()
    moord.start()
    (host_folder / "go").touch()

    wait_until(lambda: moord.logs("speaker") == b"before\nafter\n", 30, message="the second line in the log")


def test_vanished_shim_marks_container_exited(moord, host_folder):
    info = run(moord, "orphan", host_folder, "exec sleep 3600")
    shim_pid, init_pid = info["Shim"]["Pid"], info["State"]["Pid"]
    assert is_shim(shim_pid)

    moord.stop()
    os.kill(shim_pid, signal.SIGKILL)
    wait_until(lambda: not alive(shim_pid), 30, message="the shim to die")
    os.kill(init_pid, signal.SIGKILL)
    wait_until(lambda: not alive(init_pid), 30, message="the container's init to die")
    moord.start()
    state = moord.inspect("orphan")["State"]

    assert state["Status"] == "exited"
    assert state["ExitCode"] == 255
    assert "shim" in state["Error"]
    assert "vanished" in state["Error"]


# -- a container that exits while moord is down ---------------------------------------

EXIT_VARIANTS = [
    pytest.param("exit", 42, id="exit-42"),
    pytest.param("host-sigkill", 137, id="host-sigkill"),
]


def exit_while_down(moord, host_folder: Path, how: str, *options: str) -> tuple[dict, float, float]:
    """Kill moord, end the container by an exit or a host SIGKILL (``how``), wait, then restart moord.

    Return what ``inspect`` showed before, and host times before and after the end.
    """
    info = run(moord, "ender", host_folder, f"{WAIT_FOR_GO}; exit 42", *options)
    init_pid = info["State"]["Pid"]
    assert is_shim(info["Shim"]["Pid"])

    moord.kill9()
    ended_after = time.time()
    if how == "exit":
        (host_folder / "go").touch()
    else:
        os.kill(init_pid, signal.SIGKILL)
    wait_until(lambda: not alive(init_pid), 30, message="the container's init to end")
    ended_before = time.time()
    # Time must pass, so that a finish time taken from moord's restart would differ from the real one.
    time.sleep(1.5)
    moord.start()
    return info, ended_after, ended_before


@pytest.mark.parametrize("how, code", EXIT_VARIANTS)
def test_exit_while_down_reports_status(moord, host_folder, how, code):
    _, ended_after, ended_before = exit_while_down(moord, host_folder, how)
    state = moord.wait_status("ender", "exited")["State"]

    assert state["ExitCode"] == code
    assert parse_time(state["FinishedAt"]) >= ended_after
    assert parse_time(state["FinishedAt"]) <= ended_before


def test_exit_while_down_ends_shim(moord, host_folder):
    before, _, _ = exit_while_down(moord, host_folder, "exit")
    shim_pid = before["Shim"]["Pid"]

    moord.wait_status("ender", "exited")
    wait_until(lambda: not alive(shim_pid), 30, message=f"shim {shim_pid} to exit")
    # moord records the exit first and clears the shim pid once the task is deleted.
    after = wait_until(lambda: (lambda info: info if info["Shim"]["Pid"] == 0 else None)(moord.inspect("ender")),
                       30, message="moord to forget the shim")

    assert after["Shim"]["Pid"] == 0
    assert list((moord.state / "shims").iterdir()) == []


def test_exit_while_down_then_rm(moord, host_folder):
    exit_while_down(moord, host_folder, "exit")
    moord.wait_status("ender", "exited")

    moord.moor("rm", "ender")

    with pytest.raises(NotFound):
        moord.inspect("ender")
    assert "ender" not in ps_rows(moord)


def test_exit_while_down_restarts_once_on_failure(moord, host_folder):
    """With on-failure, an exit while moord was down leads to exactly one new run."""
    script = (f"echo run >> /hb/runs; if [ -e /hb/go ]; then exec sleep 3600; fi; touch /hb/waiting; "
              f"{WAIT_FOR_GO}; exit 42")
    info = run(moord, "ender", host_folder, script, "--restart", "on-failure")
    init_pid = info["State"]["Pid"]
    # The first run must be past its check of /hb/go before the test creates it.
    wait_until((host_folder / "waiting").exists, 30, message="the first run to wait for /hb/go")

    moord.kill9()
    (host_folder / "go").touch()
    wait_until(lambda: not alive(init_pid), 30, message="the first run to exit")
    moord.start()
    info = running_after_restarts(moord, "ender", 1)

    assert info["RestartCount"] == 1
    assert (host_folder / "runs").read_text() == "run\nrun\n"


# -- moord dies between creating and starting a task -------------------------------------

class SlowCreate:
    """A runtime wrapper around runc whose ``create`` waits for the test while ``slow`` exists.

    moord cannot be killed at an exact point otherwise.  The wrapper keeps
    moord waiting between the shim's ``runc create`` and its ``start`` request.
    """

    def __init__(self, folder: Path):
        folder.mkdir()
        self.slow, self.creating, self.release = folder / "slow", folder / "creating", folder / "release"
        self.path = folder / "runc-slow-create"
        self.path.write_text(
            "#!/bin/sh\n"
            'for arg in "$@"; do\n'
            f'  if [ "$arg" = create ] && [ -e {self.slow} ]; then\n'
            f"    touch {self.creating}\n"
            f"    while [ ! -e {self.release} ]; do sleep 0.05; done\n"
            "  fi\n"
            "done\n"
            'exec runc "$@"\n')
        self.path.chmod(0o755)

    def kill_moord_during_create(self, moord) -> None:
        wait_until(self.creating.exists, 30, message="runc create to begin")
        moord.kill9()
        self.slow.unlink()
        self.release.touch()


def runc_containers(moord) -> list[str]:
    result = subprocess.run(["runc", "--root", str(moord.state / "runc"), "list", "-q"],
                            capture_output=True, text=True, timeout=30, check=True)
    return result.stdout.split()


def interrupt_start(moord, runtime: SlowCreate, name: str) -> None:
    """Run `moor start` and SIGKILL moord while the shim runs ``runc create``."""
    runtime.slow.touch()
    client = subprocess.Popen([sys.executable, "-m", "supervisor.cli", "--state", str(moord.state), "start", name],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        runtime.kill_moord_during_create(moord)
    finally:
        client.kill()  # its moord is gone, and it would wait for the reply forever
        client.wait(10)


def test_interrupted_start_runs_after_restart(moord_factory, tmp_path):
    """moord killed while it starts a container: the shim finishes the start, and the next moord adopts it."""
    runtime = SlowCreate(tmp_path / "runtime")
    moord = moord_factory("--runtime", str(runtime.path))
    moord.moor("create", "--name", "pending", "busybox", "sleep", "3600")
    interrupt_start(moord, runtime, "pending")
    shim_pids = [int(path.read_text()) for path in (moord.state / "shims").glob("*/shim.pid")]

    moord.start()
    info = moord.wait_status("pending", "running")

    assert info["Shim"]["Pid"] in shim_pids
    assert alive(info["State"]["Pid"])
    assert len(runc_containers(moord)) == 1


def test_stop_after_interrupted_start(moord_factory, tmp_path):
    runtime = SlowCreate(tmp_path / "runtime")
    moord = moord_factory("--runtime", str(runtime.path))
    moord.moor("create", "--name", "pending", "busybox", "sleep", "3600")
    interrupt_start(moord, runtime, "pending")
    moord.start()
    pid = moord.wait_status("pending", "running")["State"]["Pid"]

    moord.moor("stop", "-t", "1", "pending")

    assert moord.inspect("pending")["State"]["Status"] == "exited"
    assert not alive(pid)


def test_interrupted_restart_runs_again(moord_factory, tmp_path, host_folder):
    """moord killed while a restart policy starts a container again: after the restart, the container runs."""
    runtime = SlowCreate(tmp_path / "runtime")
    moord = moord_factory("--runtime", str(runtime.path))
    script = (f"echo run >> /hb/runs; if [ -e /hb/go ]; then exec sleep 3600; fi; touch /hb/waiting; "
              f"{WAIT_FOR_GO}; exit 1")
    run(moord, "flaky", host_folder, script, "--restart", "always")
    # The first run must be past its check of /hb/go before the test creates it.
    wait_until((host_folder / "waiting").exists, 30, message="the first run to wait for /hb/go")

    runtime.slow.touch()
    (host_folder / "go").touch()
    runtime.kill_moord_during_create(moord)
    moord.start()
    info = running_after_restarts(moord, "flaky", 1)

    assert info["State"]["Status"] == "running"
    assert (host_folder / "runs").read_text() == "run\nrun\n"
    assert len(runc_containers(moord)) == 1


def test_interrupted_removal_finished_on_start(moord, host_folder):
    """A ``--rm`` container that moord retired but did not clear before it died is cleared by the next moord.

    The crash cannot be timed for real between the two steps, so the test
    stops moord and applies the first step (``Store.retire``, the code moord
    runs) to a live container, which is the state such a crash leaves.
    """
    from supervisor.store import Store

    info = run(moord, "halfgone", host_folder, "sleep 3600", "--rm")
    shim_pid, init_pid = info["Shim"]["Pid"], info["State"]["Pid"]
    moord.kill9()
    store = Store(moord.root / "moorage.db")
    try:
        record = next(r for r in store.all() if r.id == info["Id"])
        store.retire(record)
    finally:
        store.close()

    moord.start()

    wait_until(lambda: not alive(shim_pid), 30, message=f"shim {shim_pid} to exit")
    wait_until(lambda: not (moord.root / "containers" / info["Id"]).exists(), 30, message="the container's folder to go")
    assert not alive(init_pid)
    assert "halfgone" not in ps_rows(moord)


def test_unrecorded_shim_adopted_on_start(moord, host_folder):
    """A shim that moord forked but died before recording is found and adopted by the next moord.

    The crash cannot be timed for real in the microseconds between the fork
    and the database write, so the test stops moord and puts back the row as
    it was before that start: exited, with no shim.
    """
    import sqlite3

    info = run(moord, "unnoted", host_folder, "exec sleep 3600")
    shim_pid, init_pid = info["Shim"]["Pid"], info["State"]["Pid"]
    moord.kill9()
    db = sqlite3.connect(moord.root / "moorage.db")
    try:
        db.execute("UPDATE containers SET status = 'exited', shim_pid = 0, shim_start_time = 0, pid = 0 "
                   "WHERE id = ?", (info["Id"],))
        db.commit()
    finally:
        db.close()

    moord.start()
    after = moord.wait_status("unnoted", "running")

    assert after["Shim"]["Pid"] == shim_pid
    assert after["State"]["Pid"] == init_pid
    assert alive(init_pid)
