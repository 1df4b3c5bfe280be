"""A fixture for network tests: a private moord whose default network, bridges, subnets and
nftables table are the test's own, and a teardown that removes all of them.

Subnets come from 10.231.0.0/16 and are checked against every host route
and address before use.  Traffic in these tests stays on loopback and on the
bridges and namespaces the test made.
"""

from __future__ import annotations

import ipaddress
import json
import random
import subprocess
import uuid
from pathlib import Path

import pytest

POOL = ipaddress.ip_network("10.231.0.0/16")


def host_subnets() -> list:
    """Every IPv4 subnet that a host route or address covers."""
    subnets = []
    routes = json.loads(subprocess.run(["ip", "-j", "-4", "route", "show", "table", "all"], capture_output=True,
                                       timeout=10).stdout or b"[]")
    for route in routes:
        dst = route.get("dst", "default")
        if dst != "default":
            subnets.append(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False))
    return subnets


def free_subnet(prefix: int = 24, taken: list | None = None) -> str:
    """A random subnet of POOL that no host route and no earlier pick uses."""
    used = host_subnets() + list(taken or [])
    candidates = list(POOL.subnets(new_prefix=prefix))
    random.shuffle(candidates)
    for candidate in candidates:
        if not any(candidate.overlaps(other) for other in used):
            return str(candidate)
    pytest.fail("no free subnet left in 10.231.0.0/16")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, timeout=30)


class NetEnv:
    """One test's network world: its moord, bridges, subnets and nftables table."""

    def __init__(self, moord_factory, tmp_path: Path, backend: str = "nft"):
        self.tag = uuid.uuid4().hex[:6]
        self.table = f"moorage-{self.tag}"
        self.backend = backend
        self.chains = (f"MOORAGE-{self.tag}-DNAT", f"MOORAGE-{self.tag}-POSTROUTING")
        self.bridges: list[str] = []
        self.subnets: list = []
        self.tmp_path = tmp_path
        self.cni_dir = tmp_path / "cni-conf"
        self.cni_dir.mkdir()
        self.default_bridge = self.bridge_name("d")
        self.default_subnet = self.subnet()
        self.moord = moord_factory("--default-network", "bridge", "--bridge-name", self.default_bridge,
                                   "--bridge-subnet", self.default_subnet, "--nft-table", self.table,
                                   "--cni-conf-dir", str(self.cni_dir), "--port-backend", backend)

    def bridge_name(self, suffix: str) -> str:
        name = f"mt{self.tag}{suffix}"
        self.bridges.append(name)
        return name

    def subnet(self, prefix: int = 24) -> str:
        chosen = free_subnet(prefix, self.subnets)
        self.subnets.append(ipaddress.ip_network(chosen))
        return chosen

    def network(self, name: str, prefix: int = 24, *extra: str) -> dict:
        """Create a bridge network with a fresh subnet and bridge; return its inspect output."""
        subnet = self.subnet(prefix)
        self.moord.moor("network", "create", "--subnet", subnet, "--bridge", self.bridge_name(str(len(self.bridges))),
                        *extra, name)
        return json.loads(self.moord.moor("network", "inspect", name).stdout)[0]

    # -- looking at the host ---------------------------------------------------------

    @staticmethod
    def links(master: str | None = None) -> list[str]:
        args = ["ip", "-j", "link", "show"] + (["master", master] if master else [])
        return [link["ifname"] for link in json.loads(_run(*args).stdout or b"[]")]

    def nft(self) -> str:
        return _run("nft", "list", "table", "ip", self.table).stdout.decode()

    def iptables(self) -> str:
        """The nat table's rules that name this test's chains, as ``iptables -S`` prints them."""
        lines = _run("iptables", "-w", "10", "-t", "nat", "-S").stdout.decode().splitlines()
        return "".join(line + "\n" for line in lines if any(chain in line.split() for chain in self.chains))

    def rules(self) -> str:
        return self.iptables() if self.backend == "iptables" else self.nft()

    def netns_files(self) -> list[str]:
        folder = self.moord.state / "netns"
        return sorted(p.name for p in folder.iterdir() if p.suffix == "") if folder.is_dir() else []

    # -- teardown ----------------------------------------------------------------------

    def cleanup(self) -> None:
        if self.moord.process is not None and self.moord.process.poll() is None:
            for line in self.moord.moor("ps", "-a", "-q", "--no-trunc", check=False).stdout.split():
                self.moord.moor("rm", "-f", line.decode(), check=False)
        self.moord.cleanup()
        folder = self.moord.state / "netns"
        for entry in (folder.iterdir() if folder.is_dir() else []):
            _run("umount", "-l", str(entry))
        for link in self.links():
            if link.startswith("mv") and any(link in self.links(bridge) for bridge in self.bridges):
                _run("ip", "link", "delete", link)
        for bridge in self.bridges:
            if bridge in self.links():
                for link in self.links(bridge):
                    _run("ip", "link", "delete", link)
                _run("ip", "link", "delete", bridge)
        _run("nft", "delete", "table", "ip", self.table)
        remove_chains(self.chains)


def remove_chains(chains) -> None:
    """Delete the jumps to the test's iptables chains from the nat table's hooks, then the chains."""
    if not any(_run("iptables", "-w", "10", "-t", "nat", "-S", chain).returncode == 0 for chain in chains):
        return
    for line in _run("iptables", "-w", "10", "-t", "nat", "-S").stdout.decode().splitlines():
        words = line.split()
        if words[:1] == ["-A"] and words[1] not in chains and "-j" in words and words[words.index("-j") + 1] in chains:
            _run("iptables", "-w", "10", "-t", "nat", "-D", *words[1:])
    for chain in chains:
        _run("iptables", "-w", "10", "-t", "nat", "-F", chain)
    for chain in chains:
        _run("iptables", "-w", "10", "-t", "nat", "-X", chain)


@pytest.fixture
def netenv(moord_factory, tmp_path):
    env = NetEnv(moord_factory, tmp_path)
    yield env
    env.cleanup()


@pytest.fixture(params=["nft", "iptables"])
def anyenv(request, moord_factory, tmp_path):
    """A ``netenv`` for each port backend in turn."""
    env = NetEnv(moord_factory, tmp_path, request.param)
    yield env
    env.cleanup()
