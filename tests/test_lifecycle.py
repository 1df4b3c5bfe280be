"""End-to-end tests of a container's lifecycle through `moor` against a private moord.

Covered: run (foreground and detached), ps, logs, exec, stop, kill, wait, rm,
and the exit codes 0, 3, 137 (SIGKILL) and 143 (SIGTERM).  Every test uses
real runc, namespaces and cgroups through the `moord` fixture.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import REPO, wait_until
from supervisor.ocispec import RunOptions, build_spec

CGROUP_ROOT = Path("/sys/fs/cgroup")
READ_TIMEOUT = 30


def container_id(moord, ref: str) -> str:
    return moord.inspect(ref)["Id"]


def wait_for_log(moord, ref: str, text: bytes) -> bytes:
    """Wait until the stored output of a container contains ``text``, and return that output."""
    def logs_with_text() -> bytes | None:
        output = moord.logs(ref)
        return output if text in output else None

    return wait_until(logs_with_text, 30, message=f"{text!r} in the logs of {ref}")


def read_until(process: subprocess.Popen, marker: bytes) -> bytes:
    """Read a child's stdout until ``marker`` appears, and fail the test after READ_TIMEOUT seconds."""
    data = b""
    fd = process.stdout.fileno()

    def more() -> bool:
        nonlocal data
        readable, _, _ = select.select([fd], [], [], 0)
        if readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                pytest.fail(f"stdout closed before {marker!r}; got {data!r}")
            data += chunk
        return marker in data

    wait_until(more, READ_TIMEOUT, message=f"{marker!r} on the output of a foreground `moor run`")
    return data


def shared_pid_namespace_spec(folder: Path, args: list[str]) -> tuple[Path, str]:
    """Write a --spec file whose container joins the host's PID namespace.

    Return the file and the cgroup path it uses.  moord replaces root.path with
    the image's root, so the folder given here only has to exist for build_spec.
    """
    rootfs = folder / "unused-rootfs"
    (rootfs / "bin").mkdir(parents=True)
    cgroup = f"/moorage/test-{uuid.uuid4().hex[:12]}"
    spec = build_spec({}, RunOptions(args=tuple(args)), rootfs=str(rootfs), container_id="spec",
                      hostname="box", cgroups_path=cgroup)
    spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "pid"]
    path = folder / "config.json"
    path.write_text(json.dumps(spec))
    return path, cgroup


@pytest.fixture
def spec_cgroups():
    """Collect cgroup paths that tests give in --spec files and remove what runc leaves of them.

    Tests request this fixture before ``moord``, so its teardown runs after moord's cleanup.
    """
    paths: list[str] = []
    yield paths
    for path in paths:
        for hierarchy in CGROUP_ROOT.iterdir():
            try:
                (hierarchy / path.lstrip("/")).rmdir()
            except OSError:
                pass


# ---------------------------------------------------------------- foreground run

@pytest.mark.parametrize("code", [0, 3], ids=["exit-0", "exit-3"])
def test_run_foreground_exit_status(moord, code):
    result = moord.moor("run", "busybox", "sh", "-c", f"echo out; echo err >&2; exit {code}", check=False)

    assert result.returncode == code, result.stderr
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"


def test_run_foreground_streams_before_exit(moord, tmp_path):
    """The first line arrives while the container still runs, because it exits only after the test reads it."""
    sync = tmp_path / "sync"
    sync.mkdir()
    script = "echo ready; while [ ! -e /sync/go ]; do sleep 0.05; done; echo done; exit 5"
    command = [sys.executable, "-m", "supervisor.cli", "--state", str(moord.state), "run",
               "-v", f"{sync}:/sync", "busybox", "sh", "-c", script]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        first = read_until(process, b"ready\n")
        (sync / "go").touch()
        rest, errors = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)

    assert first == b"ready\n"
    assert rest == b"done\n"
    assert process.returncode == 5, errors


def test_run_rm_removes_container(moord):
    result = moord.moor("run", "--rm", "--name", "gone", "busybox", "sh", "-c", "exit 3", check=False)

    assert result.returncode == 3, result.stderr
    assert moord.moor("ps", "-a", "-q").stdout == b""
    # The root and the task are cleared just after the reply, so wait for that.
    wait_until(lambda: list((moord.root / "containers").iterdir()) == [], 30, message="the container's folder to go")


def test_run_rm_name_free_when_run_returns(moord):
    moord.moor("run", "--rm", "--name", "again", "busybox", "true")

    assert moord.moor("run", "--rm", "--name", "again", "busybox", "true").returncode == 0


def test_stop_removes_rm_container(moord):
    moord.moor("run", "-d", "--rm", "--name", "brief", "busybox", "sleep", "300")

    moord.moor("stop", "-t", "0", "brief")

    assert moord.moor("ps", "-a", "-q").stdout == b""


# ---------------------------------------------------------------- detached run, ps, logs

