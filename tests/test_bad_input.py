"""End-to-end tests of `moor` errors: their messages, their exit codes, and what they leave behind.

Exit codes come from the table in supervisor/cli.py.  `run` and `exec` exit
with 125 when moord reports an error and with 127 when the command is not
found.  The other commands exit with 2 for invalid input, 3 for an unknown
container or image, 4 for a name in use, 5 for a wrong state and 6 when
moord is not running.

``assert_nothing_left`` is shared with the OCI-config and process-case tests.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import wait_until

CGROUP_ROOT = Path("/sys/fs/cgroup")
RUNTIME_NOT_FOUND = b'exec: "nosuch-command": executable file not found in $PATH'


# ---------------------------------------------------------------- leftovers

def created_ids(moord) -> list[str]:
    """List the id of every container this moord created, from its log.

    Other moords on the host may run at the same time, so leftovers are looked
    up by id instead of by comparing whole cgroup folders.  A container that
    failed before this log line was never given to runc, so it has no cgroup.
    """
    text = (moord.root / "moord.log").read_text(errors="replace")
    return re.findall(r"container ([0-9a-f]{64}) created as ", text)


def cgroups_of(container_ids: list[str]) -> list[Path]:
    """List the cgroup folders of these containers that still exist, in every hierarchy."""
    return [hierarchy / "moorage" / cid for hierarchy in CGROUP_ROOT.iterdir() for cid in container_ids
            if (hierarchy / "moorage" / cid).exists()]


def shim_pids(moord) -> list[int]:
    """List live shim processes that have a file open in this moord's shims folder."""
    folder = str(moord.state / "shims") + "/"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"shim" not in (entry / "cmdline").read_bytes():
                continue
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        if any(link.startswith(folder) for link in links):
            pids.append(int(entry.name))
    return pids


def mounts_under(*folders: Path) -> list[str]:
    """List the host's mount points inside any of ``folders``."""
    prefixes = tuple(str(folder) + "/" for folder in folders)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as file:
        points = [line.split()[4] for line in file]
    return [point for point in points if point.startswith(prefixes)]


def folder_entries(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir()) if folder.is_dir() else []


def assert_nothing_left(moord) -> None:
    """Check that moord keeps no container and that no container's resources remain."""
    assert moord.moor("ps", "-a", "-q").stdout == b""
    assert folder_entries(moord.root / "containers") == []
    assert folder_entries(moord.state / "shims") == []
    assert folder_entries(moord.state / "runc") == []
    wait_until(lambda: not shim_pids(moord), 30, message="every shim of this moord to exit")
    assert cgroups_of(created_ids(moord)) == []
    assert mounts_under(moord.root, moord.state) == []


def assert_task_gone(moord, ref: str) -> None:
    """Check that a container that is still listed has no shim, runc state, cgroup or mount."""
    cid = moord.inspect(ref)["Id"]
    assert folder_entries(moord.state / "shims") == []
    assert not (moord.state / "runc" / cid).exists()
    wait_until(lambda: not shim_pids(moord), 30, message="every shim of this moord to exit")
    assert cgroups_of(created_ids(moord)) == []
    assert mounts_under(moord.root, moord.state) == []


# ---------------------------------------------------------------- moord not running

@pytest.mark.parametrize("args, code", [
    pytest.param(("ps",), 6, id="ps"),
    pytest.param(("run", "busybox", "true"), 125, id="run"),
])
def test_moord_not_running_error(moord_factory, args, code):
    daemon = moord_factory(start=False)

    result = daemon.moor(*args, check=False)

    socket = daemon.state / "moord.sock"
    assert result.returncode == code
    assert f"moord is not running: nothing listens on {socket}".encode() in result.stderr
    assert f"moord --state {daemon.state}".encode() in result.stderr
    assert b"Traceback" not in result.stderr


def test_moord_stopped_error(moord):
    moord.stop()

    result = moord.moor("ps", check=False)

    assert result.returncode == 6
    assert b"moord is not running" in result.stderr


# ---------------------------------------------------------------- unknown container or image

@pytest.mark.parametrize("args", [
    ("inspect", "nosuch"), ("start", "nosuch"), ("stop", "nosuch"), ("kill", "nosuch"),
    ("rm", "nosuch"), ("wait", "nosuch"), ("logs", "nosuch"), ("restart", "nosuch"),
], ids=lambda args: args[0])
def test_unknown_container_exit_3(moord, args):
    result = moord.moor(*args, check=False)

    assert result.returncode == 3
    assert result.stderr == b"moor: no such container: nosuch (see `moor ps -a`)\n"


def test_exec_unknown_container_exit_125(moord):
    result = moord.moor("exec", "nosuch", "true", check=False)

    assert result.returncode == 125
    assert b"no such container: nosuch" in result.stderr


@pytest.mark.parametrize("verb, code", [("run", 125), ("create", 3)])
def test_unknown_image_rejected(moord, verb, code):
    result = moord.moor(verb, "nosuch-image", "true", check=False)

    assert result.returncode == code
    assert b"image 'nosuch-image' not found" in result.stderr
    assert_nothing_left(moord)


# ---------------------------------------------------------------- names and ids

