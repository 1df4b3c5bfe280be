"""Named networks: which plugin serves a ``--network`` value, and ``moor network create/ls/inspect/rm``.

``none``, ``host`` and ``container:NAME`` are built in.  Any other name is a
bridge network from moord's database (the default one is made on first use
from moord's settings) or, failing that, a CNI network list from the CNI
configuration folder.  A new bridge network must not overlap any subnet
the host already routes or any other network, so it can only ever serve
containers made here.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import sqlite3

from pyroute2 import IPRoute

from netplugins import bridge, cni, ports as portlib
from netplugins.ipam import NetworkDB
from shim.protocol import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
log = logging.getLogger(__name__)

BUILT_IN = ("none", "host")
DEFAULT_MTU = 1500


class Networks:
    """Resolves and manages networks for one moord."""

    def __init__(self, db: NetworkDB, rules: portlib.Rules, settings: dict):
        self.db = db
        self.rules = rules
        self.settings = settings

    def resolve(self, name: str) -> dict:
        """Build the network dict that the hooks get for a ``--network`` value."""
        if name in BUILT_IN:
            return {"name": name, "driver": name}
        if name.startswith("container:"):
            return {"name": name, "driver": "container", "container": name.partition(":")[2]}
        if name in ("", "bridge", self.settings["bridge_network"]):
            return self.default_network()
        found = self.db.network(name)
        if found:
            return found
        conflist = cni.find_conflist(self.settings["cni_conf_dir"], name)
        if conflist:
            return {"name": name, "driver": "cni", "conflist": str(conflist)}
        raise NotFound(f"no such network: {name} (see `moor network ls`, or create it with "
                       f"`moor network create --subnet CIDR {name}`)")

    def default_network(self) -> dict:
        name = self.settings["bridge_network"]
        found = self.db.network(name)
        if found:
            return found
        try:
            return self._create(name, self.settings["bridge_subnet"], None, DEFAULT_MTU, False,
                                self.settings["bridge_name"], adopt=True)
        except (AlreadyExists, InvalidArgument):
            # A concurrent first start may have stored it a moment ago.
            found = self.db.network(name)
            if found:
                return found
            raise

    # -- create, list, remove ------------------------------------------------------

    def create(self, name: str, subnet: str, gateway: str | None, mtu: int, internal: bool,
               bridge_name: str | None, driver: str = "bridge") -> dict:
        """Add a network; a bridge network's bridge is made when its first container starts.

        A driver other than ``bridge`` is served by a plugin that moord loaded
        (see docs/netplugins.md); moord stores the network and checks its subnet.
        """
        if not isinstance(name, str) or not _NAME.match(name) or name in BUILT_IN or name == "bridge":
            raise InvalidArgument(f"invalid network name {name!r}: use letters, digits, '_', '.' and '-' "
                                  "(none, host and bridge are reserved)")
        if not isinstance(driver, str) or not _NAME.match(driver) or driver in ("none", "host", "container", "cni"):
            raise InvalidArgument(f"invalid driver {driver!r}: give bridge or the driver of a network plugin")
        return self._create(name, subnet, gateway, mtu, internal, bridge_name, driver)

    def _create(self, name: str, subnet: str, gateway: str | None, mtu: int, internal: bool,
                bridge_name: str | None, driver: str = "bridge", adopt: bool = False) -> dict:
        if self.db.network(name) or cni.find_conflist(self.settings["cni_conf_dir"], name):
            raise AlreadyExists(f"network {name} already exists (see `moor network inspect {name}`)")
        network = _check_subnet(subnet, gateway)
        bridge_name = bridge_name or f"mb-{name[:12]}"
        if not _IFNAME.match(bridge_name):
            raise InvalidArgument(f"invalid bridge name {bridge_name!r}: at most 15 letters, digits, '_', '.', '-'")
        if not isinstance(mtu, int) or not 68 <= mtu <= 65535:
            raise InvalidArgument(f"invalid MTU {mtu!r}: give a number from 68 to 65535")
        gateway = gateway or str(next(network.hosts()))
        self._check_unused(network, bridge_name, gateway if adopt else None)
        record = {"name": name, "driver": driver, "subnet": str(network), "bridge": bridge_name,
                  "gateway": gateway, "mtu": mtu, "internal": bool(internal)}
        try:
            self.db.add_network(record)
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"network {name} already exists (see `moor network inspect {name}`)") from None
        return self.db.network(name)

    def _check_unused(self, network, bridge_name: str, adopt_gateway: str | None = None) -> None:
        """Refuse a subnet or bridge that is taken; with ``adopt_gateway``, take over an idle leftover bridge.

        The default network's bridge outlives moord's database (a reinstall,
        a new --root), so moord adopts a bridge of that name that has the
        expected gateway address and no ports, as docker does with docker0.
        """
        for other in self.db.networks():
            if network.overlaps(ipaddress.ip_network(other["subnet"])):
                raise InvalidArgument(f"subnet {network} overlaps network {other['name']} ({other['subnet']})")
            if other["bridge"] == bridge_name:
                raise AlreadyExists(f"bridge {bridge_name} already serves network {other['name']}")
        with IPRoute() as ipr:
            adopted = None
            if ipr.link_lookup(ifname=bridge_name):
                if adopt_gateway is None or not _idle_bridge(ipr, bridge_name, network, adopt_gateway):
                    raise AlreadyExists(
                        f"interface {bridge_name} already exists on this host: choose another bridge name "
                        "(`moor network create --bridge NAME`, or `moord --bridge-name NAME "
                        "--bridge-subnet CIDR` for the default network), or delete the interface "
                        f"if nothing uses it (`ip link delete {bridge_name}`)")
                log.warning("adopting bridge %s, left idle by an earlier moord, for the default network",
                            bridge_name)
                adopted = ipr.link_lookup(ifname=bridge_name)[0]
            for used in _host_subnets(ipr, skip_index=adopted):  # the adopted bridge's own routes do not count
                if network.overlaps(used):
                    raise InvalidArgument(f"subnet {network} overlaps {used}, which this host already uses: "
                                          "choose a subnet no host route or address covers")

    def remove(self, name: str) -> None:
        if name in ("bridge", self.settings["bridge_network"]):
            raise FailedPrecondition(f"network {name} is the default network and cannot be removed; "
                                     "moord makes it again at the next start that uses it")
        network = self.db.network(name)
        if network is None:
            raise NotFound(f"no such network: {name} (CNI networks are removed by deleting their file)")
        users = self.db.leases(name)
        if users:
            ids = ", ".join(lease["container_id"][:12] for lease in users)
            raise FailedPrecondition(f"network {name} is in use by container(s) {ids}: stop or remove them first")
        if network["driver"] == "bridge":
            bridge.remove_bridge(network, self.rules)
        self.db.remove_network(name)

    def list(self) -> list[dict]:
        found = [dict(n, containers=len(self.db.leases(n["name"]))) for n in self.db.networks()]
        known = {n["name"] for n in found}
        for name, path in cni.conflists(self.settings["cni_conf_dir"]):
            if name not in known:
                found.append({"name": name, "driver": "cni", "conflist": str(path)})
        return found

    def inspect(self, name: str) -> dict:
        network = self.resolve(name)
        if network["driver"] == "bridge":
            network["leases"] = self.db.leases(network["name"])
            network["ports"] = [p for p in self.db.ports()
                                if any(p["container_id"] == lease["container_id"] for lease in network["leases"])]
        return network


def _check_subnet(subnet: str, gateway: str | None):
    try:
        network = ipaddress.IPv4Network(subnet, strict=True)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"invalid subnet {subnet!r}: {exc}; give an IPv4 CIDR such as 10.231.5.0/24") from None
    if network.prefixlen > 30:
        raise InvalidArgument(f"subnet {subnet} is too small: give a prefix of /30 or shorter")
    if gateway is not None:
        try:
            address = ipaddress.IPv4Address(gateway)
        except ValueError:
            raise InvalidArgument(f"invalid gateway {gateway!r}: give an IPv4 address") from None
        if address not in network or address in (network.network_address, network.broadcast_address):
            raise InvalidArgument(f"gateway {gateway} is not a host address of subnet {subnet}")
    return network


def _idle_bridge(ipr: IPRoute, name: str, network, gateway: str) -> bool:
    """Tell whether interface ``name`` is a bridge with no ports and no address but ``gateway``."""
    index = ipr.link_lookup(ifname=name)[0]
    link = ipr.get_links(index)[0]
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "bridge":
        return False
    addresses = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=socket.AF_INET)}
    if addresses - {(gateway, network.prefixlen)}:
        return False
    return not any(other.get_attr("IFLA_MASTER") == index for other in ipr.get_links())


def _host_subnets(ipr: IPRoute, skip_index: int | None = None) -> list:
    subnets = []
    for route in ipr.get_routes(family=socket.AF_INET):
        dst, length = route.get("dst"), route["dst_len"]
        if dst and length and (skip_index is None or route.get_attr("RTA_OIF") != skip_index):
            subnets.append(ipaddress.ip_network(f"{dst}/{length}", strict=False))
    for addr in ipr.get_addr(family=socket.AF_INET):
        if skip_index is None or addr["index"] != skip_index:
            subnets.append(ipaddress.ip_network(f"{addr.get('address')}/{addr['prefixlen']}", strict=False))
    return subnets
