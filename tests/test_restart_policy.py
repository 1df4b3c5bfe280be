"""End-to-end tests of restart policies: retry limits, backoff, and stops that no policy undoes.

Each test runs its own moord with real shims and runc.  moord doubles the delay
before a restart from 100 ms up to 60 s and returns to 100 ms after a run of
10 s.  ``moor stop`` and ``moor kill`` mark a container as stopped by the user,
and neither a policy nor a moord restart in the same boot starts it again.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import psutil
import pytest
import zmq

from conftest import wait_until
from shim import protocol
from supervisor.client import subscribe_events

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running containers with runc needs root")

# A container that takes a while to stop: the trap runs after the current `sleep 1` ends.
SLOW_STOP = 'trap "echo got-term; sleep 5; exit 0" TERM; while :; do sleep 1; done'
# A container that exits at once on SIGTERM.  As PID 1 of its namespace, sh ignores SIGTERM without a trap.
QUICK_STOP = 'trap "exit 0" TERM; while :; do sleep 0.05; done'
# Time to watch a stopped container for an unwanted restart: many times the first backoff delay (0.1 s).
WATCH_SECONDS = 2.0


def alive(pid: int) -> bool:
    """Return whether ``pid`` runs, counting a zombie as gone."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run(moord, name: str, script: str, *options: str) -> dict:
    moord.moor("run", "-d", "--name", name, *options, "busybox", "sh", "-c", script)
    return moord.inspect(name)


def settled(moord, name: str, timeout: float = 60) -> dict:
    """Wait until the container has exited and its task is deleted; return ``inspect``.

    moord decides on a restart in the same step that clears the shim pid, so
    an exited container without a shim has no restart pending.
    """
    def done():
        info = moord.inspect(name)
        return info if info["State"]["Status"] == "exited" and info["Shim"]["Pid"] == 0 else None
    return wait_until(done, timeout, interval=0.05, message=f"container {name} to exit for good")


def running_after_restarts(moord, name: str, count: int) -> dict:
    """Wait until the container runs again after ``count`` restarts; return ``inspect``."""
    def ready():
        info = moord.inspect(name)
        return info if info["State"]["Running"] and info["RestartCount"] >= count else None
    return wait_until(ready, 30, message=f"container {name} to run after {count} restart(s)")


def watch_stays_stopped(moord, name: str) -> list[tuple[str, int]]:
    """Return every distinct ``(status, restart count)`` seen while watching the container."""
    seen = []
    deadline = time.monotonic() + WATCH_SECONDS
    while time.monotonic() < deadline:
        info = moord.inspect(name)
        state = (info["State"]["Status"], info["RestartCount"])
        if state not in seen:
            seen.append(state)
        # Time has to pass, because the check is that nothing happens after the stop.
        time.sleep(0.05)
    return seen


