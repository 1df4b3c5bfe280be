"""The example network plugin in contrib/netplugin-example, driven through its hooks.

The test makes a namespace with moord's own helper, calls setup and teardown
as moord would, and looks at the interfaces; no traffic is sent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from conftest import REPO
from netfixture import free_subnet
from netplugins import netns

sys.path.insert(0, str(REPO / "contrib" / "netplugin-example"))
import moorage_p2p  # noqa: E402


@pytest.fixture
def p2p(tmp_path):
    """A namespace, a network of the p2p driver, and a container id; removed afterwards."""
    container_id = uuid.uuid4().hex * 2
    path = tmp_path / "netns"
    netns.create(path)
    subnet = free_subnet(24)
    prefix = subnet.rsplit(".", 1)[0]
    network = {"name": "pp", "driver": "p2p", "subnet": subnet, "gateway": f"{prefix}.1"}
    yield container_id, str(path), network, f"{prefix}.5"
    moorage_p2p.plugin.moorage_network_teardown(container_id=container_id, netns=str(path), network=network)
    netns.remove(path)


def inside(path: str, *args: str) -> str:
    return subprocess.run(["nsenter", f"--net={path}", *args], capture_output=True, timeout=30).stdout.decode()


def test_example_setup_gives_eth0_the_address(p2p):
    container_id, path, network, address = p2p
    moorage_p2p.plugin.moorage_network_setup(container_id=container_id, netns=path, network=network,
                                             options={"ip": address})
    assert f"inet {address}/32" in inside(path, "ip", "-4", "-o", "addr", "show", "eth0")


def test_example_teardown_removes_the_host_side_twice_harmlessly(p2p):
    container_id, path, network, address = p2p
    moorage_p2p.plugin.moorage_network_setup(container_id=container_id, netns=path, network=network,
                                             options={"ip": address})
    for _ in range(2):
        moorage_p2p.plugin.moorage_network_teardown(container_id=container_id, netns=path, network=network)
    links = [link["ifname"] for link in json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True,
                                                                  timeout=10).stdout)]
    assert moorage_p2p.host_side(container_id) not in links


def test_example_ignores_other_drivers(p2p):
    container_id, path, network, address = p2p
    result = moorage_p2p.plugin.moorage_network_setup(container_id=container_id, netns=path,
                                                      network=dict(network, driver="bridge"), options={})
    assert result is None
