"""Networks, address leases and published ports, kept in moord's SQLite database.

Every change runs in its own short ``BEGIN IMMEDIATE`` transaction on a
connection of its own, so two containers starting at once (in two threads,
or two processes) never get one address or one host port.  A lease names its
container; the reconcile at moord's start frees leases of containers that
are gone.
"""

from __future__ import annotations

import ipaddress
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS net_networks (
    name TEXT PRIMARY KEY,
    driver TEXT NOT NULL,
    subnet TEXT NOT NULL,
    gateway TEXT NOT NULL,
    bridge TEXT NOT NULL,
    mtu INTEGER NOT NULL DEFAULT 1500,
    internal INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS net_leases (
    network TEXT NOT NULL,
    address TEXT NOT NULL,
    container_id TEXT NOT NULL,
    hostname TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL DEFAULT '',
    files_dir TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (network, address),
    UNIQUE (network, container_id)
);
CREATE TABLE IF NOT EXISTS net_ports (
    proto TEXT NOT NULL,
    host_ip TEXT NOT NULL,
    host_port INTEGER NOT NULL,
    container_id TEXT NOT NULL,
    container_ip TEXT NOT NULL,
    container_port INTEGER NOT NULL,
    PRIMARY KEY (proto, host_ip, host_port)
);
"""

ANY_ADDRESS = "0.0.0.0"


class AddressExhausted(Exception):
    """No free address is left in a network's subnet (or the one asked for is taken)."""


class PortTaken(Exception):
    """A host port is already published by another container."""


class NetworkDB:
    """Short-lived connections to the network tables; safe to use from any thread."""

    def __init__(self, path: Path):
        self.path = path
        with self._connect() as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    @contextmanager
    def transaction(self):
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    # -- networks ---------------------------------------------------------------

    def add_network(self, network: dict) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO net_networks (name, driver, subnet, gateway, bridge, mtu, internal, created) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (network["name"], network["driver"], network["subnet"], network["gateway"],
                        network["bridge"], network["mtu"], int(network["internal"]), time.time()))

    def network(self, name: str) -> dict | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM net_networks WHERE name = ?", (name,)).fetchone()
        return _network(row) if row else None

    def networks(self) -> list[dict]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM net_networks ORDER BY created").fetchall()
        return [_network(row) for row in rows]

    def remove_network(self, name: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM net_networks WHERE name = ?", (name,))

    # -- addresses ----------------------------------------------------------------

    def lease(self, network: dict, container_id: str, wanted: str | None = None, **details) -> str:
        """Reserve an address for a container (the same one again if it has one)."""
        subnet = ipaddress.ip_network(network["subnet"])
        with self.transaction() as db:
            row = db.execute("SELECT address FROM net_leases WHERE network = ? AND container_id = ?",
                             (network["name"], container_id)).fetchone()
            if row and (wanted is None or row["address"] == wanted):
                return row["address"]
            used = {r["address"] for r in db.execute("SELECT address FROM net_leases WHERE network = ?",
                                                       (network["name"],))}
            address = _pick(subnet, used | {network["gateway"]}, wanted)
            db.execute("DELETE FROM net_leases WHERE network = ? AND container_id = ?", (network["name"], container_id))
            db.execute("INSERT INTO net_leases (network, address, container_id, hostname, name, files_dir) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       (network["name"], address, container_id, details.get("hostname", ""),
                        details.get("name", ""), details.get("files_dir", "")))
        return address

    def release(self, network_name: str, container_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM net_leases WHERE network = ? AND container_id = ?", (network_name, container_id))

    def leases(self, network_name: str | None = None) -> list[dict]:
        with self._connect() as db:
            if network_name is None:
                rows = db.execute("SELECT * FROM net_leases ORDER BY network, address").fetchall()
            else:
                rows = db.execute("SELECT * FROM net_leases WHERE network = ? ORDER BY address",
                                  (network_name,)).fetchall()
        return [dict(row) for row in rows]

    # -- host ports -----------------------------------------------------------------

    def reserve_ports(self, container_id: str, container_ip: str, ports: list[dict]) -> None:
        """Record the container's published ports; raise PortTaken naming the first one in use."""
        with self.transaction() as db:
            for port in ports:
                clash = db.execute(
                    "SELECT container_id FROM net_ports WHERE proto = ? AND host_port = ? AND container_id != ? "
                    "AND (host_ip = ? OR host_ip = ? OR ? = ?)",
                    (port["proto"], port["host_port"], container_id, port["host_ip"], ANY_ADDRESS,
                     port["host_ip"], ANY_ADDRESS)).fetchone()
                if clash:
                    raise PortTaken(f"host port {port['host_ip']}:{port['host_port']}/{port['proto']} is "
                                    f"already published by container {clash['container_id'][:12]}")
                db.execute("INSERT OR REPLACE INTO net_ports VALUES (?, ?, ?, ?, ?, ?)",
                           (port["proto"], port["host_ip"], port["host_port"], container_id, container_ip,
                            port["container_port"]))

    def ports(self, container_id: str | None = None) -> list[dict]:
        with self._connect() as db:
            if container_id is None:
                rows = db.execute("SELECT * FROM net_ports").fetchall()
            else:
                rows = db.execute("SELECT * FROM net_ports WHERE container_id = ?", (container_id,)).fetchall()
        return [dict(row) for row in rows]

    def release_ports(self, container_id: str) -> list[dict]:
        """Forget the container's published ports and return them."""
        with self.transaction() as db:
            rows = [dict(r) for r in db.execute("SELECT * FROM net_ports WHERE container_id = ?", (container_id,))]
            db.execute("DELETE FROM net_ports WHERE container_id = ?", (container_id,))
        return rows


def _pick(subnet, used: set[str], wanted: str | None) -> str:
    if wanted is not None:
        address = ipaddress.ip_address(wanted)
        if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
            raise AddressExhausted(f"address {wanted} is not a usable host address of subnet {subnet}")
        if wanted in used:
            raise AddressExhausted(f"address {wanted} is already in use on this network")
        return wanted
    for host in subnet.hosts():
        if str(host) not in used:
            return str(host)
    raise AddressExhausted(f"no free address is left in subnet {subnet}")


def _network(row: sqlite3.Row) -> dict:
    network = dict(row)
    network["internal"] = bool(network["internal"])
    return network
