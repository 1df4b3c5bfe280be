"""The plugin host with real moords: loading, configuration, observers, vetoes and isolation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, wait_until
from shim import protocol
from shim.protocol import InvalidArgument
from supervisor import config as daemon_config
from test_plugins_helpers import RECORDER, install_plugin, next_event, start_with_plugins, subscribed


def plugin_list(moord) -> dict[str, dict]:
    result = moord.moor("plugin", "ls", "--format", "json")
    return {item["name"]: item for item in json.loads(result.stdout)}


def recorded(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def site(tmp_path) -> Path:
    return tmp_path / "site"


def test_plugin_ls_shows_version_and_hooks(moord_factory, site, tmp_path):
    install_plugin(site, "recorder_ls", RECORDER, version="2.3.1")
    moord = start_with_plugins(moord_factory, site, f'[plugins.recorder_ls]\nrecord = "{tmp_path / "rec"}"\n')

    plugins = plugin_list(moord)

    assert plugins["recorder_ls"]["version"] == "2.3.1"
    assert plugins["recorder_ls"]["state"] == "enabled"
    assert "moorage_task_started" in plugins["recorder_ls"]["hooks"]
    assert plugins["logging"]["state"] == "enabled"


def test_plugin_ls_table_has_header(moord):
    lines = moord.moor("plugin", "ls").stdout.decode().splitlines()

    assert lines[0].split() == ["NAME", "VERSION", "STATE", "ERRORS", "SOURCE", "HOOKS"]
    assert lines[1].startswith("logging")


def test_plugin_configure_gets_its_table(moord_factory, site, tmp_path):
    record = tmp_path / "rec"
    install_plugin(site, "recorder_cfg", RECORDER)
    start_with_plugins(moord_factory, site, f'[plugins.recorder_cfg]\nenabled = true\nrecord = "{record}"\nlevel = 3\n')

    first = recorded(record)[0]

    assert first == "configure " + json.dumps({"level": 3, "record": str(record)}, sort_keys=True)


def test_plugin_observers_in_lifecycle_order(moord_factory, site, tmp_path):
    record = tmp_path / "rec"
    install_plugin(site, "recorder_order", RECORDER)
    moord = start_with_plugins(moord_factory, site, f'[plugins.recorder_order]\nrecord = "{record}"\n')

    container_id = moord.moor("run", "-d", "busybox", "sh", "-c", "exit 3").stdout.decode().strip()
    moord.wait_status(container_id, "exited")
    moord.moor("rm", container_id)
    wait_until(lambda: any(line.startswith("removed") for line in recorded(record)), message="removed observer")

    assert recorded(record)[1:] == [f"created {container_id}", f"started {container_id}",
                                    f"exited {container_id} 3", f"removed {container_id}"]


def test_plugin_disabled_not_loaded(moord_factory, site, tmp_path):
    record = tmp_path / "rec"
    install_plugin(site, "recorder_off", RECORDER)
    moord = start_with_plugins(moord_factory, site, f'[plugins.recorder_off]\nenabled = false\nrecord = "{record}"\n')

    moord.moor("run", "--rm", "busybox", "true")

    assert plugin_list(moord)["recorder_off"]["state"] == "disabled"
    assert not record.exists()


def test_plugin_builtin_can_be_disabled(moord_factory, site):
    site.mkdir()
    moord = start_with_plugins(moord_factory, site, "[plugins.logging]\nenabled = false\n")

    moord.moor("run", "--name", "nolog", "busybox", "echo", "hi")
    result = moord.moor("logs", "nolog", check=False)

    assert plugin_list(moord)["logging"]["state"] == "disabled"
    assert result.returncode == protocol.FailedPrecondition.exit_code


@pytest.mark.parametrize("source, message", [
    ("raise ImportError('missing dependency frobnicate')\n", "frobnicate"),
    ("from supervisor.hookspecs import hookimpl\nclass Plugin:\n"
     "    @hookimpl\n    def moorage_task_startd(self, container_id):\n        pass\n", "moorage_task_startd"),
    ("from supervisor.hookspecs import hookimpl\nclass Plugin:\n"
     "    @hookimpl\n    def moorage_configure(self, options):\n        raise ValueError('bad option')\n", "bad option"),
    ("from supervisor.hookspecs import hookimpl\nclass Plugin:\n"
     "    @hookimpl\n    def moorage_startup(self, config):\n        raise OSError('no database')\n", "no database"),
    ("from supervisor.hookspecs import hookimpl\nclass Plugin:\n"
     "    @hookimpl\n    def moorage_task_started(self, container_id, colour):\n        pass\n", "colour"),
], ids=["import-error", "unknown-hook", "configure-raises", "startup-raises", "unknown-argument"])
def test_plugin_broken_marked_failed(moord_factory, site, source, message):
    install_plugin(site, "broken", source)
    moord = start_with_plugins(moord_factory, site)

    broken = plugin_list(moord)["broken"]
    run = moord.moor("run", "--rm", "busybox", "echo", "still works")

    assert broken["state"] == "failed"
    assert message in broken["error"]
    assert run.stdout == b"still works\n"


RAISING_OBSERVER = '''
    from supervisor.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def moorage_task_started(self, container_id):
            raise RuntimeError("observer broke")
'''


def test_plugin_observer_error_reported_not_fatal(moord_factory, site):
    install_plugin(site, "raiser", RAISING_OBSERVER)
    moord = start_with_plugins(moord_factory, site)
    sub = subscribed(moord)

    container_id = moord.moor("run", "-d", "busybox", "sleep", "60").stdout.decode().strip()
    event = next_event(sub, protocol.TOPIC_PLUGIN_ERROR)

    assert moord.inspect(container_id)["State"]["Status"] == "running"
    assert event["id"] == container_id
    assert event["payload"]["plugin"] == "raiser"
    assert event["payload"]["hook"] == "moorage_task_started"
    assert "observer broke" in event["payload"]["error"]
    assert container_id in (moord.root / "moord.log").read_text()
    moord.moor("rm", "-f", container_id)


HANGING_OBSERVER = '''
    import threading
    from supervisor.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def moorage_task_started(self, container_id):
            threading.Event().wait(3600)
'''


def test_plugin_hanging_observer_times_out(moord_factory, site):
    install_plugin(site, "hanger", HANGING_OBSERVER)
    moord = start_with_plugins(moord_factory, site, "", "--plugin-timeout", "1")
    sub = subscribed(moord)

    container_id = moord.moor("run", "-d", "busybox", "sleep", "60").stdout.decode().strip()
    event = next_event(sub, protocol.TOPIC_PLUGIN_ERROR)
    second = moord.moor("run", "--rm", "busybox", "echo", "not stalled")
    skipped = next_event(sub, protocol.TOPIC_PLUGIN_ERROR)

    assert "timed out after 1 s" in event["payload"]["error"]
    assert second.stdout == b"not stalled\n"
    assert "skipped" in skipped["payload"]["error"]
    moord.moor("rm", "-f", container_id)


HANGING_SHUTDOWN = '''
    import threading
    from supervisor.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def moorage_shutdown(self):
            threading.Event().wait(3600)
'''


def test_plugin_hanging_shutdown_not_stalling(moord_factory, site):
    install_plugin(site, "slowstop", HANGING_SHUTDOWN)
    moord = start_with_plugins(moord_factory, site, "", "--plugin-timeout", "1")

    moord.stop()

    assert moord.process.returncode == 0
    assert "moord stopped" in (moord.root / "moord.log").read_text()


ENV_ADDER = '''
    from supervisor.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def moorage_adjust_spec(self, spec, options):
            spec["process"]["env"].append("ADDED_BY_PLUGIN=" + options["name"])
            spec.setdefault("annotations", {})["org.example.adder"] = "yes"
'''


def test_plugin_adjust_spec_reaches_container(moord_factory, site):
    install_plugin(site, "adder", ENV_ADDER)
    moord = start_with_plugins(moord_factory, site)

    result = moord.moor("run", "--rm", "--name", "adjusted", "busybox", "sh", "-c", "echo $ADDED_BY_PLUGIN")

    assert result.stdout == b"adjusted\n"


SLOW_ENV_ADDER = '''
    import time
    from supervisor.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def moorage_adjust_spec(self, spec, options):
            time.sleep(1)  # long enough for the other container's start to arrive meanwhile
            spec["process"]["env"].append("ADDED_BY_PLUGIN=" + options["name"])
'''


def test_plugin_adjust_spec_concurrent_starts(moord_factory, site):
    """Two containers that start at the same time are both adjusted; neither waits for or skips the other."""
    install_plugin(site, "slowadder", SLOW_ENV_ADDER)
    moord = start_with_plugins(moord_factory, site)
    command = [sys.executable, "-m", "supervisor.cli", "--state", str(moord.state), "run", "--rm"]
    runs = [subprocess.Popen([*command, "--name", name, "busybox", "sh", "-c", "echo $ADDED_BY_PLUGIN"],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name in ("one", "two")]
    outputs = [run.communicate(timeout=60) for run in runs]

    assert outputs[0][0] == b"one\n", outputs[0][1]
    assert outputs[1][0] == b"two\n", outputs[1][1]


def test_plugin_adjust_spec_not_stored(moord_factory, site):
    install_plugin(site, "adder2", ENV_ADDER)
    moord = start_with_plugins(moord_factory, site)

    moord.moor("run", "--name", "stored", "busybox", "true")

    env = moord.inspect("stored")["Config"]["Env"]
    assert not [entry for entry in env if entry.startswith("ADDED_BY_PLUGIN=")]


# Marks the spec and records its release; tryfirst makes it run before the vetoing plugin.
MARKER = '''
    from supervisor.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def moorage_configure(self, options):
            self.record = options["record"]

        @hookimpl(tryfirst=True)
        def moorage_adjust_spec(self, container_id, spec):
            with open(self.record, "a") as handle:
                handle.write("adjusted " + container_id + "\\n")

        @hookimpl
        def moorage_release_spec(self, container_id):
            with open(self.record, "a") as handle:
                handle.write("released " + container_id + "\\n")
'''

VETO = '''
    from supervisor.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def moorage_adjust_spec(self, spec, options):
            if options["labels"].get("veto"):
                raise PermissionError("label veto is set")
'''


def test_plugin_veto_fails_start_and_undoes(moord_factory, site, tmp_path):
    record = tmp_path / "rec"
    install_plugin(site, "marker", MARKER)
    install_plugin(site, "vetoer", VETO)
    moord = start_with_plugins(moord_factory, site, f'[plugins.marker]\nrecord = "{record}"\n')

    result = moord.moor("run", "-d", "--name", "vetoed", "-l", "veto=1", "busybox", "true", check=False)
    container_id = moord.inspect("vetoed")["Id"]

    assert result.returncode == 125
    assert b"plugin vetoer rejected it" in result.stderr
    assert b"label veto is set" in result.stderr
    assert recorded(record) == [f"adjusted {container_id}", f"released {container_id}"]
    assert moord.inspect("vetoed")["State"]["Status"] == "created"
    assert not list((moord.state / "shims").glob("*/shim.pid"))


def test_plugin_runtime_failure_releases_spec(moord_factory, site, tmp_path):
    record = tmp_path / "rec"
    install_plugin(site, "marker2", MARKER)
    moord = start_with_plugins(moord_factory, site, f'[plugins.marker2]\nrecord = "{record}"\n')

    result = moord.moor("run", "--name", "nocmd", "busybox", "/no/such/command", check=False)
    container_id = moord.inspect("nocmd")["Id"]

    assert result.returncode == 127
    assert recorded(record) == [f"adjusted {container_id}", f"released {container_id}"]


def test_plugin_veto_allows_other_containers(moord_factory, site):
    install_plugin(site, "vetoer2", VETO)
    moord = start_with_plugins(moord_factory, site)

    result = moord.moor("run", "--rm", "busybox", "echo", "allowed")

    assert result.stdout == b"allowed\n"


@pytest.mark.parametrize("text, message", [
    ("[plugins]\nfoo = 1\n", "plugins.foo"),
    ("[plugins.foo]\nenabled = \"yes\"\n", "plugins.foo.enabled"),
    ("plugin_timeout = 0\n", "plugin_timeout"),
    ("[moord]\nplugin_timeout = -1\n[plugins.foo]\nenabled = true\n", "plugin_timeout"),
], ids=["not-a-table", "enabled-not-bool", "zero-timeout", "negative-timeout-with-moord-table"])
def test_config_plugins_invalid_rejected(tmp_path, text, message):
    path = tmp_path / "config.toml"
    path.write_text(text)

    with pytest.raises(InvalidArgument) as error:
        daemon_config.load(path, {})

    assert message in error.value.message


def test_config_plugins_with_moord_table(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[moord]\nplugin_timeout = 2.5\n[plugins.foo]\nenabled = false\ncolor = \"red\"\n")

    config = daemon_config.load(path, {})

    assert config.plugin_timeout == 2.5
    assert config.plugins == {"foo": {"enabled": False, "color": "red"}}
