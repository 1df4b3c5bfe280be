"""The ``bridge`` network plugin: one Linux bridge per network, one veth pair per container.

Setup runs these steps in order.  It makes the bridge if it is missing, with
the gateway address and ``route_localnet``, and leases an address.  It
creates the veth pair with its peer made directly inside the container's
namespace as ``eth0``, and gives ``eth0`` its address, MTU and default route.
Last, it publishes ports and writes the hosts files.
Teardown undoes each step by the container id alone, so it also cleans up
after a setup that stopped half-way, and running it twice is harmless.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from netplugins import hosts, netns, ports as portlib
from netplugins.ipam import AddressExhausted, NetworkDB, PortTaken
from supervisor.hookspecs import hookimpl

PEERS_MARK = "# containers on network "
VETH_PREFIX = "mv"


class NetworkSetupError(Exception):
    """A bridge network step failed; the message names the step and the cause."""


def veth_name(container_id: str) -> str:
    return VETH_PREFIX + container_id[:12]


class BridgePlugin:
    """Implements the network hooks for networks whose driver is ``bridge``."""

    network_drivers = ("bridge",)

    def __init__(self, db: NetworkDB, rules: portlib.Rules):
        self.db = db
        self.rules = rules
        self.ready: set[str] = set()   # bridges this process has set up (gateway, sysctl, masquerade)

    @hookimpl
    def moorage_network_setup(self, container_id: str, netns: str, network: dict, options: dict) -> dict | None:
        if network.get("driver") != "bridge":
            return None
        if network["bridge"] not in self.ready or not _exists(network["bridge"]):
            ensure_bridge(network, self.rules)
            self.ready.add(network["bridge"])
        address = self._lease(container_id, network, options)
        interface = self._plug(container_id, Path(netns), network, address)
        published = self._publish(container_id, address, options)
        self._write_files(container_id, network, address, options)
        prefix = ipaddress.ip_network(network["subnet"]).prefixlen
        return {"driver": "bridge", "network": network["name"], "bridge": network["bridge"],
                "ip_address": address, "prefix_len": prefix, "gateway": network["gateway"],
                "mtu": network["mtu"], "ports": published, **interface}

    @hookimpl
    def moorage_network_teardown(self, container_id: str, netns: str, network: dict) -> None:
        if network.get("driver") != "bridge":
            return
        self.rules.withdraw(self.db.release_ports(container_id))
        delete_link(veth_name(container_id))
        self.db.release(network["name"], container_id)
        refresh_peers(self.db, network["name"])

    @hookimpl
    def moorage_network_check(self, container_id: str, netns: str, network: dict) -> dict | None:
        """Check the lease, the veth on the bridge and the address of ``eth0`` in the namespace."""
        if network.get("driver") != "bridge":
            return None
        lease = next((row for row in self.db.leases(network["name"]) if row["container_id"] == container_id), None)
        if lease is None:
            raise NetworkSetupError(f"container {container_id} has no address lease on network {network['name']}")
        host_side = veth_name(container_id)
        with IPRoute() as ipr:
            bridge_index = _index(ipr, network["bridge"])
            link = ipr.get_links(_index(ipr, host_side))[0]
            if link.get_attr("IFLA_MASTER") != bridge_index:
                raise NetworkSetupError(f"interface {host_side} is not attached to bridge {network['bridge']}")
        addresses = _addresses(Path(netns), "eth0")
        if lease["address"] not in addresses:
            raise NetworkSetupError(f"eth0 in the container lacks its address {lease['address']} "
                                    f"(it has {', '.join(addresses) or 'none'})")
        return {"ip_address": lease["address"], "host_interface": host_side}

    # -- steps ------------------------------------------------------------------

    def _lease(self, container_id: str, network: dict, options: dict) -> str:
        try:
            return self.db.lease(network, container_id, options.get("ip"), hostname=options.get("hostname", ""),
                                 name=options.get("name", ""), files_dir=options.get("files_dir", ""))
        except AddressExhausted as exc:
            raise NetworkSetupError(str(exc)) from None

    def _plug(self, container_id: str, netns_path: Path, network: dict, address: str) -> dict:
        host_side = veth_name(container_id)
        with IPRoute() as ipr:
            bridge_index = _index(ipr, network["bridge"])
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                ipr.link("add", ifname=host_side, kind="veth", mtu=network["mtu"],
                         peer={"ifname": "eth0", "net_ns_fd": fd, "mtu": network["mtu"]})
            finally:
                os.close(fd)
            index = _index(ipr, host_side)
            ipr.link("set", index=index, master=bridge_index, state="up")
            # Hairpin mode lets a frame leave by the port it came in on: with bridge netfilter on, a
            # container's own published port, reached through a host address, comes back that way.
            ipr.brport("set", index=index, mode=1)
        with netns.open_netlink(netns_path) as inner:
            eth0 = _index(inner, "eth0")
            prefix = ipaddress.ip_network(network["subnet"]).prefixlen
            inner.addr("add", index=eth0, address=address, prefixlen=prefix)
            inner.link("set", index=eth0, state="up")
            if not network["internal"]:
                inner.route("add", dst="0.0.0.0/0", gateway=network["gateway"], oif=eth0)
            mac = inner.get_links(eth0)[0].get("address")
        return {"interface": "eth0", "host_interface": host_side, "mac_address": mac}

    def _publish(self, container_id: str, address: str, options: dict) -> list[dict]:
        wanted = list(options.get("ports") or [])
        if options.get("publish_all"):
            taken = {(p["proto"], p["container_port"]) for p in wanted}
            wanted += [p for p in portlib.exposed(options.get("exposed_ports") or [])
                       if (p["proto"], p["container_port"]) not in taken]
        if not wanted:
            return []
        try:
            chosen = [portlib.check_free(port) for port in wanted]
            self.db.reserve_ports(container_id, address, chosen)
        except (portlib.PortError, PortTaken) as exc:
            raise NetworkSetupError(str(exc)) from None
        self.rules.publish(chosen, address)
        return chosen

    def _write_files(self, container_id: str, network: dict, address: str, options: dict) -> None:
        folder = Path(options["files_dir"])
        hostname = options.get("hostname") or container_id[:12]
        names = _names(hostname, options.get("name", ""))
        hosts.write_all(folder, hostname, [(address, names)], list(options.get("add_hosts") or []),
                        list(options.get("dns") or []))
        refresh_peers(self.db, network["name"])


# -- the bridge itself ---------------------------------------------------------------

def ensure_bridge(network: dict, rules: portlib.Rules) -> None:
    """Create the network's bridge with its gateway address, once; concurrent callers are fine."""
    prefix = ipaddress.ip_network(network["subnet"]).prefixlen
    with IPRoute() as ipr:
        if not ipr.link_lookup(ifname=network["bridge"]):
            _ignore(errno.EEXIST, ipr.link, "add", ifname=network["bridge"], kind="bridge", mtu=network["mtu"])
        index = _index(ipr, network["bridge"])
        _ignore(errno.EEXIST, ipr.addr, "add", index=index, address=network["gateway"], prefixlen=prefix)
        ipr.link("set", index=index, state="up")
    # Lets DNATed traffic from 127.0.0.1 leave through the bridge (it is masqueraded on the way).
    Path(f"/proc/sys/net/ipv4/conf/{network['bridge']}/route_localnet").write_text("1")
    if not network["internal"]:
        # DNATed traffic from the subnet back into it (hairpin) is masqueraded, so replies return through the host.
        rules.hairpin(network["subnet"], True)
        rules.masquerade(network["subnet"], True)