def next_event(sub: zmq.Socket, topics: tuple[str, ...], timeout: float) -> dict | None:
    """Return the next event with one of ``topics`` within ``timeout`` seconds, or None."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not sub.poll(int(left * 1000) + 1):
            return None
        name, body = sub.recv_multipart()
        if name.decode() in topics:
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
        return next_event(sub, (protocol.TOPIC_CONTAINER_CREATE,), 0.5)
    wait_until(receives, 30, message="the event subscription to receive")
    return sub


def collect_events(sub: zmq.Socket, container_id: str, topics: tuple[str, ...], count: int,
                   timeout: float = 60) -> list[dict]:
    """Return the first ``count`` events of the container with one of ``topics``."""
    events = []
    deadline = time.monotonic() + timeout
    while len(events) < count:
        event = next_event(sub, topics, max(0.0, deadline - time.monotonic()))
        assert event is not None, f"only {len(events)} of {count} {topics} events within {timeout} s"
        if event["id"] == container_id:
            events.append(event)
    return events


# -- retry limits ----------------------------------------------------------------------

RETRY_SCRIPTS = [
    pytest.param("echo try; exit 1", id="exits-at-once"),
    pytest.param("echo try; sleep 2; exit 1", id="runs-2s"),
]


@pytest.mark.parametrize("script", RETRY_SCRIPTS)
def test_on_failure_stops_after_max_retries(moord, script):
    """on-failure:3 runs the command 4 times, then leaves it exited with its code."""
    run(moord, "retrier", script, "--restart", "on-failure:3")

    info = settled(moord, "retrier")

    assert info["RestartCount"] == 3
    assert info["State"]["ExitCode"] == 1
    assert moord.logs("retrier") == b"try\n" * 4


def test_on_failure_ignores_exit_zero(moord):
    run(moord, "success", "echo once; exit 0", "--restart", "on-failure")

    info = settled(moord, "success")

    assert info["RestartCount"] == 0
    assert info["State"]["ExitCode"] == 0
    assert moord.logs("success") == b"once\n"


def test_no_policy_never_restarts(moord):
    run(moord, "plain", "echo once; exit 1")

    info = settled(moord, "plain")

    assert info["RestartCount"] == 0
    assert moord.logs("plain") == b"once\n"


# -- backoff ---------------------------------------------------------------------------

def test_always_backoff_grows(moord):
    """A container that exits at once under `always` is started again with growing gaps, never in a tight loop."""
    sub = subscribed_events(moord)
    moord.moor("run", "-d", "--name", "quitter", "--restart", "always", "busybox", "sh", "-c", "exit 0")
    container_id = moord.inspect("quitter")["Id"]

    starts = [event["ts"] for event in collect_events(sub, container_id, (protocol.TOPIC_TASK_START,), 6)]
    sub.close()
    moord.moor("stop", "quitter")
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]

    assert gaps[-1] > gaps[0], gaps
    assert gaps[-1] > gaps[-2] > gaps[-3], gaps


def test_backoff_resets_after_stable_run(moord, tmp_path):
    """After five quick failures a run of 11 s resets the delay: the next restart comes sooner than the last."""
    host_folder = tmp_path / "hb"
    host_folder.mkdir()
    script = ("echo run >> /hb/runs; n=$(wc -l < /hb/runs); "
              "if [ $n -eq 6 ]; then sleep 11; fi; exit 1")
    sub = subscribed_events(moord)
    moord.moor("run", "-d", "--name", "flaky", "--restart", "always", "-v", f"{host_folder}:/hb",
               "busybox", "sh", "-c", script)
    container_id = moord.inspect("flaky")["Id"]

    events = collect_events(sub, container_id, (protocol.TOPIC_TASK_START, protocol.TOPIC_TASK_EXIT), 14)
    sub.close()
    moord.moor("stop", "flaky")
    times = [(event["topic"], event["ts"]) for event in events]
    exits = [ts for topic, ts in times if topic == protocol.TOPIC_TASK_EXIT]
    starts = [ts for topic, ts in times if topic == protocol.TOPIC_TASK_START]
    # Delay before run 6 follows five quick failures; delay before run 7 follows the stable run 6.
    before_stable, after_stable = starts[5] - exits[4], starts[6] - exits[5]

    assert [topic for topic, _ in times] == [protocol.TOPIC_TASK_START, protocol.TOPIC_TASK_EXIT] * 7
    assert after_stable < before_stable, (before_stable, after_stable)


def waiting_to_restart(moord, name: str, count: int) -> dict:
    """Wait until the container waits for its restart after at least ``count`` restarts; return ``inspect``."""
    def ready():
        info = moord.inspect(name)
        return info if info["State"]["Restarting"] and info["RestartCount"] >= count else None
    return wait_until(ready, 30, interval=0.02, message=f"container {name} to wait for restart {count + 1}")


def test_moord_restart_keeps_restart_pending(moord):
    """moord killed while a container waits out its backoff delay: the new moord restarts it."""
    run(moord, "looper", "exit 1", "--restart", "always")
    before = waiting_to_restart(moord, "looper", 3)["RestartCount"]

    def restarted_again():
        count = moord.inspect("looper")["RestartCount"]
        return count if count > before else None

    moord.kill9()
    moord.start()
    after = wait_until(restarted_again, 30, message="another restart")
    moord.moor("stop", "looper")

    assert after > before


# -- stops that no policy undoes --------------------------------------------------------

def test_slow_stop_not_respawned(moord):
    """`moor stop` of an `always` container that takes 5 s to exit: it runs its trap once and stays stopped."""
    run(moord, "slow", SLOW_STOP, "--restart", "always")

    moord.moor("stop", "-t", "10", "slow")
    info = settled(moord, "slow")
    seen = watch_stays_stopped(moord, "slow")

    assert info["State"]["ExitCode"] == 0
    assert moord.logs("slow").count(b"got-term") == 1
    assert seen == [("exited", 0)]


def test_kill_not_undone_by_always(moord):
    run(moord, "killed", SLOW_STOP, "--restart", "always")

    moord.moor("kill", "-s", "KILL", "killed")
    info = settled(moord, "killed")
    seen = watch_stays_stopped(moord, "killed")

    assert info["State"]["ExitCode"] == 137
    assert info["State"]["ManuallyStopped"] is True
    assert seen == [("exited", 0)]


def test_stop_during_backoff_not_undone(moord):
    """`moor stop` while an `always` container waits out its backoff delay cancels the pending restart."""
    run(moord, "looper", "exit 1", "--restart", "always")
    waiting_to_restart(moord, "looper", 3)

    moord.moor("stop", "looper")
    info = settled(moord, "looper")
    seen = watch_stays_stopped(moord, "looper")

    assert info["State"]["ManuallyStopped"] is True
    assert seen == [("exited", info["RestartCount"])]


def test_host_kill_restarted_by_always(moord):
    """A death that moord did not cause (kill -9 from the host) is restarted per the policy."""
    pid = run(moord, "victim", SLOW_STOP, "--restart", "always")["State"]["Pid"]

    os.kill(pid, signal.SIGKILL)
    info = running_after_restarts(moord, "victim", 1)

    assert info["RestartCount"] == 1
    assert info["State"]["Pid"] != pid
    assert info["State"]["ManuallyStopped"] is False


def test_user_stop_survives_moord_restarts(moord):
    """`always` and `unless-stopped` containers stopped by the user stay stopped across two moord restarts."""
    names = ("stopped-always", "stopped-unless")
    for name, policy in zip(names, ("always", "unless-stopped")):
        run(moord, name, QUICK_STOP, "--restart", policy)
        moord.moor("stop", name)
        settled(moord, name)

    statuses = []
    for restart in (moord.kill9, moord.stop):
        restart()
        moord.start()
        statuses.append([moord.inspect(name)["State"]["Status"] for name in names])

    assert statuses == [["exited", "exited"], ["exited", "exited"]]
    assert [moord.inspect(name)["RestartCount"] for name in names] == [0, 0]


# -- after a reboot ---------------------------------------------------------------------------

def settled_or_running(moord, name: str) -> dict | None:
    """Return ``inspect`` once the container runs or has exited with no restart pending."""
    info = moord.inspect(name)
    if info["State"]["Running"] or (info["State"]["Status"] == "exited" and info["Shim"]["Pid"] == 0):
        return info
    return None


def fake_reboot(moord) -> None:
    """Make the stopped moord see another boot id, as after a reboot.

    A real reboot cannot happen in a test.  moord compares the kernel's boot
    id with the one it stored, so the stored one is changed instead.
    """
    db = sqlite3.connect(moord.root / "moorage.db")
    try:
        db.execute("UPDATE settings SET value = 'an-earlier-boot' WHERE key = 'boot_id'")
        db.commit()
    finally:
        db.close()


def crash_task(info: dict) -> None:
    """Kill the shim and the init of a running container, as a power cut would."""
    for pid in (info["Shim"]["Pid"], info["State"]["Pid"]):
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not alive(pid), 30, message=f"process {pid} to die")


REBOOT_CASES = [
    pytest.param("always", True, "running", id="always-stopped-by-user"),
    pytest.param("unless-stopped", True, "exited", id="unless-stopped-stopped-by-user"),
    pytest.param("unless-stopped", False, "running", id="unless-stopped-running"),
    pytest.param("no", False, "exited", id="no-running"),
]


@pytest.mark.parametrize("policy, stopped_by_user, expected", REBOOT_CASES)
def test_reboot_applies_policy(moord, policy, stopped_by_user, expected):
    before = run(moord, "survivor", QUICK_STOP, "--restart", policy)
    if stopped_by_user:
        moord.moor("stop", "survivor")
        settled(moord, "survivor")

    moord.stop()
    if not stopped_by_user:
        crash_task(before)
    fake_reboot(moord)
    moord.start()
    info = wait_until(lambda: settled_or_running(moord, "survivor"), 30,
                      message="the container to settle after the reboot")

    assert info["State"]["Status"] == expected
