"""Health checks: resolving the check, statuses, events, on-failure actions and resuming."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from conftest import wait_until
from shim import protocol
from shim.protocol import InvalidArgument
from supervisor import health
from supervisor.images._oci import host_platform
from test_cases_config import busybox_layer
from test_plugins_helpers import install_plugin, next_event, start_with_plugins, subscribed

FAST = ("--health-interval", "200ms")


def health_of(moord, ref: str) -> dict:
    return moord.inspect(ref)["State"].get("Health", {})


def wait_health(moord, ref: str, status: str, timeout: float = 30) -> dict:
    return wait_until(lambda: (lambda h: h if h.get("Status") == status else None)(health_of(moord, ref)),
                      timeout, message=f"container {ref} to be {status}")


# -- resolving the check -------------------------------------------------------------

@pytest.mark.parametrize("value, seconds", [
    ("30s", 30.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0), ("2", 2.0), (1.5, 1.5),
], ids=["seconds", "minutes-seconds", "milliseconds", "hours", "bare-number", "float"])
def test_parse_duration_valid(value, seconds):
    assert health.parse_duration(value, "--health-interval") == seconds


@pytest.mark.parametrize("value", ["", "ten", "10x", "-5s", True], ids=["empty", "word", "bad-unit", "negative", "bool"])
def test_parse_duration_invalid_rejected(value):
    with pytest.raises(InvalidArgument) as error:
        health.parse_duration(value, "--health-interval")

    assert "--health-interval" in error.value.message


IMAGE_CHECK = {"Test": ["CMD-SHELL", "wget -q localhost"], "Interval": 5_000_000_000, "Retries": 4}


@pytest.mark.parametrize("image_check, options, expected", [
    (IMAGE_CHECK, {}, {"test": ["/bin/sh", "-c", "wget -q localhost"], "interval": 5.0, "timeout": 30.0,
                       "start_period": 0.0, "retries": 4, "on_failure": "none"}),
    ({"Test": ["CMD", "check", "--fast"]}, {}, {"test": ["check", "--fast"], "interval": 30.0, "timeout": 30.0,
                                               "start_period": 0.0, "retries": 3, "on_failure": "none"}),
    (IMAGE_CHECK, {"cmd": "true", "interval": "1s", "retries": 1, "on_failure": "restart"},
     {"test": ["/bin/sh", "-c", "true"], "interval": 1.0, "timeout": 30.0, "start_period": 0.0, "retries": 1,
      "on_failure": "restart"}),
    (None, {"cmd": "true", "start_period": "1m"}, {"test": ["/bin/sh", "-c", "true"], "interval": 30.0,
                                                  "timeout": 30.0, "start_period": 60.0, "retries": 3,
                                                  "on_failure": "none"}),
    (IMAGE_CHECK, {"disabled": True}, None),
    ({"Test": ["NONE"]}, {}, None),
    (IMAGE_CHECK, {"cmd": "NONE"}, None),
    (None, {}, None),
], ids=["image-shell", "image-cmd", "options-override", "options-only", "no-healthcheck", "image-none",
        "cmd-none", "nothing"])
def test_resolve_check(image_check, options, expected):
    assert health.resolve(image_check, options) == expected


@pytest.mark.parametrize("image_check, options, message", [
    (None, {"cmd": "true", "retries": 0}, "--health-retries"),
    (None, {"cmd": "true", "interval": "0s"}, "--health-interval"),
    (None, {"cmd": "true", "on_failure": "explode"}, "--health-on-failure"),
    (None, {"cmd": "  "}, "--health-cmd"),
    ({"Test": ["CMD-SHELL"]}, {}, "Healthcheck.Test"),
], ids=["zero-retries", "zero-interval", "bad-action", "blank-cmd", "bad-image-test"])
def test_resolve_invalid_rejected(image_check, options, message):
    with pytest.raises(InvalidArgument) as error:
        health.resolve(image_check, options)

    assert message in error.value.message


def test_run_invalid_health_option_rejected(moord):
    result = moord.moor("run", "-d", "--name", "badhealth", "--health-cmd", "true", "--health-interval", "soon",
                        "busybox", "sleep", "5", check=False)

    assert result.returncode == 125
    assert b"--health-interval 'soon'" in result.stderr
    assert moord.moor("ps", "-a", "-q").stdout == b""


# -- statuses -------------------------------------------------------------------------

def test_health_passing_check_healthy(moord):
    moord.moor("run", "-d", "--name", "fine", "--health-cmd", "echo ok", *FAST, "busybox", "sleep", "60")

    state = wait_health(moord, "fine", "healthy")

    assert state["FailingStreak"] == 0
    assert state["Log"][-1]["ExitCode"] == 0
    assert state["Log"][-1]["Output"] == "ok\n"
    moord.moor("rm", "-f", "fine")


def test_health_status_in_ps(moord):
    moord.moor("run", "-d", "--name", "shown", "--health-cmd", "true", *FAST, "busybox", "sleep", "60")
    wait_health(moord, "shown", "healthy")

    line = moord.moor("ps").stdout.decode().splitlines()[1]

    assert "(healthy)" in line
    moord.moor("rm", "-f", "shown")


def test_health_failing_check_unhealthy(moord):
    moord.moor("run", "-d", "--name", "sick", "--health-cmd", "exit 3", "--health-retries", "2", *FAST,
               "busybox", "sleep", "60")

    state = wait_health(moord, "sick", "unhealthy")

    assert state["FailingStreak"] == 2
    assert state["Log"][-1]["ExitCode"] == 3
    moord.moor("rm", "-f", "sick")


def test_health_log_keeps_last_five(moord):
    moord.moor("run", "-d", "--name", "chatty", "--health-cmd", "date +%s%N", *FAST, "busybox", "sleep", "60")

    wait_until(lambda: health_of(moord, "chatty").get("FailingStreak") == 0
               and len(health_of(moord, "chatty").get("Log", [])) == 5, message="five log entries")
    first = health_of(moord, "chatty")["Log"][0]["Start"]
    wait_until(lambda: health_of(moord, "chatty")["Log"][0]["Start"] != first, message="the log to move on")

    assert len(health_of(moord, "chatty")["Log"]) == 5
    moord.moor("rm", "-f", "chatty")


def test_health_timeout_counts_as_failure(moord):
    moord.moor("run", "-d", "--name", "slow", "--health-cmd", "sleep 30", "--health-timeout", "300ms",
               "--health-retries", "1", *FAST, "busybox", "sleep", "60")

    state = wait_health(moord, "slow", "unhealthy")

    assert state["Log"][-1]["ExitCode"] == -1
    assert "timed out after 0.3 s" in state["Log"][-1]["Output"]
    moord.moor("rm", "-f", "slow")


def test_health_start_period_ignores_failures(moord):
    moord.moor("run", "-d", "--name", "warming", "--health-cmd", "false", "--health-retries", "1",
               "--health-start-period", "1h", *FAST, "busybox", "sleep", "60")

    wait_until(lambda: len(health_of(moord, "warming").get("Log", [])) >= 3, message="three checks")
    state = health_of(moord, "warming")

    assert state["Status"] == "starting"
    assert state["FailingStreak"] == 0
    moord.moor("rm", "-f", "warming")


def test_health_status_event_published(moord):
    sub = subscribed(moord)
    container_id = moord.moor("run", "-d", "--health-cmd", "true", *FAST, "busybox", "sleep", "60").stdout.decode().strip()

    event = next_event(sub, protocol.TOPIC_TASK_HEALTH_STATUS)

    assert event["id"] == container_id
    assert event["payload"]["status"] == "healthy"
    assert event["payload"]["failing_streak"] == 0
    moord.moor("rm", "-f", container_id)


def test_health_inspect_config_in_nanoseconds(moord):
    moord.moor("create", "--name", "configured", "--health-cmd", "true", "--health-interval", "2s",
               "--health-on-failure", "stop", "busybox", "sleep", "60")

    check = moord.inspect("configured")["Config"]["Healthcheck"]

    assert check["Test"] == ["CMD", "/bin/sh", "-c", "true"]
    assert check["Interval"] == 2_000_000_000
    assert check["OnFailure"] == "stop"


# -- on-failure actions ---------------------------------------------------------------

def test_health_on_failure_restart(moord):
    sub = subscribed(moord)
    container_id = moord.moor("run", "-d", "--health-cmd", "false", "--health-retries", "1",
                              "--health-on-failure", "restart", *FAST, "busybox", "sleep", "60").stdout.decode().strip()

    event = next_event(sub, protocol.TOPIC_TASK_RESTART)
    info = moord.wait_status(container_id, "running")

    assert event["id"] == container_id
    assert event["payload"]["reason"] == "unhealthy"
    assert info["RestartCount"] >= 1
    moord.moor("rm", "-f", container_id)


def test_health_on_failure_stop(moord):
    moord.moor("run", "-d", "--name", "stopme", "--health-cmd", "false", "--health-retries", "1",
               "--health-on-failure", "stop", "--restart", "always", *FAST,
               "busybox", "sh", "-c", "trap 'exit 7' TERM; sleep 60 & wait")

    info = moord.wait_status("stopme", "exited")

    assert info["State"]["ManuallyStopped"] is True
    assert info["State"]["ExitCode"] == 7


def test_health_on_failure_kill_then_policy(moord):
    moord.moor("run", "-d", "--name", "killme", "--health-cmd", "false", "--health-retries", "1",
               "--health-on-failure", "kill", *FAST, "busybox", "sleep", "60")

    info = moord.wait_status("killme", "exited")

    assert info["State"]["ExitCode"] == 137
    assert info["State"]["ManuallyStopped"] is False


def test_health_none_keeps_checking(moord):
    moord.moor("run", "-d", "--name", "ignored", "--health-cmd", "false", "--health-retries", "1", *FAST,
               "busybox", "sleep", "60")
    wait_health(moord, "ignored", "unhealthy")

    wait_until(lambda: health_of(moord, "ignored")["FailingStreak"] >= 3, message="more failed checks")

    assert moord.inspect("ignored")["State"]["Status"] == "running"
    moord.moor("rm", "-f", "ignored")


# -- image checks, restarts of moord, the plugin hook --------------------------------------------

def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_image_with_check(path, layer: bytes, check: dict, ref: str):
    """Write a one-image OCI archive whose config has a Healthcheck."""
    config = json.dumps({"architecture": host_platform()[0], "os": "linux",
                         "config": {"Cmd": ["sleep", "60"], "Healthcheck": check},
                         "rootfs": {"type": "layers", "diff_ids": [_sha256(layer)]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": _sha256(config), "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                       "digest": _sha256(layer), "size": len(layer)}]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _sha256(manifest),
        "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": ref}}]}).encode()
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": index}
    for blob in (layer, config, manifest):
        files["blobs/sha256/" + _sha256(blob).removeprefix("sha256:")] = blob
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def checked_image(moord, tmp_path) -> str:
    layer = busybox_layer(tmp_path / "layer")
    check = {"Test": ["CMD-SHELL", "echo from-image"], "Interval": 200_000_000, "Retries": 2}
    moord.moor("image", "import", str(write_image_with_check(tmp_path / "hc.tar", layer, check, "hc:latest")))
    return "hc:latest"


def test_health_from_image_config(moord, checked_image):
    moord.moor("run", "-d", "--name", "imagecheck", checked_image)

    state = wait_health(moord, "imagecheck", "healthy")

    assert state["Log"][-1]["Output"] == "from-image\n"
    moord.moor("rm", "-f", "imagecheck")


def test_health_no_healthcheck_disables_image_check(moord, checked_image):
    moord.moor("run", "-d", "--name", "unchecked", "--no-healthcheck", checked_image)

    info = moord.inspect("unchecked")

    assert "Health" not in info["State"]
    assert info["Config"]["Healthcheck"] is None
    moord.moor("rm", "-f", "unchecked")


def test_health_resumes_after_moord_restart(moord):
    moord.moor("run", "-d", "--name", "durable", "--health-cmd", "date +%s%N", *FAST, "busybox", "sleep", "120")
    before = wait_health(moord, "durable", "healthy")["Log"][-1]["End"]

    moord.restart()
    resumed = health_of(moord, "durable")
    wait_until(lambda: health_of(moord, "durable")["Log"][-1]["End"] > before, message="a check after restart")

    assert resumed["Status"] == "healthy"
    assert health_of(moord, "durable")["Status"] == "healthy"
    moord.moor("rm", "-f", "durable")


HEALTH_RECORDER = '''
    from supervisor.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def moorage_configure(self, options):
            self.record = options["record"]

        @hookimpl
        def moorage_health_result(self, container_id, status, exit_code, output):
            with open(self.record, "a") as handle:
                handle.write(f"{container_id} {status} {exit_code} {output.strip()}\\n")
'''


def test_health_result_reaches_plugins(moord_factory, tmp_path):
    record = tmp_path / "rec"
    install_plugin(tmp_path / "site", "healthrec", HEALTH_RECORDER)
    moord = start_with_plugins(moord_factory, tmp_path / "site", f'[plugins.healthrec]\nrecord = "{record}"\n')

    container_id = moord.moor("run", "-d", "--health-cmd", "echo fine", *FAST, "busybox", "sleep", "60").stdout.decode().strip()
    wait_until(lambda: record.exists() and record.read_text(), message="a recorded health result")

    assert record.read_text().splitlines()[0] == f"{container_id} healthy 0 fine"
    moord.moor("rm", "-f", container_id)
