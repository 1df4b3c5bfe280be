"""Published ports: parsing ``-p``, checking that a host port is free, and the nftables rules.

moord keeps one nftables table of its own (``ip moorage`` unless configured
otherwise).  Published ports are elements of two maps, keyed by protocol and
host port (and host address, for ``-p IP:PORT:PORT``), so that publishing or
withdrawing a port adds or deletes one element and never edits a rule:

* ``prerouting`` and ``output`` send traffic for a local address to ``publish``,
  which DNATs it through the maps to the container's address and port;
* ``postrouting`` masquerades DNATed traffic from 127.0.0.1 (the bridge must
  have ``route_localnet`` set for it to leave at all) and, for the subnets in
  ``masq_nets``, traffic that leaves for other networks.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import shutil
import socket
import subprocess

from netplugins.ipam import ANY_ADDRESS

PORT_FORM = "[IP:]HOSTPORT:CONTAINERPORT[/tcp|/udp] or CONTAINERPORT[/tcp|/udp]"
_PORT_SPEC = re.compile(r"^(?:(?:(?P<ip>[0-9.]+):)?(?P<host>[0-9]*):)?(?P<ctr>[0-9]+)(?:/(?P<proto>tcp|udp))?$")
NFT_TIMEOUT = 30


class PortError(Exception):
    """A published port is malformed or already in use on the host."""


def parse(spec: str) -> dict:
    """Parse one ``-p`` value; ``host_port`` 0 means any free port."""
    match = _PORT_SPEC.match(spec) if isinstance(spec, str) else None
    if not match:
        raise PortError(f"invalid published port {spec!r}: expected {PORT_FORM}")
    host_ip = match["ip"] or ANY_ADDRESS
    try:
        ipaddress.IPv4Address(host_ip)
    except ValueError:
        raise PortError(f"invalid published port {spec!r}: {host_ip} is not an IPv4 address") from None
    host_port, container_port = int(match["host"] or 0), int(match["ctr"])
    for port in (container_port,) + ((host_port,) if match["host"] else ()):
        if not 1 <= port <= 65535:
            raise PortError(f"invalid published port {spec!r}: port {port} is outside 1-65535")
    return {"proto": match["proto"] or "tcp", "host_ip": host_ip, "host_port": host_port,
            "container_port": container_port}


def exposed(image_ports: list[str]) -> list[dict]:
    """Turn an image's ExposedPorts keys (``80/tcp``) into ``-P`` mappings to free host ports."""
    return [parse(key) for key in image_ports]


def check_free(port: dict) -> dict:
    """Bind the host port once to check that no process uses it, and pick a free one when it is 0.

    The probe socket is closed on return, so moord keeps no port open.
    """
    kind = socket.SOCK_STREAM if port["proto"] == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        if kind == socket.SOCK_STREAM:
            # Allows a port in TIME_WAIT, but still fails if a socket listens on it.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((port["host_ip"], port["host_port"]))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortError(f"host port {port['host_ip']}:{port['host_port']}/{port['proto']} is already in "
                                "use by a process on this host: stop it or publish another port") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise PortError(f"cannot publish on {port['host_ip']}: it is not an address of this host") from None
            raise
        return dict(port, host_port=probe.getsockname()[1])


# -- nftables ------------------------------------------------------------------

def _nft(script: str) -> None:
    # TODO: fall back to iptables where nft is missing; until then publishing needs the nft command.
    if shutil.which("nft") is None:
        raise PortError("the nft command is missing: install the nftables package to publish ports")
    done = subprocess.run(["nft", "-f", "-"], input=script.encode(), capture_output=True, timeout=NFT_TIMEOUT)
    if done.returncode != 0:
        raise PortError(f"nft failed: {done.stderr.decode(errors='replace').strip()}")


def table_script(table: str) -> str:
    """Build the nft script of the table, maps and chains.  Loading it again keeps the map elements."""
    return f"""
table ip {table} {{
  map ports_any {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}
  map ports_ip {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}
  set masq_nets {{ type ipv4_addr; flags interval; }}
  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
  chain output {{ type nat hook output priority -100; policy accept; }}
  chain publish {{ }}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
}}
flush chain ip {table} prerouting
flush chain ip {table} output
flush chain ip {table} publish
flush chain ip {table} postrouting
add rule ip {table} prerouting fib daddr type local jump publish
add rule ip {table} output fib daddr type local jump publish
add rule ip {table} publish dnat to ip daddr . meta l4proto . th dport map @ports_ip
add rule ip {table} publish dnat to meta l4proto . th dport map @ports_any
add rule ip {table} postrouting ct status dnat ip saddr 127.0.0.0/8 masquerade
add rule ip {table} postrouting ip saddr @masq_nets ip daddr != @masq_nets masquerade
"""


class Rules:
    """moord's nftables table; every method is idempotent."""

    def __init__(self, table: str):
        self.table = table
        self._ready = False

    def ensure_table(self) -> None:
        if not self._ready:
            _nft(table_script(self.table))
            self._ready = True

    def publish(self, ports: list[dict], container_ip: str) -> None:
        self.ensure_table()
        _nft("".join(f"add element ip {self.table} {_map(p)} {{ {_key(p)} : {container_ip} . "
                     f"{p['container_port']} }}\n" for p in ports))

    def withdraw(self, ports: list[dict]) -> None:
        """Delete the ports' map elements; an element that is already gone is skipped."""
        for port in ports:
            try:
                _nft(f"delete element ip {self.table} {_map(port)} {{ {_key(port)} }}\n")
            except PortError as exc:
                if "No such file or directory" not in str(exc):
                    raise

    def masquerade(self, subnet: str, on: bool) -> None:
        self.ensure_table()
        verb = "add" if on else "delete"
        try:
            _nft(f"{verb} element ip {self.table} masq_nets {{ {subnet} }}\n")
        except PortError as exc:
            if on or "No such file or directory" not in str(exc):
                raise

    def listing(self) -> str:
        done = subprocess.run(["nft", "list", "table", "ip", self.table], capture_output=True, timeout=NFT_TIMEOUT)
        return done.stdout.decode()


def _map(port: dict) -> str:
    return "ports_any" if port["host_ip"] == ANY_ADDRESS else "ports_ip"


def _key(port: dict) -> str:
    key = f"{port['proto']} . {port['host_port']}"
    return key if port["host_ip"] == ANY_ADDRESS else f"{port['host_ip']} . {key}"
