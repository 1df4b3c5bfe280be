"""Hairpin: containers reach a published port through the host's address on their own bridge.

Each test runs once per port backend (nft and iptables).  The host address
used is the test bridge's gateway, so all traffic stays on that bridge.
A container that reaches its own port needs both the hairpin mode of its
veth and the hairpin masquerade rule.  With bridge netfilter on, as on this
host, a peer gets through without the masquerade rule, because conntrack
rewrites the bridged reply.
"""

from __future__ import annotations

from pathlib import Path

from conftest import wait_until
from netfixture import anyenv  # noqa: F401  (fixture)
from test_net_ports import free_port, gateway, web


def fetch_from(env, name: str, address: str, port: int) -> str | None:
    """Send GET / to ADDRESS:PORT from inside container ``name``; return the body, or None if nothing came back.

    The request goes through busybox nc: this host's busybox-static wget
    (1.35.0, Debian 12) crashed with a segmentation fault on every URL tried.
    """
    request = f'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 3 {address} {port}'
    result = env.moord.moor("exec", name, "sh", "-c", request, check=False)
    reply = result.stdout.decode()
    return reply.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in reply else None


def test_veth_has_hairpin_mode(anyenv):
    web(anyenv, "hp")
    veth = anyenv.moord.inspect("hp")["NetworkSettings"]["host_interface"]
    assert Path(f"/sys/class/net/{veth}/brport/hairpin_mode").read_text().strip() == "1"


def test_peer_reaches_port_through_host_address(anyenv):
    port = free_port()
    web(anyenv, "server", "-p", f"{port}:80")
    anyenv.moord.moor("run", "-d", "--name", "client", "busybox", "sleep", "300")
    got = wait_until(lambda: fetch_from(anyenv, "client", gateway(anyenv), port), 30, message="the peer's port")
    assert got == "hello-from-server\n"


def test_container_reaches_own_port_through_host_address(anyenv):
    port = free_port()
    web(anyenv, "selfie", "-p", f"{port}:80")
    got = wait_until(lambda: fetch_from(anyenv, "selfie", gateway(anyenv), port), 30, message="its own port")
    assert got == "hello-from-selfie\n"


def hairpin_rule(env) -> str:
    if env.backend == "nft":
        return "ct status dnat ip saddr @hairpin_nets masquerade"
    return f"-s {env.default_subnet} -m conntrack --ctstate DNAT -j MASQUERADE"


def test_bridge_subnet_has_hairpin_rule(anyenv):
    web(anyenv, "rule")
    assert hairpin_rule(anyenv) in anyenv.rules()


def test_nft_hairpin_set_has_bridge_subnet(anyenv):
    web(anyenv, "rule")
    if anyenv.backend != "nft":
        return   # the iptables rule names the subnet itself
    hairpin_set = anyenv.nft().split("set hairpin_nets", 1)[1].split("}", 1)[0]
    assert anyenv.default_subnet in hairpin_set
