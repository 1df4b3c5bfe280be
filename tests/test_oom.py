"""OOM kills: the shim's cgroup watch, the oom record, task.oom, State.OOMKilled and -m/--memory.

cgroup v1 runs for real: containers with a 16 MiB limit that allocate beyond
it.  cgroup v2 runs on a copy of a recorded tree under tests/data/cgroupv2,
whose memory.events the test rewrites as the kernel would.
"""

from __future__ import annotations

import json
import os
import select
import shutil
from pathlib import Path

import pytest

from conftest import wait_until
from test_events import collect_events
from shim import oom
from shim.protocol import InvalidArgument
from supervisor.ocispec import RunOptions, build_spec
from supervisor.spec.options import parse_memory
from test_plugins_helpers import install_plugin, next_event, start_with_plugins, subscribed

V2_TREES = Path(__file__).parent / "data" / "cgroupv2"
V2_ID = "0123456789abcdef" * 4
MIB = 1024 * 1024
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="running containers with runc needs root")
cgroup_v1_only = pytest.mark.skipif(not os.path.isdir("/sys/fs/cgroup/memory"),
                                    reason="this host has no cgroup v1 memory controller")

# The string doubles until sh cannot grow it: sh itself, the container's init, is the one killed.
DOUBLING = 'x=0123456789; while :; do x="$x$x"; done'
# tail keeps the last 100 MiB, above a 64 MiB limit, so the kernel kills it while sh goes on.
CHILD_OOM = "head -c 100m /dev/zero | tail -c 100m >/dev/null"


# -- -m/--memory -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, limit", [
    ("16m", 16 * MIB),
    ("16M", 16 * MIB),
    ("1g", 1024 * MIB),
    ("65536k", 64 * MIB),
    ("6291456", 6 * MIB),
    ("6291456b", 6 * MIB),
], ids=["m", "upper-case", "g", "k", "bare-bytes", "b"])
def test_parse_memory_units(text, limit):
    assert parse_memory(text) == limit


@pytest.mark.parametrize("text, words", [
    ("5m", "below the minimum"),
    ("12x", "expected a number"),
    ("", "expected a number"),
    ("-1m", "expected a number"),
    ("1.5g", "expected a number"),
    ("99999999999g", "63 bits"),
], ids=["too-small", "unknown-unit", "empty", "negative", "fraction", "too-large"])
def test_parse_memory_rejects(text, words):
    with pytest.raises(InvalidArgument) as caught:
        parse_memory(text)

    assert repr(text) in caught.value.message
    assert words in caught.value.message


def spec_with(tmp_path, options: RunOptions) -> dict:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    return build_spec({}, options, rootfs=str(rootfs), container_id="memory", hostname="box",
                      cgroups_path="/moorage/memory")


def test_build_spec_memory_limit(tmp_path):
    spec = spec_with(tmp_path, RunOptions(args=("true",), memory="16m"))

    assert spec["linux"]["resources"]["memory"] == {"limit": 16 * MIB}


def test_build_spec_no_memory_by_default(tmp_path):
    spec = spec_with(tmp_path, RunOptions(args=("true",)))

    assert "memory" not in spec["linux"]["resources"]


@root_only
def test_run_memory_with_spec_rejected(moord, tmp_path):
    spec_file = tmp_path / "config.json"
    spec_file.write_text(json.dumps(spec_with(tmp_path, RunOptions(args=("true",)))))

    result = moord.moor("run", "-m", "16m", "--spec", str(spec_file), "busybox", check=False)

    assert result.returncode != 0
    assert b"-m" in result.stderr


@root_only
def test_run_memory_error_names_value(moord):
    result = moord.moor("run", "-m", "12x", "busybox", "true", check=False)

    assert result.returncode != 0
    assert b"'12x'" in result.stderr


@root_only
@cgroup_v1_only
def test_run_memory_sets_cgroup_limit(moord):
    container_id = moord.moor("run", "-d", "-m", "16m", "busybox", "sleep", "300").stdout.decode().strip()
    pid = moord.inspect(container_id)["State"]["Pid"]

    version, folder = oom.find_memory_cgroup(pid)

    assert version == oom.V1
    assert Path(folder, "memory.limit_in_bytes").read_text().strip() == str(16 * MIB)


