"""The iptables backend of published ports, and how moord picks a backend.

Each test's chains are named after its own table (MOORAGE-<tag>-DNAT and
MOORAGE-<tag>-POSTROUTING) and are removed with their jumps at teardown.
Traffic goes from the host to 127.0.0.1 or to the test bridge's own address.
"""

from __future__ import annotations

import os
import shutil
import uuid

import pytest

from conftest import wait_until
from netfixture import NetEnv, remove_chains
from netplugins import ports
from supervisor import config as daemon_config
from shim.protocol import InvalidArgument
from test_net_ports import fetch, free_port, gateway, web


@pytest.fixture
def ipenv(moord_factory, tmp_path):
    env = NetEnv(moord_factory, tmp_path, "iptables")
    yield env
    env.cleanup()


# -- choosing a backend ------------------------------------------------------------------

def command_folder(tmp_path, *commands: str) -> str:
    """A folder that contains links to only the named host commands, to use as PATH."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for command in commands:
        os.symlink(shutil.which(command), folder / command)
    return str(folder)


@pytest.mark.parametrize("commands, expected", [(("nft", "iptables"), "nft"), (("iptables",), "iptables"),
                                                ((), "nft")],
                         ids=["both-installed", "nft-missing", "neither-installed"])
def test_auto_backend_follows_installed_commands(tmp_path, commands, expected):
    assert ports.choose_backend("auto", command_folder(tmp_path, *commands)) == expected


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_configured_backend_is_kept(tmp_path, backend):
    assert ports.choose_backend(backend, command_folder(tmp_path)) == backend


def test_config_rejects_unknown_backend():
    with pytest.raises(InvalidArgument, match="invalid port_backend 'pf': use auto, nft or iptables"):
        daemon_config.load(None, {"port_backend": "pf", "root": "/tmp/x", "state": "/tmp/y"})


def test_long_table_name_is_rejected_for_iptables():
    with pytest.raises(ports.PortError, match="too long for iptables chain"):
        ports.IptablesRules("moorage-" + "x" * 20)


# -- the chains -------------------------------------------------------------------------

@pytest.fixture
def own_chains():
    """An IptablesRules on a table name of this test; its chains are removed afterwards."""
    tag = uuid.uuid4().hex[:6]
    rules = ports.IptablesRules(f"moorage-{tag}")
    yield rules
    remove_chains((rules.dnat, rules.post))


PORT = {"proto": "tcp", "host_ip": "0.0.0.0", "host_port": 40999, "container_port": 80}


def test_iptables_publish_adds_dnat_rule(own_chains):
    own_chains.publish([PORT], "10.231.250.2")
    assert "--dport 40999 -m comment --comment \"moorage:tcp:0.0.0.0:40999\" -j DNAT --to-destination " \
           "10.231.250.2:80" in own_chains.listing()


@pytest.mark.parametrize("hook", ["PREROUTING", "OUTPUT"])
def test_iptables_local_traffic_jumps_to_dnat_chain(own_chains, hook):
    own_chains.ensure_table()
    assert f"-A {hook} -m addrtype --dst-type LOCAL -j {own_chains.dnat}" in own_chains.listing()


def test_iptables_postrouting_jumps_to_own_chain(own_chains):
    own_chains.ensure_table()
    assert f"-A POSTROUTING -j {own_chains.post}" in own_chains.listing()


def test_iptables_withdraw_deletes_only_that_port(own_chains):
    other = dict(PORT, host_port=40998)
    own_chains.publish([PORT, other], "10.231.250.2")
    own_chains.withdraw([PORT])
    listing = own_chains.listing()
    assert "--dport 40999 " not in listing
    assert "--dport 40998 " in listing


def test_iptables_publish_twice_adds_one_rule(own_chains):
    own_chains.publish([PORT], "10.231.250.2")
    own_chains.publish([PORT], "10.231.250.2")
    assert own_chains.listing().count("--dport 40999 ") == 1


@pytest.mark.parametrize("method, rule", [
    ("masquerade", "-A {post} -s 10.231.250.0/24 ! -d 10.231.250.0/24 -j MASQUERADE"),
    ("hairpin", "-A {post} -s 10.231.250.0/24 -m conntrack --ctstate DNAT -j MASQUERADE")],
    ids=["masquerade", "hairpin"])
def test_iptables_subnet_rule_is_added_and_deleted(own_chains, method, rule):
    getattr(own_chains, method)("10.231.250.0/24", True)
    added = own_chains.listing()
    getattr(own_chains, method)("10.231.250.0/24", False)
    assert rule.format(post=own_chains.post) in added
    assert rule.format(post=own_chains.post) not in own_chains.listing()


def test_iptables_remove_deletes_chains_and_jumps(own_chains):
    own_chains.publish([PORT], "10.231.250.2")
    own_chains.remove()
    assert own_chains.listing() == ""


# -- moord with the iptables backend -------------------------------------------------------

@pytest.mark.parametrize("where", ["loopback", "bridge"])
def test_iptables_published_port_is_reachable_from_the_host(ipenv, where):
    port = free_port()
    web(ipenv, "pub", "-p", f"{port}:80")
    address = "127.0.0.1" if where == "loopback" else gateway(ipenv)
    assert wait_until(lambda: fetch(address, port), 30, message="the published port") == "hello-from-pub\n"


def test_iptables_backend_leaves_nft_table_alone(ipenv):
    web(ipenv, "pub", "-p", f"{free_port()}:80")
    assert ipenv.nft() == ""


def test_iptables_stopped_container_withdraws_its_port(ipenv):
    port = free_port()
    web(ipenv, "brief", "-p", f"{port}:80")
    ipenv.moord.moor("stop", "-t", "1", "brief")
    assert f"--dport {port} " not in ipenv.iptables()


def test_iptables_bridge_subnet_is_masqueraded(ipenv):
    web(ipenv, "any")
    assert f"-s {ipenv.default_subnet} ! -d {ipenv.default_subnet} -j MASQUERADE" in ipenv.iptables()


def test_iptables_taken_port_leaves_one_rule(ipenv):
    port = free_port()
    web(ipenv, "holder", "-p", f"{port}:80")
    web(ipenv, "loser", "-p", f"{port}:80", detach=False)
    ipenv.moord.moor("start", "loser", check=False)
    assert ipenv.iptables().count(f"--dport {port} ") == 1
