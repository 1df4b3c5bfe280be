"""Published ports (-p) through moord's nftables table, port conflicts, and setups that fail half-way.

Traffic goes from the host to 127.0.0.1 or to the test bridge's own
address, and from there only into the test's containers.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest

from conftest import wait_until
from netfixture import netenv  # noqa: F401  (fixture)

WEB = "mkdir -p /w && echo hello-from-{name} > /w/index.html && exec httpd -f -p 80 -h /w"


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


def web(env, name: str, *args: str, detach: bool = True, check: bool = True):
    verb = ("run", "-d") if detach else ("create",)
    return env.moord.moor(*verb, "--name", name, *args, "busybox", "sh", "-c", WEB.format(name=name), check=check)


def gateway(env) -> str:
    return str(next(iter(env.subnets[0].hosts())))


# -- publishing --------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["loopback", "bridge"])
def test_published_port_is_reachable_from_the_host(netenv, where):
    port = free_port()
    web(netenv, "pub", "-p", f"{port}:80")
    address = "127.0.0.1" if where == "loopback" else gateway(netenv)
    assert wait_until(lambda: fetch(address, port), 30, message="the published port") == "hello-from-pub\n"


def test_publish_on_one_address(netenv):
    port = free_port()
    web(netenv, "local", "-p", f"127.0.0.1:{port}:80")
    assert f"127.0.0.1 . tcp . {port} : " in netenv.nft()


def test_random_host_port_is_shown_in_inspect(netenv):
    web(netenv, "rnd", "-p", "80")
    ports = netenv.moord.inspect("rnd")["NetworkSettings"]["ports"]
    chosen = ports[0]["host_port"]
    assert wait_until(lambda: fetch("127.0.0.1", chosen), 30, message="the random port") == "hello-from-rnd\n"


def exposing_image(env) -> str:
    """Import an image of the host's busybox whose config exposes 80/tcp and runs httpd."""
    from test_images import ArchiveBuilder, entry, layer_tar
    layer = layer_tar([entry("bin", "dir"), entry("bin/busybox", data=Path("/bin/busybox").read_bytes(), mode=0o755),
                       entry("bin/sh", "symlink", link="busybox"), entry("bin/httpd", "symlink", link="busybox"),
                       entry("www", "dir"), entry("www/index.html", data=b"hello-from-exposed\n")])
    builder = ArchiveBuilder()
    config = {"Cmd": ["httpd", "-f", "-p", "80", "-h", "/www"], "ExposedPorts": {"80/tcp": {}}}
    builder.tag(builder.add_image([layer], config=config), "exposing:latest")
    archive = builder.write(env.tmp_path / "exposing.tar")
    env.moord.moor("image", "import", str(archive))
    return "exposing:latest"


def test_publish_all_maps_exposed_ports(netenv):
    image = exposing_image(netenv)
    netenv.moord.moor("run", "-d", "--name", "all", "-P", image)
    ports = netenv.moord.inspect("all")["NetworkSettings"]["ports"]
    assert [(p["proto"], p["container_port"]) for p in ports] == [("tcp", 80)]
    assert wait_until(lambda: fetch("127.0.0.1", ports[0]["host_port"]), 30,
                      message="the -P port") == "hello-from-exposed\n"


def test_udp_port_is_published_as_udp(netenv):
    port = free_port()
    netenv.moord.moor("run", "-d", "--name", "dns", "-p", f"{port}:53/udp", "busybox", "sleep", "60")
    assert f"udp . {port} : " in netenv.nft()


def test_stopped_container_withdraws_its_port(netenv):
    port = free_port()
    web(netenv, "brief", "-p", f"{port}:80")
    netenv.moord.moor("stop", "-t", "1", "brief")
    assert f"tcp . {port} :" not in netenv.nft()


@pytest.mark.parametrize("spec", ["70000:80", "abc:80", "1.2.3:80:80", "80/sctp"],
                         ids=["port-too-big", "not-a-number", "bad-address", "unknown-protocol"])
def test_malformed_publish_is_rejected_with_the_value(netenv, spec):
    result = netenv.moord.moor("run", "--rm", "-p", spec, "busybox", "true", check=False)
    assert result.returncode == 125
    assert f"invalid published port {spec!r}".encode() in result.stderr


