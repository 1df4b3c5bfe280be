"""Network namespaces made by moord and the none, host, container and bridge networks.

Every test runs its own moord, and the default bridge, subnets and nftables
table of that moord belong to the test (see netfixture.py).  Containers talk
only to each other and to the host over the test's own bridges.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import wait_until
from netfixture import netenv  # noqa: F401  (fixture)

WEB = "mkdir -p /w && echo hello-from-{name} > /w/index.html && exec httpd -f -p 80 -h /w"


def run_output(env, *args: str) -> str:
    return env.moord.moor("run", "--rm", *args).stdout.decode()


def start_web(env, name: str, *args: str) -> dict:
    env.moord.moor("run", "-d", "--name", name, *args, "busybox", "sh", "-c", WEB.format(name=name))
    return env.moord.wait_status(name, "running")


def settings(env, ref: str) -> dict:
    return env.moord.inspect(ref)["NetworkSettings"]


def lease_addresses(env, network: str) -> list[str]:
    info = json.loads(env.moord.moor("network", "inspect", network).stdout)[0]
    return [lease["address"] for lease in info["leases"]]


# -- namespaces ----------------------------------------------------------------------

def test_netns_pinned_and_joined(netenv):
    info = start_web(netenv, "pin")
    pinned = netenv.moord.state / "netns" / info["Id"]
    inside = os.stat(f"/proc/{info['State']['Pid']}/ns/net").st_ino
    assert pinned.stat().st_ino == inside


def test_netns_survives_a_moord_restart(netenv):
    info = start_web(netenv, "keep")
    netenv.moord.kill9()
    netenv.moord.start()
    assert netenv.netns_files() == [info["Id"]]
    assert netenv.moord.moor("exec", "keep", "wget", "-qO-", "http://127.0.0.1/").stdout == b"hello-from-keep\n"


def test_netns_is_removed_when_the_container_exits(netenv):
    info = start_web(netenv, "gone")
    netenv.moord.moor("stop", "-t", "1", "gone")
    assert netenv.netns_files() == []
    assert not any(line.split()[4].endswith(info["Id"]) for line in Path("/proc/self/mountinfo").read_text().splitlines())


# -- none, host, container:NAME --------------------------------------------------------

def test_none_network_has_only_loopback_up(netenv):
    output = run_output(netenv, "--network", "none", "busybox", "cat", "/sys/class/net/lo/operstate", "/proc/net/dev")
    assert output.startswith("unknown\n")
    assert [line.split(":")[0].strip() for line in output.splitlines()[3:]] == ["lo"]


def test_host_network_sees_the_host_interfaces(netenv):
    output = run_output(netenv, "--network", "host", "busybox", "ls", "/sys/class/net")
    assert set(output.split()) == set(os.listdir("/sys/class/net"))


def test_host_network_hosts_file(netenv):
    output = run_output(netenv, "--network", "host", "busybox", "cat", "/etc/hosts")
    assert output == Path("/etc/hosts").read_text()


def test_container_network_joins_the_other_namespace(netenv):
    start_web(netenv, "base")
    output = run_output(netenv, "--network", "container:base", "busybox", "wget", "-qO-", "http://127.0.0.1/")
    assert output == "hello-from-base\n"


def test_container_network_of_a_stopped_container_is_refused(netenv):
    netenv.moord.moor("create", "--name", "idle", "busybox", "true")
    result = netenv.moord.moor("run", "--rm", "--network", "container:idle", "busybox", "true", check=False)
    assert result.returncode == 125
    assert b"cannot join the network of container idle" in result.stderr


# -- bridge ----------------------------------------------------------------------------

def test_bridge_default_route(netenv):
    output = run_output(netenv, "busybox", "ip", "route")
    gateway = str(next(iter(netenv.subnets[0].hosts())))
    assert f"default via {gateway} dev eth0" in output


def test_bridge_address_is_shown_in_inspect(netenv):
    start_web(netenv, "shown")
    net = settings(netenv, "shown")
    assert net["ip_address"] in [str(host) for host in netenv.subnets[0].hosts()]


def test_bridge_network_mtu_reaches_eth0(netenv):
    netenv.network("small", 24, "--mtu", "1280")
    output = run_output(netenv, "--network", "small", "busybox", "cat", "/sys/class/net/eth0/mtu")
    assert output == "1280\n"


def test_bridge_fixed_ip_is_used(netenv):
    info = netenv.network("fixed")
    wanted = info["subnet"].rsplit(".", 1)[0] + ".77"
    output = run_output(netenv, "--network", "fixed", "--ip", wanted, "busybox", "ip", "-4", "-o", "addr", "show", "eth0")
    assert f"inet {wanted}/24" in output


@pytest.mark.parametrize("args, path, expected", [
    (("--hostname", "web-1"), "/etc/hostname", "web-1\n"),
    (("--add-host", "db:10.231.250.9"), "/etc/hosts", "10.231.250.9\tdb\n"),
    (("--dns", "10.231.250.53"), "/etc/resolv.conf", "nameserver 10.231.250.53\n"),
], ids=["hostname", "add-host", "dns"])
def test_bridge_writes_the_files_from_the_flags(netenv, args, path, expected):
    output = run_output(netenv, *args, "busybox", "cat", path)
    assert expected in output


def test_resolv_conf_skips_loopback_name_servers(netenv):
    from netplugins.hosts import resolv_text
    host_file = netenv.tmp_path / "resolv.conf"
    host_file.write_text("nameserver 127.0.0.53\nnameserver 10.231.250.1\nsearch example.test\n")
    assert resolv_text([], host_file) == "nameserver 10.231.250.1\nsearch example.test\n"


def test_bridge_peers_reach_by_name(netenv):
    start_web(netenv, "alpha")
    output = run_output(netenv, "busybox", "wget", "-qO-", "http://alpha/")
    assert output == "hello-from-alpha\n"


def test_bridge_peers_reach_by_address(netenv):
    start_web(netenv, "beta")
    address = settings(netenv, "beta")["ip_address"]
    assert run_output(netenv, "busybox", "wget", "-qO-", f"http://{address}/") == "hello-from-beta\n"


def test_hosts_file_drops_a_peer_that_left(netenv):
    start_web(netenv, "stay")
    start_web(netenv, "leave")
    netenv.moord.moor("rm", "-f", "leave")
    hosts = netenv.moord.moor("exec", "stay", "cat", "/etc/hosts").stdout.decode()
    assert "leave" not in hosts


def test_concurrent_starts_get_distinct_addresses(netenv):
    names = [f"c{i}" for i in range(6)]
    for name in names:
        netenv.moord.moor("create", "--name", name, "busybox", "sleep", "60")
    threads = [threading.Thread(target=netenv.moord.moor, args=("start", name)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    addresses = [settings(netenv, name)["ip_address"] for name in names]
    assert len(set(addresses)) == len(names)


def test_exit_frees_the_address_veth_and_namespace(netenv):
    info = netenv.network("brief")
    netenv.moord.moor("run", "--network", "brief", "--name", "once", "busybox", "true")
    assert lease_addresses(netenv, "brief") == []
    assert netenv.links(info["bridge"]) == []
    assert netenv.netns_files() == []


def test_reconcile_frees_what_a_vanished_container_left(netenv):
    info = netenv.network("crash")
    start_web(netenv, "lost", "--network", "crash", "-p", "127.0.0.1::80")
    lost = netenv.moord.inspect("lost")
    shim_pid, lost_id = lost["Shim"]["Pid"], lost["Id"]
    netenv.moord.kill9()
    os.kill(shim_pid, 9)
    subprocess.run(["runc", "--root", str(netenv.moord.state / "runc"), "delete", "--force",
                    lost_id], capture_output=True, timeout=30)
    netenv.moord.start()
    netenv.moord.wait_status("lost", "exited")
    assert lease_addresses(netenv, "crash") == []
    assert netenv.links(info["bridge"]) == []
    assert netenv.netns_files() == []
    assert "127.0.0.1 . tcp" not in netenv.nft()


# -- networks ----------------------------------------------------------------------------

def test_network_create_then_ls_shows_it(netenv):
    info = netenv.network("listed")
    output = netenv.moord.moor("network", "ls").stdout.decode()
    assert any(line.split()[:3] == ["listed", "bridge", info["subnet"]] for line in output.splitlines())


def test_network_rm_removes_its_bridge(netenv):
    info = netenv.network("short")
    run_output(netenv, "--network", "short", "busybox", "true")
    netenv.moord.moor("network", "rm", "short")
    assert info["bridge"] not in netenv.links()


def test_network_rm_refuses_a_network_in_use(netenv):
    netenv.network("busy")
    start_web(netenv, "user", "--network", "busy")
    result = netenv.moord.moor("network", "rm", "busy", check=False)
    assert result.returncode == 5
    assert b"in use by container" in result.stderr


@pytest.mark.parametrize("subnet, message", [
    ("127.0.5.0/24", b"which this host already uses"),
    ("10.231.0.0/33", b"invalid subnet"),
    ("not-a-subnet", b"invalid subnet"),
], ids=["host-loopback", "bad-prefix", "garbage"])
def test_network_create_rejects_a_bad_subnet(netenv, subnet, message):
    result = netenv.moord.moor("network", "create", "--subnet", subnet, "--bridge", netenv.bridge_name("x"), "bad",
                               check=False)
    assert result.returncode == 2
    assert message in result.stderr


def test_network_create_rejects_an_overlap_with_another_network(netenv):
    info = netenv.network("first")
    result = netenv.moord.moor("network", "create", "--subnet", info["subnet"], "--bridge",
                               netenv.bridge_name("y"), "second", check=False)
    assert b"overlaps network first" in result.stderr


def test_run_on_an_unknown_network_names_it(netenv):
    result = netenv.moord.moor("run", "--rm", "--network", "nowhere", "busybox", "true", check=False)
    assert result.returncode == 125
    assert b"no such network: nowhere" in result.stderr


def test_masquerade_rule_covers_the_bridge_subnet(netenv):
    run_output(netenv, "busybox", "true")
    table = netenv.nft()
    assert "ip saddr @masq_nets ip daddr != @masq_nets masquerade" in table
    assert f"elements = {{ {netenv.default_subnet} }}" in table


def test_internal_network_isolated(netenv):
    info = netenv.network("inner", 24, "--internal")
    output = run_output(netenv, "--network", "inner", "busybox", "ip", "route")
    assert "default" not in output
    assert info["subnet"] not in netenv.nft()


def test_spec_file_rejects_network_options(netenv, tmp_path):
    spec = tmp_path / "config.json"
    spec.write_text("{}")
    result = netenv.moord.moor("run", "--rm", "--spec", str(spec), "--network", "none", "busybox", check=False)
    assert result.returncode == 125
    assert b"--spec cannot be combined with network options (mode)" in result.stderr


def test_restarted_container_gets_its_network_again(netenv):
    netenv.network("again")
    netenv.moord.moor("run", "-d", "--name", "flaky", "--network", "again", "--restart", "on-failure:2", "busybox",
                      "sh", "-c", "cat /sys/class/net/eth0/operstate; exit 1")
    wait_until(lambda: netenv.moord.inspect("flaky")["RestartCount"] == 2
               and netenv.moord.inspect("flaky")["State"]["Status"] == "exited", 60, message="two restarts")
    assert netenv.moord.logs("flaky") == b"up\n" * 3
    assert lease_addresses(netenv, "again") == []


# -- a default bridge left by an earlier moord -------------------------------------------

def leave_bridge(env, address: str) -> None:
    """Make the default bridge as an earlier moord with another database would have left it."""
    subprocess.run(["ip", "link", "add", env.default_bridge, "type", "bridge"], check=True, timeout=30)
    subprocess.run(["ip", "addr", "add", address, "dev", env.default_bridge], check=True, timeout=30)


def test_idle_default_bridge_adopted(netenv):
    import ipaddress

    subnet = ipaddress.ip_network(netenv.default_subnet)
    leave_bridge(netenv, f"{next(subnet.hosts())}/{subnet.prefixlen}")

    output = run_output(netenv, "busybox", "ip", "-4", "-o", "addr", "show", "eth0")

    assert str(next(subnet.hosts()) + 1) in output


def test_foreign_default_bridge_refused_clearly(netenv):
    leave_bridge(netenv, "10.231.254.1/30")

    result = netenv.moord.moor("run", "--rm", "busybox", "true", check=False)

    assert result.returncode == 125
    assert f"interface {netenv.default_bridge} already exists".encode() in result.stderr
    assert b"moord --bridge-name" in result.stderr


def test_default_network_not_removable(netenv):
    run_output(netenv, "busybox", "true")

    result = netenv.moord.moor("network", "rm", "bridge", check=False)

    assert result.returncode == 5
    assert b"default network" in result.stderr
    assert netenv.default_bridge in netenv.links()
