"""Bring up the loopback interface in a container's new network namespace.

runc creates the namespace but leaves ``lo`` down, so a service listening on
127.0.0.1 inside the container would be unreachable even from itself.  The
shim enters the namespace from a short-lived thread (setns changes only the
calling thread) and sets the interface flags with an ioctl, which avoids
forking a helper process.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import threading

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def _set_loopback_up(netns_path: str, errors: list) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {netns_path} failed")
        finally:
            os.close(fd)
        set_loopback_up_here()
    except OSError as exc:
        errors.append(exc)


def set_loopback_up_here() -> None:
    """Set ``lo`` up in the network namespace of the calling thread."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def loopback_up(pid: int) -> None:
    """Set ``lo`` up in the network namespace of process ``pid``."""
    errors: list = []
    worker = threading.Thread(target=_set_loopback_up, args=(f"/proc/{pid}/ns/net", errors))
    worker.start()
    worker.join()
    if errors:
        raise errors[0]


def has_new_network_namespace(spec: dict) -> bool:
    namespaces = spec.get("linux", {}).get("namespaces", [])
    return any(ns.get("type") == "network" and not ns.get("path") for ns in namespaces)