# -- finding the cgroup ----------------------------------------------------------------------

def test_find_cgroup_v2_uses_spec_path():
    # pid 0 has no /proc entry, so the spec's path is what is left.
    found = oom.find_memory_cgroup(0, f"/moorage/{V2_ID}", str(V2_TREES / "limited"))

    assert found == (oom.V2, str(V2_TREES / "limited" / "moorage" / V2_ID))


def test_find_cgroup_none_without_memory(tmp_path):
    assert oom.find_memory_cgroup(0, "/moorage/x", str(tmp_path)) is None


def test_read_oom_kills_v2_recorded_tree():
    assert oom.read_oom_kills(oom.V2, str(V2_TREES / "limited" / "moorage" / V2_ID)) == 2


# -- cgroup v2: inotify on memory.events ----------------------------------------------------

@pytest.fixture
def v2_cgroup(tmp_path) -> Path:
    """A writable copy of the recorded cgroup of a container without kills."""
    tree = tmp_path / "cgroup"
    shutil.copytree(V2_TREES / "unlimited", tree)
    return tree / "moorage" / V2_ID


def set_oom_kills(folder: Path, kills: int) -> None:
    """Rewrite memory.events in place, as the kernel changes it on an OOM kill."""
    events = folder / "memory.events"
    lines = [f"oom_kill {kills}" if line.startswith("oom_kill ") else line
             for line in events.read_text().splitlines()]
    with open(events, "r+") as handle:
        handle.write("\n".join(lines) + "\n")


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


@pytest.fixture
def v2_notifier(v2_cgroup):
    """An inotify fd registered with the copied cgroup, as the shim's create worker registers it."""
    fd = oom.new_notifier(oom.V2)
    oom.register(oom.V2, str(v2_cgroup), fd)
    yield fd
    os.close(fd)


def test_v2_notifier_quiet_before_change(v2_notifier):
    assert not readable(v2_notifier)


def test_v2_notifier_readable_after_change(v2_notifier, v2_cgroup):
    set_oom_kills(v2_cgroup, 1)

    assert wait_until(lambda: readable(v2_notifier), 5, message="an inotify event")


def test_v2_notifier_drain_clears_readiness(v2_notifier, v2_cgroup):
    set_oom_kills(v2_cgroup, 1)
    wait_until(lambda: readable(v2_notifier), 5, message="an inotify event")

    oom.drain(v2_notifier, oom.V2)

    assert not readable(v2_notifier)


def test_v2_counter_read_after_change(v2_notifier, v2_cgroup):
    set_oom_kills(v2_cgroup, 3)
    wait_until(lambda: readable(v2_notifier), 5, message="an inotify event")

    assert oom.read_oom_kills(oom.V2, str(v2_cgroup)) == 3


def test_v2_register_missing_file_raises(tmp_path):
    fd = oom.new_notifier(oom.V2)
    try:
        with pytest.raises(OSError):
            oom.register(oom.V2, str(tmp_path), fd)
    finally:
        os.close(fd)


def test_host_version_v2_recorded_tree():
    assert oom.host_version(str(V2_TREES / "limited")) == oom.V2


def test_host_version_v1_without_controllers_file(tmp_path):
    assert oom.host_version(str(tmp_path)) == oom.V1


# -- cgroup v1, real containers ---------------------------------------------------------------

@root_only
@cgroup_v1_only
def test_oom_event_published(moord):
    sub = subscribed(moord)
    container_id = moord.moor("run", "-d", "-m", "16m", "busybox", "sh", "-c", DOUBLING).stdout.decode().strip()

    event = next_event(sub, "task.oom", timeout=60)

    assert event["id"] == container_id
    assert event["payload"]["count"] == 1