def test_publish_with_network_none_is_rejected(netenv):
    result = netenv.moord.moor("run", "--rm", "--network", "none", "-p", "8080:80", "busybox", "true", check=False)
    assert b"-p and -P need a bridge or CNI network" in result.stderr


# -- a host port in use fails every start, and the failed start leaves nothing behind ------------------

def test_taken_port_fails_each_start(netenv):
    port = free_port()
    web(netenv, "first", "-p", f"{port}:80")
    web(netenv, "second", "-p", f"{port}:80", detach=False)
    errors = [netenv.moord.moor("start", "second", check=False).stderr for _ in range(2)]
    assert errors[0] == errors[1]
    assert f"host port 0.0.0.0:{port}/tcp is already published by container".encode() in errors[0]
    assert netenv.moord.inspect("second")["State"]["Status"] == "created"


def test_taken_port_leaves_no_veth_or_rule(netenv):
    port = free_port()
    web(netenv, "holder", "-p", f"{port}:80")
    web(netenv, "loser", "-p", f"{port}:80", detach=False)
    netenv.moord.moor("start", "loser", check=False)
    holder = netenv.moord.inspect("holder")["NetworkSettings"]
    assert netenv.links(netenv.default_bridge) == [holder["host_interface"]]
    assert netenv.nft().count(f"tcp . {port} :") == 1


def test_taken_port_start_after_release(netenv):
    port = free_port()
    web(netenv, "early", "-p", f"{port}:80")
    web(netenv, "late", "-p", f"{port}:80", detach=False)
    netenv.moord.moor("start", "late", check=False)
    netenv.moord.moor("stop", "-t", "1", "early")
    netenv.moord.moor("start", "late")
    assert wait_until(lambda: fetch("127.0.0.1", port), 30, message="late's port") == "hello-from-late\n"


def test_port_held_by_host_process(netenv):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = web(netenv, "shadow", "-p", f"{port}:80", check=False)
    assert result.returncode == 125
    assert f"host port 0.0.0.0:{port}/tcp is already in use by a process on this host".encode() in result.stderr


def test_no_rule_for_stopped_container(netenv):
    port = free_port()
    web(netenv, "old", "-p", f"{port}:80")
    address = netenv.moord.inspect("old")["NetworkSettings"]["ip_address"]
    netenv.moord.moor("stop", "-t", "1", "old")
    assert f"{address} . 80" not in netenv.nft()


# -- a network without a free address: the failed setup leaves no veth, namespace or lease ------------

@pytest.fixture
def one_address(netenv):
    """A network whose subnet has exactly one address for containers (a /30 minus its gateway)."""
    return netenv.network("tiny", 30)


def leases(env) -> list[str]:
    return [lease["address"] for lease in json.loads(env.moord.moor("network", "inspect", "tiny").stdout)[0]["leases"]]


def test_no_free_address_fails_start(netenv, one_address):
    web(netenv, "a", "--network", "tiny")
    result = web(netenv, "b", "--network", "tiny", check=False)
    assert result.returncode == 125
    assert b"failed to set up network tiny for container b: no free address" in result.stderr


def test_no_free_address_leaves_nothing(netenv, one_address):
    web(netenv, "a", "--network", "tiny")
    web(netenv, "b", "--network", "tiny", check=False)
    a = netenv.moord.inspect("a")
    assert netenv.links(one_address["bridge"]) == [a["NetworkSettings"]["host_interface"]]
    assert netenv.netns_files() == [a["Id"]]
    assert leases(netenv) == [a["NetworkSettings"]["ip_address"]]
    assert netenv.moord.inspect("b")["State"]["Running"] is False


def test_no_free_address_start_after_release(netenv, one_address):
    web(netenv, "a", "--network", "tiny")
    web(netenv, "b", "--network", "tiny", check=False)
    netenv.moord.moor("rm", "-f", "a")
    netenv.moord.moor("start", "b")
    address = one_address["subnet"].rsplit(".", 1)[0] + "." + str(int(one_address["subnet"].split(".")[3].split("/")[0]) + 2)
    assert netenv.moord.inspect("b")["NetworkSettings"]["ip_address"] == address
