"""Network plugins: ``none``, ``host``, ``container:NAME``, ``bridge`` and ``cni``.

Each plugin implements ``moorage_network_setup`` and
``moorage_network_teardown`` (see supervisor/hookspecs.py) and acts only on
networks whose ``driver`` it serves, returning None for the others.  moord
makes the container's network namespace before it calls setup, so a plugin
configures the namespace before the container's process starts.
"""

from __future__ import annotations

from pathlib import Path

from netplugins import bridge, cni, ports
from netplugins.ipam import NetworkDB
from netplugins.networks import Networks
from supervisor.hookspecs import hookimpl

DEFAULT_NETWORK = "bridge"


class BasicPlugin:
    """``none`` (only ``lo``, which moord brings up), ``host`` and ``container:NAME``: nothing to configure."""

    network_drivers = ("none", "host", "container")

    @hookimpl
    def moorage_network_setup(self, container_id: str, netns: str, network: dict, options: dict) -> dict | None:
        if network.get("driver") not in ("none", "host", "container"):
            return None
        result = {"driver": network["driver"], "network": network["name"]}
        if network["driver"] == "container":
            result["container"] = network["container"]
        return result

    @hookimpl
    def moorage_network_teardown(self, container_id: str, netns: str, network: dict) -> None:
        return None

    @hookimpl
    def moorage_network_check(self, container_id: str, netns: str, network: dict) -> dict | None:
        return {} if network.get("driver") in ("none", "host", "container") else None


def build(config) -> tuple[Networks, list]:
    """Build the network registry and the built-in plugin objects for one moord."""
    db = NetworkDB(config.db_path)
    rules = ports.make_rules(config.nft_table, config.port_backend)
    settings = {"bridge_network": DEFAULT_NETWORK, "bridge_name": config.bridge_name,
                "bridge_subnet": config.bridge_subnet, "cni_conf_dir": config.cni_conf_dir}
    plugins = [BasicPlugin(), bridge.BridgePlugin(db, rules),
               cni.CniPlugin(config.cni_bin_dir, Path(config.state) / "cni")]
    return Networks(db, rules, settings), plugins