def test_run_detached_prints_id(moord):
    output = moord.moor("run", "-d", "--name", "web", "busybox", "sleep", "300").stdout.decode()

    assert re.fullmatch(r"[0-9a-f]{64}\n", output)
    assert moord.inspect("web")["Id"] == output.strip()
    assert moord.inspect("web")["State"]["Status"] == "running"


def test_ps_lists_running_only(moord):
    moord.moor("run", "-d", "--name", "up", "busybox", "sleep", "300")
    moord.moor("run", "--name", "done", "busybox", "sh", "-c", "exit 3", check=False)

    running = moord.moor("ps").stdout.decode().splitlines()
    everything = moord.moor("ps", "-a").stdout.decode().splitlines()

    assert len(running) == 2
    assert running[1].endswith(" up")
    assert "Up " in running[1]
    assert len(everything) == 3
    assert any(line.endswith(" done") and "Exited (3)" in line for line in everything[1:])


def test_ps_quiet_prints_short_ids(moord):
    full = moord.moor("run", "-d", "busybox", "sleep", "300").stdout.decode().strip()

    assert moord.moor("ps", "-q").stdout.decode() == full[:12] + "\n"
    assert moord.moor("ps", "-q", "--no-trunc").stdout.decode() == full + "\n"


def test_logs_keeps_both_streams(moord):
    moord.moor("run", "-d", "--name", "talk", "busybox", "sh", "-c", "echo one; echo two >&2; echo three")
    moord.wait_status("talk", "exited")

    result = moord.moor("logs", "talk")

    assert result.stdout == b"one\nthree\n"
    assert result.stderr == b"two\n"


def test_logs_tail_last_line(moord):
    moord.moor("run", "--name", "lines", "busybox", "sh", "-c", "echo a; echo b; echo c")

    assert moord.moor("logs", "--tail", "1", "lines").stdout == b"c\n"


# ---------------------------------------------------------------- exec

def test_exec_streams_and_returns_code(moord):
    moord.moor("run", "-d", "--name", "box", "busybox", "sleep", "300")

    result = moord.moor("exec", "box", "sh", "-c", "echo in-exec; echo oops >&2; exit 7", check=False)

    assert result.returncode == 7
    assert result.stdout == b"in-exec\n"
    assert result.stderr == b"oops\n"


def test_exec_env_and_workdir(moord):
    moord.moor("run", "-d", "--name", "box", "busybox", "sleep", "300")

    result = moord.moor("exec", "-e", "GREETING=a=b", "-w", "/tmp", "box", "sh", "-c", 'echo "$GREETING"; pwd')

    assert result.stdout == b"a=b\n/tmp\n"


def test_exec_output_not_in_container_logs(moord):
    moord.moor("run", "-d", "--name", "box", "busybox", "sh", "-c", "echo main; exec sleep 300")
    wait_for_log(moord, "box", b"main\n")

    moord.moor("exec", "box", "echo", "from-exec")

    assert moord.logs("box") == b"main\n"


def test_exec_stopped_container_rejected(moord):
    moord.moor("run", "--name", "done", "busybox", "true")

    result = moord.moor("exec", "done", "true", check=False)

    assert result.returncode == 125
    assert b"container done is not running (it is exited)" in result.stderr


# ---------------------------------------------------------------- stop, kill, wait

def test_stop_pid1_without_handler_gets_137(moord):
    """`sleep` as the container's PID 1 has no SIGTERM handler, so the kernel drops SIGTERM.

    The init of a PID namespace receives only signals it handles, apart from
    SIGKILL and SIGSTOP sent from an ancestor namespace (pid_namespaces(7)).
    `moor stop` therefore ends it with SIGKILL after the timeout, as docker does.
    """
    moord.moor("run", "-d", "--name", "sleeper", "busybox", "sleep", "300")

    moord.moor("stop", "-t", "1", "sleeper")
    state = moord.inspect("sleeper")["State"]

    assert state["Status"] == "exited"
    assert state["ExitCode"] == 137
    assert state["ExitSignal"] == 9
    assert state["ManuallyStopped"] is True


def test_stop_term_handler_exit_code(moord):
    script = 'trap "echo got-term; exit 0" TERM; echo ready; while :; do sleep 0.05; done'
    moord.moor("run", "-d", "--name", "polite", "busybox", "sh", "-c", script)
    wait_for_log(moord, "polite", b"ready\n")

    moord.moor("stop", "-t", "60", "polite")
    state = moord.inspect("polite")["State"]

    assert state["ExitCode"] == 0
    assert state["ExitSignal"] == 0
    assert moord.logs("polite") == b"ready\ngot-term\n"


def test_kill_default_signal_137(moord):
    moord.moor("run", "-d", "--name", "victim", "busybox", "sleep", "300")

    moord.moor("kill", "victim")
    moord.wait_status("victim", "exited")

    assert moord.moor("wait", "victim").stdout == b"137\n"
    assert moord.inspect("victim")["State"]["ExitSignal"] == 9


