"""Helpers of moord around the network hooks: checks of ``moor run``'s network flags, and the
namespace path and hosts files in the container's OCI config."""

from __future__ import annotations

import copy
import ipaddress
import json
from pathlib import Path

from netplugins import hosts, ports as portlib
from shim.protocol import InvalidArgument
from supervisor.spec.options import check_hostname

# A container made from a --spec file (or by a moord older than network plugins) keeps its
# spec's network namespace as it is; the shim brings lo up in it.
SPEC_MODE = "spec"
ETC_FILES = {"hosts": "/etc/hosts", "hostname": "/etc/hostname", "resolv.conf": "/etc/resolv.conf"}


def check_request(net: dict, default_mode: str) -> dict:
    """Validate the ``network`` part of a create request and return it normalised for storage."""
    net = dict(net or {})
    mode = net.get("mode") or default_mode
    try:
        published = [portlib.parse(spec) for spec in net.get("ports") or []]
    except portlib.PortError as exc:
        raise InvalidArgument(str(exc)) from None
    if (published or net.get("publish_all")) and (mode in ("none", "host") or mode.startswith("container:")):
        raise InvalidArgument(f"-p and -P need a bridge or CNI network, not --network {mode}")
    ip = net.get("ip")
    if ip is not None:
        _address(ip, "--ip")
    dns = [str(_address(server, "--dns")) for server in net.get("dns") or []]
    add_hosts = [_add_host(entry) for entry in net.get("add_hosts") or []]
    return {"mode": mode, "ip": ip, "ports": published, "publish_all": bool(net.get("publish_all")),
            "dns": dns, "add_hosts": add_hosts}


def _address(value, flag: str):
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise InvalidArgument(f"invalid {flag} {value!r}: give an IPv4 address such as 10.231.5.9") from None


def _add_host(entry) -> str:
    name, sep, address = entry.partition(":") if isinstance(entry, str) else ("", "", "")
    if not sep:
        raise InvalidArgument(f"invalid --add-host {entry!r}: use NAME:IP, for example db:10.231.5.9")
    check_hostname(name, "--add-host name")
    return f"{name}:{_address(address, '--add-host')}"


def exposed_ports(image_config: dict) -> list[str]:
    """Return the keys of the image's ExposedPorts (``80/tcp``), for ``-P``."""
    config = image_config.get("config", image_config) if isinstance(image_config, dict) else {}
    exposed = (config or {}).get("ExposedPorts") or {}
    return sorted(key for key in exposed if isinstance(key, str))


def uses_own_namespace(spec: dict) -> bool:
    """Check whether the OCI config requests a new network namespace (one that moord makes and configures)."""
    namespaces = spec.get("linux", {}).get("namespaces", [])
    return any(ns.get("type") == "network" and not ns.get("path") for ns in namespaces)


def spec_with_network(spec: dict, netns: str, files_dir: Path | None) -> dict:
    """Copy the config, joining ``netns`` ("" for the host's namespace) and mounting the files."""
    spec = copy.deepcopy(spec)
    namespaces = [ns for ns in spec["linux"]["namespaces"] if ns.get("type") != "network"]
    if netns:
        namespaces.append({"type": "network", "path": netns})
    spec["linux"]["namespaces"] = namespaces
    if files_dir is not None:
        taken = {mount["destination"] for mount in spec.get("mounts", [])}
        for name, destination in ETC_FILES.items():
            if destination not in taken and (files_dir / name).exists():
                spec.setdefault("mounts", []).append(
                    {"destination": destination, "type": "bind", "source": str(files_dir / name),
                     "options": ["rbind", "rprivate", "rw"]})
    return spec


def write_files(files_dir: Path, driver: str, hostname: str, result: dict, net: dict) -> None:
    """Write the hosts files for a network whose plugin wrote none (none, host, cni)."""
    if (files_dir / "hosts").exists():
        return
    if driver == "host":
        hosts.copy_host_files(files_dir)
        return
    own = [(result["ip_address"], [hostname])] if result.get("ip_address") else []
    hosts.write_all(files_dir, hostname, own, net.get("add_hosts") or [], net.get("dns") or [])


def save_state(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data))
    temporary.rename(path)
