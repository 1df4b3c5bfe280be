"""A small Moorage network plugin: a point-to-point link between the host and each container.

It serves networks created with ``moor network create --driver p2p``.  Each
container gets a veth pair and no bridge: ``eth0`` inside, with the address
given by ``moor run --ip``, and a host side named ``pp`` + the container id,
with the network's gateway address and a route to the container.

Setup makes things in order and teardown removes them by name alone, so
teardown also cleans up after a setup that stopped half-way, and running it
twice is harmless.
"""

from __future__ import annotations

import errno
import os

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from netplugins.netns import open_netlink
from supervisor.hookspecs import hookimpl

DRIVER = "p2p"
SCOPE_LINK = 253


def host_side(container_id: str) -> str:
    return "pp" + container_id[:12]


class PointToPoint:
    """Implements the two network hooks for the ``p2p`` driver."""

    @hookimpl
    def moorage_network_setup(self, container_id: str, netns: str, network: dict, options: dict) -> dict | None:
        if network.get("driver") != DRIVER:
            return None
        address = options.get("ip")
        if not address:
            raise ValueError(f"network {network['name']} needs an address for each container: use moor run --ip")
        name = host_side(container_id)

        with IPRoute() as host:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                host.link("add", ifname=name, kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd})
            finally:
                os.close(fd)
            index = host.link_lookup(ifname=name)[0]
            host.addr("add", index=index, address=network["gateway"], prefixlen=32)
            host.link("set", index=index, state="up")
            host.route("add", dst=f"{address}/32", oif=index, scope=SCOPE_LINK)

        with open_netlink(netns) as inside:
            eth0 = inside.link_lookup(ifname="eth0")[0]
            inside.addr("add", index=eth0, address=address, prefixlen=32)
            inside.link("set", index=eth0, state="up")
            inside.route("add", dst=f"{network['gateway']}/32", oif=eth0, scope=SCOPE_LINK)
            inside.route("add", dst="0.0.0.0/0", gateway=network["gateway"], oif=eth0)

        return {"driver": DRIVER, "network": network["name"], "ip_address": address, "interface": "eth0",
                "host_interface": name}

    @hookimpl
    def moorage_network_teardown(self, container_id: str, netns: str, network: dict) -> None:
        if network.get("driver") != DRIVER:
            return
        with IPRoute() as host:
            found = host.link_lookup(ifname=host_side(container_id))
            if not found:
                return
            try:
                host.link("del", index=found[0])
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:
                    raise


plugin = PointToPoint()
