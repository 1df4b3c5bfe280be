"""The cni network type, with Debian's containernetworking-plugins from /usr/lib/cni.

Each test writes its own network list (bridge with host-local IPAM, portmap,
loopback) naming a bridge and a subnet of its own, with host-local's data
folder under the test's tmp_path.  ipMasq is off: no traffic leaves the host.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from conftest import wait_until
from netfixture import netenv  # noqa: F401  (fixture)

CNI_BIN = Path("/usr/lib/cni")
WEB = "mkdir -p /w && echo hello-from-{name} > /w/index.html && exec httpd -f -p 80 -h /w"

pytestmark = pytest.mark.skipif(not (CNI_BIN / "bridge").exists(),
                                reason="containernetworking-plugins is not installed (contrib/install.sh adds it)")


def _exists(*command: str) -> bool:
    return subprocess.run(command, capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="module", autouse=True)
def portmap_chains_removed():
    """Remove what the portmap plugin leaves in the nat tables after DEL, if this module made it.

    portmap keeps its shared CNI-HOSTPORT-* chains (and, with iptables-nft,
    whole ``ip nat`` and ``ip6 nat`` tables) for later containers.
    """
    before = {family: (_exists("nft", "list", "table", family, "nat"),
                       _exists(tool, "-w", "10", "-t", "nat", "-S", "CNI-HOSTPORT-MASQ"))
              for family, tool in (("ip", "iptables"), ("ip6", "ip6tables"))}
    yield
    for family, tool in (("ip", "iptables"), ("ip6", "ip6tables")):
        table_existed, chains_existed = before[family]
        if chains_existed:
            continue
        rules = subprocess.run([tool, "-w", "10", "-t", "nat", "-S"], capture_output=True, text=True,
                               timeout=30).stdout.splitlines()
        for rule in rules:
            if rule.startswith("-A ") and "-j CNI-HOSTPORT" in rule and not rule.split()[1].startswith("CNI-"):
                subprocess.run([tool, "-w", "10", "-t", "nat", "-D", *shlex.split(rule)[1:]], capture_output=True,
                               timeout=30)
        for chain in ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ"):
            subprocess.run([tool, "-w", "10", "-t", "nat", "-F", chain], capture_output=True, timeout=30)
        for chain in ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ"):
            subprocess.run([tool, "-w", "10", "-t", "nat", "-X", chain], capture_output=True, timeout=30)
        if not table_existed:
            subprocess.run(["nft", "delete", "table", family, "nat"], capture_output=True, timeout=30)


def write_conflist(env, name: str, plugins: list[dict] | None = None) -> dict:
    subnet = env.subnet()
    bridge = env.bridge_name("c")
    data_dir = env.tmp_path / "host-local"
    if plugins is None:
        plugins = [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": str(data_dir)}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ]
    conflist = {"cniVersion": "1.0.0", "name": name, "plugins": plugins}
    (env.cni_dir / f"10-{name}.conflist").write_text(json.dumps(conflist))
    return {"subnet": subnet, "bridge": bridge, "data_dir": data_dir / name}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fetch(address: str, port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/", timeout=2) as response:
            return response.read().decode()
    except OSError:
        return None


def test_cni_address_from_list(netenv):
    conf = write_conflist(netenv, "cnet")
    output = netenv.moord.moor("run", "--rm", "--network", "cnet", "busybox", "ip", "-4", "-o", "addr", "show",
                               "eth0").stdout.decode()
    prefix = conf["subnet"].rsplit(".", 1)[0] + "."
    assert f"inet {prefix}" in output


def test_cni_result_is_shown_in_inspect(netenv):
    write_conflist(netenv, "cshow")
    netenv.moord.moor("run", "-d", "--name", "shown", "--network", "cshow", "busybox", "sleep", "60")
    result = netenv.moord.inspect("shown")["NetworkSettings"]["cni_result"]
    assert result["cniVersion"] == "1.0.0"
    assert result["ips"][0]["address"].endswith("/24")


def test_cni_published_port_is_reachable_on_the_bridge(netenv):
    conf = write_conflist(netenv, "cport")
    port = free_port()
    netenv.moord.moor("run", "-d", "--name", "web", "--network", "cport", "-p", f"{port}:80", "busybox", "sh", "-c",
                      WEB.format(name="web"))
    gateway = conf["subnet"].rsplit(".", 1)[0] + ".1"
    assert wait_until(lambda: fetch(gateway, port), 30, message="the portmap port") == "hello-from-web\n"


def test_cni_remove_runs_del_and_frees_the_lease(netenv):
    conf = write_conflist(netenv, "cdel")
    netenv.moord.moor("run", "-d", "--name", "temp", "--network", "cdel", "busybox", "sleep", "60")
    address = netenv.moord.inspect("temp")["NetworkSettings"]["ip_address"]
    netenv.moord.moor("rm", "-f", "temp")
    assert not (conf["data_dir"] / address).exists()
    assert netenv.links(conf["bridge"]) == []


def test_cni_check_passes_for_a_running_container(netenv):
    from netplugins.cni import CniPlugin
    write_conflist(netenv, "ccheck")
    netenv.moord.moor("run", "-d", "--name", "checked", "--network", "ccheck", "busybox", "sleep", "60")
    container_id = netenv.moord.inspect("checked")["Id"]
    plugin = CniPlugin(CNI_BIN, netenv.moord.state / "cni")
    plugin.check(container_id, str(netenv.moord.state / "netns" / container_id))


def test_cni_network_is_listed(netenv):
    write_conflist(netenv, "clisted")
    output = netenv.moord.moor("network", "ls").stdout.decode()
    assert any(line.split()[:2] == ["clisted", "cni"] for line in output.splitlines())


def test_cni_plugin_failure_cleans_up(netenv):
    write_conflist(netenv, "cbroken", [{"type": "no-such-plugin"}])
    result = netenv.moord.moor("run", "--rm", "--network", "cbroken", "busybox", "true", check=False)
    assert b"failed to set up network cbroken" in result.stderr
    assert b"CNI plugin 'no-such-plugin' was not found" in result.stderr
    assert netenv.netns_files() == []