def _exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def remove_bridge(network: dict, rules: portlib.Rules) -> None:
    delete_link(network["bridge"])
    rules.masquerade(network["subnet"], False)
    rules.hairpin(network["subnet"], False)


def delete_link(name: str) -> None:
    """Delete a host interface by name; one that is already gone is not an error."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if found:
            _ignore(errno.ENODEV, ipr.link, "del", index=found[0])


def _addresses(netns_path: Path, name: str) -> list[str]:
    """Return the IPv4 addresses of interface ``name`` in the namespace at ``netns_path``."""
    with netns.open_netlink(netns_path) as inner:
        index = _index(inner, name)
        return [a.get_attr("IFA_ADDRESS") for a in inner.get_addr(index=index, family=socket.AF_INET)]


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise NetworkSetupError(f"interface {name} does not exist")
    return found[0]


def _ignore(code: int, call, *args, **kwargs) -> None:
    try:
        call(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code != code:
            raise


# -- hosts files of the containers on one network ------------------------------------------

def _names(hostname: str, name: str) -> list[str]:
    return [hostname] + ([name] if name and name != hostname else [])


def refresh_peers(db: NetworkDB, network_name: str) -> None:
    """Rewrite the peers section of every container's /etc/hosts on the network."""
    leases = db.leases(network_name)
    for lease in leases:
        if not lease["files_dir"]:
            continue
        peers = [(other["address"], _names(other["hostname"] or other["container_id"][:12], other["name"]))
                 for other in leases if other["container_id"] != lease["container_id"]]
        _rewrite_peers(Path(lease["files_dir"]) / "hosts", network_name, peers)


def _rewrite_peers(path: Path, network_name: str, peers: list[tuple[str, list[str]]]) -> None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return
    head = text.split(PEERS_MARK, 1)[0]
    section = "".join(f"{address}\t{' '.join(names)}\n" for address, names in peers)
    hosts.write(path.parent, path.name, f"{head}{PEERS_MARK}{network_name}\n{section}")
