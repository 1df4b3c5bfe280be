"""Published ports: parsing ``-p``, checking that a host port is free, and the NAT rules.

Two backends write the same rules, and ``port_backend`` in moord's config
picks one.  ``auto``, the default, takes nftables, or iptables where the
``nft`` command is missing.

nftables: moord keeps one table of its own (``ip moorage`` unless configured
otherwise).  Published ports are elements of two maps, keyed by protocol and
host port (and host address, for ``-p IP:PORT:PORT``), so that publishing or
withdrawing a port adds or deletes one element and never edits a rule:

* ``prerouting`` and ``output`` send traffic for a local address to ``publish``,
  which DNATs it through the maps to the container's address and port;
* ``postrouting`` masquerades DNATed traffic from 127.0.0.1 (the bridge must
  have ``route_localnet`` set for it to leave at all), DNATed traffic from a
  bridge subnet in ``hairpin_nets`` (a container that reaches a published
  port through a host address), and, for the subnets in ``masq_nets``,
  traffic that leaves for other networks.

iptables: two chains of the nat table named after the configured table
(``MOORAGE-DNAT`` and ``MOORAGE-POSTROUTING`` for the table ``moorage``,
``MOORAGE-x-DNAT`` for ``moorage-x``), jumped to from ``PREROUTING`` and
``OUTPUT`` (for local addresses) and from ``POSTROUTING``.  Each published
port is one DNAT rule whose comment holds its key, and each subnet one or
two MASQUERADE rules; withdrawing deletes exactly those rules.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import shutil
import socket
import shlex
import subprocess

from netplugins.ipam import ANY_ADDRESS

PORT_FORM = "[IP:]HOSTPORT:CONTAINERPORT[/tcp|/udp] or CONTAINERPORT[/tcp|/udp]"
_PORT_SPEC = re.compile(r"^(?:(?:(?P<ip>[0-9.]+):)?(?P<host>[0-9]*):)?(?P<ctr>[0-9]+)(?:/(?P<proto>tcp|udp))?$")
NFT_TIMEOUT = 30
BACKENDS = ("auto", "nft", "iptables")
CHAIN_NAME_MAX = 28   # iptables chain names are at most 28 characters


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




def choose_backend(requested: str, path: str | None = None) -> str:
    """Resolve ``auto`` to ``nft`` or ``iptables`` by the commands found on ``path`` (default $PATH)."""
    if requested not in BACKENDS:
        raise PortError(f"invalid port_backend {requested!r}: use auto, nft or iptables")
    if requested != "auto":
        return requested
    if shutil.which("nft", path=path) is not None:
        return "nft"
    if shutil.which("iptables", path=path) is not None:
        return "iptables"
    return "nft"   # neither is installed: publishing reports the missing nft command


def make_rules(table: str, backend: str = "auto"):
    """Return the rules object of the chosen backend for moord's table."""
    chosen = choose_backend(backend)
    return IptablesRules(table) if chosen == "iptables" else NftRules(table)


def _run(argv: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess:
    if shutil.which(argv[0]) is None:
        package = "nftables" if argv[0] == "nft" else "iptables"
        raise PortError(f"the {argv[0]} command is missing: install the {package} package to publish ports, "
                        "or set port_backend to the other one")
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=NFT_TIMEOUT)


# -- nftables ------------------------------------------------------------------

def _nft(script: str) -> None:
    done = _run(["nft", "-f", "-"], script.encode())
    if done.returncode != 0:
        raise PortError(f"nft failed: {done.stderr.decode(errors='replace').strip()}")


def table_script(table: str) -> str:
    """Build the nft script of the table, maps and chains.  Loading it again keeps the map elements."""
    return f"""
table ip {table} {{
  map ports_any {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}
  map ports_ip {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}
  set masq_nets {{ type ipv4_addr; flags interval; }}
  set hairpin_nets {{ type ipv4_addr; flags interval; }}
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
add rule ip {table} postrouting ct status dnat ip saddr @hairpin_nets masquerade
add rule ip {table} postrouting ip saddr @masq_nets ip daddr != @masq_nets masquerade
"""


class NftRules:
    """moord's nftables table; every method is idempotent."""

    backend = "nft"

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
        self._set_element("masq_nets", subnet, on)

    def hairpin(self, subnet: str, on: bool) -> None:
        self._set_element("hairpin_nets", subnet, on)

    def _set_element(self, name: str, subnet: str, on: bool) -> None:
        self.ensure_table()
        verb = "add" if on else "delete"
        try:
            _nft(f"{verb} element ip {self.table} {name} {{ {subnet} }}\n")
        except PortError as exc:
            if on or "No such file or directory" not in str(exc):
                raise

    def listing(self) -> str:
        done = _run(["nft", "list", "table", "ip", self.table])
        return done.stdout.decode()

    def remove(self) -> None:
        """Delete the whole table; a table that is already gone is fine."""
        _run(["nft", "delete", "table", "ip", self.table])
        self._ready = False


def _map(port: dict) -> str:
    return "ports_any" if port["host_ip"] == ANY_ADDRESS else "ports_ip"


def _key(port: dict) -> str:
    key = f"{port['proto']} . {port['host_port']}"
    return key if port["host_ip"] == ANY_ADDRESS else f"{port['host_ip']} . {key}"


