"""Network namespaces that moord makes before ``runc create``, pinned by a bind mount.

A namespace exists as long as a process, an open file or a mount refers to it.  moord unshares a new one in
a short-lived thread (unshare changes only the calling thread) and bind-mounts
that thread's ``/proc/self/task/TID/ns/net`` onto a file under the state
folder, the way ``ip netns add`` does under /run/netns.  The mount keeps the
namespace alive across restarts of moord, and its path goes into the OCI
config as ``linux.namespaces[{type: network, path}]``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
from pathlib import Path

from pyroute2 import IPRoute

from shim.netns import set_loopback_up_here

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 0x2
NETLINK_ROUTE = 0

_libc = ctypes.CDLL(None, use_errno=True)


def _unshare_and_pin(path: str, errors: list) -> None:
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
        source = f"/proc/self/task/{threading.get_native_id()}/ns/net"
        if _libc.mount(source.encode(), path.encode(), None, MS_BIND, None) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"bind-mounting the new network namespace on {path} failed: {os.strerror(code)}")
        set_loopback_up_here()
    except OSError as exc:
        errors.append(exc)


def create(path: Path) -> None:
    """Make a new network namespace pinned at ``path``, with ``lo`` up (set in the same thread)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        remove(path)
    path.touch(mode=0o600)
    errors: list = []
    worker = threading.Thread(target=_unshare_and_pin, args=(str(path), errors), name="netns-create")
    worker.start()
    worker.join()
    if errors:
        remove(path)
        raise errors[0]


def is_pinned(path: Path) -> bool:
    """Check whether ``path`` is a mounted namespace file, not a bare placeholder."""
    target = str(path)
    with open("/proc/self/mountinfo") as mounts:
        return any(line.split()[4] == target for line in mounts)


def remove(path: Path) -> None:
    """Unmount and delete a pinned namespace; a missing one is not an error."""
    if _libc.umount2(str(path).encode(), MNT_DETACH) != 0:
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOENT):
            raise OSError(code, f"unmounting network namespace {path} failed: {os.strerror(code)}")
    path.unlink(missing_ok=True)


def open_netlink(path: Path | str) -> IPRoute:
    """Open an rtnetlink socket inside the namespace at ``path``.

    A socket belongs to the namespace of the thread that created it, so a
    short-lived thread enters the namespace and makes the socket.  pyroute2's
    own ``netns=`` argument forks a helper instead, and the helper would
    inherit moord's asyncio signal wake-up descriptor: the SIGTERM that ends
    the helper would reach moord's event loop as if sent to moord.
    """
    made: list = []

    def make() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"entering network namespace {path} failed: {os.strerror(code)}")
            finally:
                os.close(fd)
            made.append(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE))
        except OSError as exc:
            made.append(exc)

    worker = threading.Thread(target=make, name="netns-netlink")
    worker.start()
    worker.join()
    if isinstance(made[0], OSError):
        raise made[0]
    return IPRoute(fileno=made[0].detach())