def test_kill_term_outside_pid_namespace_143(spec_cgroups, moord, tmp_path):
    """A main process killed by SIGTERM is reported as 143 with signal 15.

    Inside its own PID namespace the main process is PID 1, which the kernel
    never lets die from SIGTERM: a signal without a handler is dropped, and
    with a handler the process exits by itself (pid_namespaces(7)).  Neither
    `trap - TERM` nor re-raising from a handler changes that, and Moorage has
    no --init that would run the command as a child of PID 1.  The genuine
    case is a main process that is not a namespace init, so this container
    comes from a --spec file without a "pid" namespace.
    """
    spec, cgroup = shared_pid_namespace_spec(tmp_path, ["sleep", "300"])
    spec_cgroups.append(cgroup)
    moord.moor("run", "-d", "--name", "hostpid", "--spec", str(spec), "busybox")
    moord.wait_status("hostpid", "running")

    moord.moor("kill", "-s", "TERM", "hostpid")
    state = moord.wait_status("hostpid", "exited")["State"]

    assert state["ExitCode"] == 143
    assert state["ExitSignal"] == 15
    assert moord.moor("wait", "hostpid").stdout == b"143\n"


def test_wait_prints_exit_code(moord):
    moord.moor("run", "-d", "--name", "three", "busybox", "sh", "-c", "exit 3")

    result = moord.moor("wait", "three")

    assert result.returncode == 0
    assert result.stdout == b"3\n"


def test_wait_blocks_until_exit(moord):
    moord.moor("run", "-d", "--name", "long", "busybox", "sleep", "300")
    command = [sys.executable, "-m", "supervisor.cli", "--state", str(moord.state), "wait", "long"]
    waiter = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        moord.moor("kill", "long")
        output, errors = waiter.communicate(timeout=60)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait(10)

    assert waiter.returncode == 0, errors
    assert output == b"137\n"


# ---------------------------------------------------------------- rm

def test_rm_exited_container(moord):
    moord.moor("run", "--name", "old", "busybox", "true")
    cid = container_id(moord, "old")

    result = moord.moor("rm", "old")

    assert result.stdout == b"old\n"
    assert moord.moor("ps", "-a", "-q").stdout == b""
    assert not (moord.root / "containers" / cid).exists()


def test_rm_running_needs_force(moord):
    moord.moor("run", "-d", "--name", "busy", "busybox", "sleep", "300")

    result = moord.moor("rm", "busy", check=False)

    assert result.returncode == 5
    assert b"container busy is running" in result.stderr
    assert b"moor rm -f" in result.stderr
    assert moord.inspect("busy")["State"]["Status"] == "running"


def test_rm_force_running_cleans_up(moord):
    moord.moor("run", "-d", "--name", "busy", "busybox", "sleep", "300")
    cid = container_id(moord, "busy")

    moord.moor("rm", "-f", "busy")

    assert moord.moor("ps", "-a", "-q").stdout == b""
    assert not (moord.root / "containers" / cid).exists()
    assert not (moord.state / "runc" / cid).exists()
    assert [h for h in CGROUP_ROOT.iterdir() if (h / "moorage" / cid).exists()] == []


def test_shim_dying_before_answer_fails_start(moord_factory, tmp_path):
    """A shim that dies while it creates the container fails the start at once, not after the timeout."""
    runtime = tmp_path / "runtime"
    # The runtime's parent is the shim's create worker; the worker's parent is the shim.
    runtime.write_text('#!/bin/sh\n'
                       'case " $* " in *" create "*) kill -9 "$(ps -o ppid= -p "$PPID" | tr -d " ")";; esac\n'
                       'exec runc "$@"\n')
    runtime.chmod(0o755)
    moord = moord_factory("--runtime", str(runtime))

    result = moord.moor("run", "--rm", "busybox", "true", check=False, timeout=60)

    assert result.returncode == 125
    assert b"exited before it answered" in result.stderr


@pytest.mark.parametrize("template, expected", [
    pytest.param("{{.Name}}", "shown", id="field"),
    pytest.param("{{.State.Running}}", "true", id="bool"),
    pytest.param("{{json .Config.Cmd}}", '["sleep", "300"]', id="json"),
    pytest.param("name={{ .Name }} status={{.State.Status}}", "name=shown status=running", id="text-around"),
])
def test_inspect_format_template(moord, template, expected):
    moord.moor("run", "-d", "--name", "shown", "busybox", "sleep", "300")

    assert moord.moor("inspect", "-f", template, "shown").stdout.decode() == expected + "\n"


def test_inspect_format_unknown_field_named(moord):
    moord.moor("run", "-d", "--name", "shown", "busybox", "sleep", "300")

    result = moord.moor("inspect", "-f", "{{.Nope}}", "shown", check=False)

    assert result.returncode == 2
    assert b"no field '.Nope'" in result.stderr