@pytest.mark.parametrize("verb, code", [("run", 125), ("create", 4)])
def test_name_in_use_rejected(moord, verb, code):
    moord.moor("run", "-d", "--name", "taken", "busybox", "sleep", "300")
    first = moord.inspect("taken")["Id"]

    result = moord.moor(verb, "--name", "taken", "busybox", "true", check=False)

    assert result.returncode == code
    assert b"container name 'taken' is already in use" in result.stderr
    assert b"moor rm taken" in result.stderr
    assert moord.moor("ps", "-a", "-q", "--no-trunc").stdout.decode().split() == [first]
    assert folder_entries(moord.root / "containers") == [first]


@pytest.mark.parametrize("name", ["bad/name", "../up", "-dash", "x" * 129, "sp ace"],
                         ids=["slash", "dotdot", "leading-dash", "too-long", "space"])
def test_invalid_name_rejected(moord, name):
    result = moord.moor("run", f"--name={name}", "busybox", "true", check=False)

    assert result.returncode == 125
    assert f"invalid container name {name!r}".encode() in result.stderr
    assert_nothing_left(moord)


@pytest.mark.parametrize("ref", ["../etc", "a/b", "x" * 129, "a b", ".hidden"],
                         ids=["dotdot", "slash", "too-long", "space", "leading-dot"])
def test_invalid_id_exit_2(moord, ref):
    result = moord.moor("inspect", ref, check=False)

    assert result.returncode == 2
    assert f"invalid container id or name {ref!r}".encode() in result.stderr


@pytest.mark.parametrize("verb, code", [("run", 125), ("create", 2)])
@pytest.mark.parametrize("policy", ["sometimes", "always:3", "on-failure:x", "on-failure:-1"])
def test_invalid_restart_policy_rejected(moord, verb, code, policy):
    result = moord.moor(verb, "--restart", policy, "busybox", "true", check=False)

    assert result.returncode == code
    assert f"invalid restart policy {policy!r}".encode() in result.stderr
    assert_nothing_left(moord)


# ---------------------------------------------------------------- images

def test_import_folder_without_bin(moord, tmp_path):
    folder = tmp_path / "nobin"
    (folder / "etc").mkdir(parents=True)
    (folder / "etc" / "hostname").write_text("box\n")

    result = moord.moor("image", "import-rootfs", "nobin", str(folder), check=False)

    assert result.returncode == 2
    assert f"folder {folder} has no /bin".encode() in result.stderr
    assert moord.moor("image", "ls", "-q").stdout == b""
    # Snapshots live in one folder per snapshotter kind.
    assert [folder_entries(kind) for kind in (moord.root / "snapshots").iterdir()] in ([], [[]])


# ---------------------------------------------------------------- commands

def test_missing_command_exit_127(moord):
    """The container stays listed as created with exit code 127, as docker keeps it; its task is gone."""
    result = moord.moor("run", "--name", "nocmd", "busybox", "nosuch-command", check=False)

    assert result.returncode == 127
    assert RUNTIME_NOT_FOUND in result.stderr
    assert b"failed to start container nocmd" in result.stderr
    state = moord.inspect("nocmd")["State"]
    assert state["Status"] == "created"
    assert state["ExitCode"] == 127
    assert state["Error"].startswith("failed to start: ")
    assert_task_gone(moord, "nocmd")


def test_missing_command_rm_leaves_nothing(moord):
    result = moord.moor("run", "--rm", "busybox", "nosuch-command", check=False)

    assert result.returncode == 127
    assert RUNTIME_NOT_FOUND in result.stderr
    assert_nothing_left(moord)


def test_missing_command_then_rm(moord):
    moord.moor("run", "--name", "nocmd", "busybox", "nosuch-command", check=False)

    moord.moor("rm", "nocmd")

    assert_nothing_left(moord)


def test_empty_command_rejected(moord):
    result = moord.moor("run", "busybox", "", check=False)

    assert result.returncode == 125
    assert b"process.args[0] is an empty string" in result.stderr
    assert_nothing_left(moord)


def test_image_without_cmd_needs_command(moord, tmp_path):
    folder = tmp_path / "rootfs"
    (folder / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", folder / "bin" / "busybox")
    moord.moor("image", "import-rootfs", "nocmd", str(folder))

    result = moord.moor("run", "nocmd", check=False)

    assert result.returncode == 125
    assert b"no command specified" in result.stderr
    assert_nothing_left(moord)


# ---------------------------------------------------------------- volumes

VOLUME_ERRORS = [
    pytest.param("nocolon", "expected the form HOST:CONTAINER[:ro|rw]", id="no-colon"),
    pytest.param("{host}:/data:rx", "unknown mode 'rx'", id="bad-mode"),
    pytest.param("{host}:/a:ro:x", "expected the form HOST:CONTAINER[:ro|rw]", id="four-parts"),
    pytest.param("{host}:data", "container path 'data' is not absolute", id="relative-target"),
    pytest.param("{host}:/", "the container path cannot be '/'", id="root-target"),
    pytest.param("{host}:/a/../b", "contains '..'", id="dotdot-target"),
    pytest.param("{host}/missing:/data", "does not exist", id="missing-host"),
    pytest.param(":/data", "expected the form HOST:CONTAINER[:ro|rw]", id="empty-host"),
]


@pytest.mark.parametrize("volume, message", VOLUME_ERRORS)
def test_malformed_volume_rejected(moord, tmp_path, volume, message):
    text = volume.format(host=tmp_path)

    result = moord.moor("run", "-v", text, "busybox", "true", check=False)

    assert result.returncode == 125
    assert f"invalid volume {text!r}".encode() in result.stderr
    assert message.encode() in result.stderr
    assert_nothing_left(moord)
