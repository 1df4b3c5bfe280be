"""The /etc/hosts, /etc/hostname and /etc/resolv.conf files that moord bind-mounts into a container.

The files live in the container's own folder.  A file is rewritten in place
(truncate and write), never replaced, because a bind mount follows the inode:
a renamed-over file would leave the container looking at the old one.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

FILES = ("hosts", "hostname", "resolv.conf")
HOST_RESOLV_CONF = Path("/etc/resolv.conf")

_LOCAL = ("127.0.0.1\tlocalhost\n"
          "::1\tlocalhost ip6-localhost ip6-loopback\n")


def hosts_text(hostname: str, own: list[tuple[str, list[str]]], extra: list[str], peers: list[tuple[str, list[str]]]) -> str:
    """Build /etc/hosts: localhost, the container's own names, --add-host entries, then its peers."""
    lines = [_LOCAL]
    if not own:
        own = [("127.0.1.1", [hostname])]
    for address, names in own:
        lines.append(f"{address}\t{' '.join(names)}\n")
    for entry in extra:
        name, _, address = entry.partition(":")
        lines.append(f"{address}\t{name}\n")
    for address, names in peers:
        lines.append(f"{address}\t{' '.join(names)}\n")
    return "".join(lines)


def resolv_text(dns: list[str], host_file: Path = HOST_RESOLV_CONF) -> str:
    """Name servers from --dns, else the host's that are not loopback addresses, else none."""
    servers = list(dns)
    options: list[str] = []
    if not servers:
        servers, options = _host_nameservers(host_file)
    text = "".join(f"nameserver {server}\n" for server in servers)
    return text + "".join(f"{line}\n" for line in options)


def _host_nameservers(host_file: Path) -> tuple[list[str], list[str]]:
    try:
        lines = host_file.read_text().splitlines()
    except OSError:
        return [], []
    servers, others = [], []
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                if not ipaddress.ip_address(words[1].split("%")[0]).is_loopback:
                    servers.append(words[1])
            except ValueError:
                continue
        elif words and words[0] in ("search", "options"):
            others.append(" ".join(words))
    return servers, others


def write(folder: Path, name: str, text: str) -> Path:
    """Write one file in place, so that a bind mount of it shows the new content."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with open(path, "a+") as handle:
        handle.seek(0)
        handle.truncate()
        handle.write(text)
    return path


def write_all(folder: Path, hostname: str, own: list[tuple[str, list[str]]], extra: list[str], dns: list[str],
              peers: list[tuple[str, list[str]]] = ()) -> None:
    write(folder, "hostname", hostname + "\n")
    write(folder, "hosts", hosts_text(hostname, own, extra, list(peers)))
    write(folder, "resolv.conf", resolv_text(dns))


def copy_host_files(folder: Path) -> None:
    """For --network host: the host's own files, copied so the container cannot change the host's."""
    for name in FILES:
        source = Path("/etc") / name
        write(folder, name, source.read_text() if source.exists() else "")