# -- iptables --------------------------------------------------------------------

def chain_prefix(table: str) -> str:
    """``moorage`` -> ``MOORAGE``, ``moorage-x`` -> ``MOORAGE-x``, ``other`` -> ``MOORAGE-other``."""
    if table == "moorage":
        return "MOORAGE"
    return "MOORAGE-" + (table[len("moorage-"):] if table.startswith("moorage-") else table)


class IptablesRules:
    """The same rules as ``NftRules``, in chains of the iptables nat table; every method is idempotent."""

    backend = "iptables"

    def __init__(self, table: str):
        self.table = table
        prefix = chain_prefix(table)
        self.dnat = f"{prefix}-DNAT"
        self.post = f"{prefix}-POSTROUTING"
        if len(self.post) > CHAIN_NAME_MAX:
            raise PortError(f"table name {table!r} is too long for iptables chain {self.post}: "
                            f"use a name of at most {CHAIN_NAME_MAX - len('MOORAGE--POSTROUTING')} characters")
        self._ready = False

    def _jumps(self) -> list[tuple[str, list[str]]]:
        local = ["-m", "addrtype", "--dst-type", "LOCAL"]
        return [("PREROUTING", local + ["-j", self.dnat]), ("OUTPUT", local + ["-j", self.dnat]),
                ("POSTROUTING", ["-j", self.post])]

    def ensure_table(self) -> None:
        if self._ready:
            return
        for chain in (self.dnat, self.post):
            if _ipt("-S", chain, check=False).returncode != 0:
                _ipt("-N", chain)
        for chain, spec in self._jumps():
            self._ensure(chain, spec)
        self._ensure(self.post, ["-s", "127.0.0.0/8", "-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE"])
        self._ready = True

    def publish(self, ports: list[dict], container_ip: str) -> None:
        self.ensure_table()
        for port in ports:
            spec = ["-p", port["proto"]]
            if port["host_ip"] != ANY_ADDRESS:
                spec += ["-d", port["host_ip"]]
            spec += ["--dport", str(port["host_port"]), "-m", "comment", "--comment", _comment(port),
                     "-j", "DNAT", "--to-destination", f"{container_ip}:{port['container_port']}"]
            self._ensure(self.dnat, spec)

    def withdraw(self, ports: list[dict]) -> None:
        """Delete the DNAT rules of the ports, found by their comment; a rule that is gone is skipped."""
        keys = {_comment(port) for port in ports}
        if not keys:
            return
        listed = _ipt("-S", self.dnat, check=False)
        if listed.returncode != 0:
            return   # the chain is gone, and its rules with it
        for line in listed.stdout.decode().splitlines():
            words = shlex.split(line)
            if words[:1] == ["-A"] and _comment_of(words) in keys:
                _ipt("-D", *words[1:], check=False)

    def masquerade(self, subnet: str, on: bool) -> None:
        # NOTE: unlike the nft set, this rule also masquerades traffic to another moord bridge subnet.
        self._toggle(["-s", subnet, "!", "-d", subnet, "-j", "MASQUERADE"], on)

    def hairpin(self, subnet: str, on: bool) -> None:
        self._toggle(["-s", subnet, "-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE"], on)

    def _toggle(self, spec: list[str], on: bool) -> None:
        if on:
            self.ensure_table()
            self._ensure(self.post, spec)
        elif _ipt("-C", self.post, *spec, check=False).returncode == 0:
            _ipt("-D", self.post, *spec)

    def _ensure(self, chain: str, spec: list[str]) -> None:
        if _ipt("-C", chain, *spec, check=False).returncode != 0:
            _ipt("-A", chain, *spec)

    def listing(self) -> str:
        """Return the rules of both chains and the jumps to them, as ``iptables -S`` prints them."""
        done = _ipt("-S", check=False)
        return "".join(line + "\n" for line in done.stdout.decode().splitlines()
                       if self.dnat in line.split() or self.post in line.split()
                       or f"-A {self.dnat} " in line or f"-A {self.post} " in line)

    def remove(self) -> None:
        """Delete the jumps and both chains; parts that are already gone are skipped."""
        for chain, spec in self._jumps():
            while _ipt("-C", chain, *spec, check=False).returncode == 0:
                _ipt("-D", chain, *spec)
        for chain in (self.dnat, self.post):
            if _ipt("-S", chain, check=False).returncode == 0:
                _ipt("-F", chain)
                _ipt("-X", chain)
        self._ready = False


def _ipt(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    # -w waits for the xtables lock that another iptables run may hold.
    done = _run(["iptables", "-w", "10", "-t", "nat", *args])
    if check and done.returncode != 0:
        raise PortError(f"iptables {' '.join(args)} failed: {done.stderr.decode(errors='replace').strip()}")
    return done


def _comment(port: dict) -> str:
    return f"moorage:{port['proto']}:{port['host_ip']}:{port['host_port']}"


def _comment_of(words: list[str]) -> str | None:
    for index, word in enumerate(words[:-1]):
        if word == "--comment":
            return words[index + 1]
    return None


Rules = NftRules   # the name bench/network.py and older callers use
