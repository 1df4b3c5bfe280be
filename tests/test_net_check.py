"""Network checks: `moor network check`, the CHECK of CNI networks when moord starts, and what a failure reports.

A test breaks a container's network the way an administrator could: it
removes the address of eth0 inside the container's namespace, or deletes the
host side of the veth.  Traffic stays inside the test's bridges.
"""

from __future__ import annotations

import subprocess

import pytest

from netfixture import netenv  # noqa: F401  (fixture)
from shim import protocol
from test_events import collect_events, subscribed
from test_net_cni import CNI_BIN, write_conflist

needs_cni = pytest.mark.skipif(not (CNI_BIN / "bridge").exists(),
                               reason="containernetworking-plugins is not installed (contrib/install.sh adds it)")


def run_on(env, network: str, name: str = "probe") -> str:
    """Start a sleeping container on ``network``; return its id."""
    env.moord.moor("run", "-d", "--name", name, "--network", network, "busybox", "sleep", "300")
    return env.moord.inspect(name)["Id"]


def cni_container(env) -> str:
    write_conflist(env, "chk")
    return run_on(env, "chk")


def flush_address(env, container_id: str) -> None:
    """Remove every address of eth0 inside the container's network namespace."""
    netns = env.moord.state / "netns" / container_id
    subprocess.run(["nsenter", f"--net={netns}", "ip", "addr", "flush", "dev", "eth0"], check=True, timeout=10)


def check_status(env, name: str = "probe") -> str:
    return env.moord.inspect(name)["NetworkSettings"]["check"]["status"]


# -- CNI --------------------------------------------------------------------------------

@needs_cni
def test_cni_check_command_reports_ok(netenv):
    cni_container(netenv)
    result = netenv.moord.moor("network", "check", "probe")
    assert result.stdout == b"probe: ok\n"
    assert check_status(netenv) == "ok"


@needs_cni
def test_cni_check_fails_without_address(netenv):
    container_id = cni_container(netenv)
    flush_address(netenv, container_id)
    result = netenv.moord.moor("network", "check", "probe", check=False)
    assert result.returncode == 1
    assert b"CNI plugin bridge CHECK failed" in result.stderr
    assert check_status(netenv) == "failed"


@needs_cni
def test_cni_check_failure_publishes_event(netenv):
    container_id = cni_container(netenv)
    flush_address(netenv, container_id)
    sub = subscribed(netenv.moord)
    try:
        netenv.moord.moor("network", "check", "probe", check=False)
        event = collect_events(sub, container_id, protocol.TOPIC_NETWORK_CHECK_FAILED)[-1]
    finally:
        sub.close(linger=0)
    assert event["payload"]["network"] == "chk"
    assert event["payload"]["errors"]


@needs_cni
def test_cni_check_failure_is_logged_with_id(netenv):
    container_id = cni_container(netenv)
    flush_address(netenv, container_id)
    netenv.moord.moor("network", "check", "probe", check=False)
    log = (netenv.moord.root / "moord.log").read_text()
    assert f"container {container_id}: network chk check failed" in log


@needs_cni
def test_cni_check_runs_when_moord_starts(netenv):
    container_id = cni_container(netenv)
    flush_address(netenv, container_id)
    netenv.moord.kill9()
    netenv.moord.start()
    assert check_status(netenv) == "failed"


@needs_cni
def test_cni_check_skipped_with_disable_check(netenv):
    conf = write_conflist(netenv, "nochk")
    path = netenv.cni_dir / "10-nochk.conflist"
    path.write_text(path.read_text().replace('"plugins"', '"disableCheck": true, "plugins"'))
    run_on(netenv, "nochk")
    netenv.moord.moor("network", "check", "probe")
    details = netenv.moord.inspect("probe")["NetworkSettings"]["check"]["details"]
    assert details["net-CniPlugin"]["skipped"] == "the network list sets disableCheck"
    assert conf["bridge"] in netenv.links()


# -- bridge and the others --------------------------------------------------------------

def test_bridge_check_reports_ok(netenv):
    run_on(netenv, "bridge")
    assert netenv.moord.moor("network", "check", "probe").stdout == b"probe: ok\n"


def test_bridge_check_fails_without_veth(netenv):
    container_id = run_on(netenv, "bridge")
    subprocess.run(["ip", "link", "delete", f"mv{container_id[:12]}"], check=True, timeout=10)
    result = netenv.moord.moor("network", "check", "probe", check=False)
    assert result.returncode == 1
    assert f"interface mv{container_id[:12]} does not exist".encode() in result.stderr


def test_bridge_check_fails_without_address(netenv):
    container_id = run_on(netenv, "bridge")
    flush_address(netenv, container_id)
    result = netenv.moord.moor("network", "check", "probe", check=False)
    assert b"eth0 in the container lacks its address" in result.stderr


def test_none_network_check_reports_ok(netenv):
    run_on(netenv, "none")
    assert netenv.moord.moor("network", "check", "probe").stdout == b"probe: ok\n"


def test_check_of_stopped_container_is_rejected(netenv):
    netenv.moord.moor("create", "--name", "idle", "busybox", "true")
    result = netenv.moord.moor("network", "check", "idle", check=False)
    assert result.returncode != 0
    assert b"container idle has no network set up by moord (it is created): start it first" in result.stderr