@root_only
@cgroup_v1_only
def test_oom_inspect_shows_oom_killed(moord):
    moord.moor("run", "--name", "oom-init", "-m", "16m", "busybox", "sh", "-c", DOUBLING, check=False)

    state = moord.wait_status("oom-init", "exited", timeout=60)["State"]

    assert state["OOMKilled"] is True
    assert state["ExitCode"] == 137


@root_only
@cgroup_v1_only
def test_no_oom_oom_killed_false(moord):
    moord.moor("run", "--name", "no-oom", "-m", "16m", "busybox", "true")

    state = moord.wait_status("no-oom", "exited")["State"]

    assert state["OOMKilled"] is False
    assert state["ExitCode"] == 0


@root_only
@cgroup_v1_only
def test_oom_child_reported_while_running(moord):
    sub = subscribed(moord)
    moord.moor("run", "-d", "--name", "oom-child", "-m", "64m", "busybox", "sh", "-c", f"{CHILD_OOM}; sleep 300")

    next_event(sub, "task.oom", timeout=60)

    assert moord.inspect("oom-child")["State"]["Status"] == "running"


@root_only
@cgroup_v1_only
def test_oom_killed_reset_at_next_start(moord):
    moord.moor("run", "--name", "oom-again", "-m", "16m", "busybox", "sh", "-c",
               f'[ -e /ran ] && exit 0; touch /ran; {DOUBLING}', check=False)
    moord.wait_status("oom-again", "exited", timeout=60)

    moord.moor("start", "-a", "oom-again")
    state = moord.wait_status("oom-again", "exited")["State"]

    assert state["OOMKilled"] is False
    assert state["ExitCode"] == 0


OOM_RECORDER = '''
    from supervisor.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def moorage_configure(self, options):
            self.record = options["record"]

        @hookimpl
        def moorage_task_oom(self, container_id, name):
            with open(self.record, "a") as handle:
                handle.write(f"oom {container_id} {name}\\n")
'''


@root_only
@cgroup_v1_only
def test_oom_plugin_observer_called(moord_factory, tmp_path):
    site, record = tmp_path / "site", tmp_path / "oom-calls"
    install_plugin(site, "oom_recorder", OOM_RECORDER)
    moord = start_with_plugins(moord_factory, site, f'[plugins.oom_recorder]\nrecord = "{record}"\n')

    container_id = moord.moor("run", "-d", "--name", "oom-seen", "-m", "16m", "busybox", "sh", "-c",
                              DOUBLING).stdout.decode().strip()
    wait_until(record.exists, 60, message="the plugin's moorage_task_oom call")

    assert record.read_text().splitlines() == [f"oom {container_id} oom-seen"]


def plugin_env(site: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{site}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(site)
    return env


def kernel_oom_kills(moord, ref: str) -> int:
    return oom.read_oom_kills(*oom.find_memory_cgroup(moord.inspect(ref)["State"]["Pid"]))


@root_only
@cgroup_v1_only
def test_oom_counted_once_after_restart(moord_factory, tmp_path):
    site, record = tmp_path / "site", tmp_path / "oom-calls"
    install_plugin(site, "oom_replay", OOM_RECORDER)
    moord = start_with_plugins(moord_factory, site, f'[plugins.oom_replay]\nrecord = "{record}"\n')
    # No output (sh prints "Killed" on stderr) and a start that moord saved first: only the oom record can
    # move the sequence number that a restarted moord replays from.
    moord.moor("run", "-d", "--name", "oom-replay", "-m", "64m", "busybox", "sh", "-c",
               f"exec 2>/dev/null; sleep 1; {CHILD_OOM}; sleep 300")
    wait_until(record.exists, 60, message="the plugin's first moorage_task_oom call")

    moord.kill9()
    moord.start(env=plugin_env(site))
    moord.moor("exec", "oom-replay", "sh", "-c", CHILD_OOM, check=False)
    kills = kernel_oom_kills(moord, "oom-replay")
    wait_until(lambda: len(record.read_text().splitlines()) >= kills, 60, message=f"{kills} observer calls")

    # A replayed record would add a call that the kernel did not count.
    assert len(record.read_text().splitlines()) == kills
