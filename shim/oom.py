"""Watch a container's memory cgroup for kills by the kernel's OOM killer.

The shim's poll loop waits on one file descriptor per container:

* cgroup v1: an eventfd registered for ``memory.oom_control`` through
  ``cgroup.event_control``.  The kernel signals it when the cgroup goes out of
  memory, and again when the cgroup is removed.
* cgroup v2: an inotify watch on ``memory.events``, which the kernel modifies
  on each ``oom`` and ``oom_kill`` event.

Both only signal that something may have changed.  The count of kills is the
``oom_kill`` counter (in ``memory.oom_control`` on v1, ``memory.events`` on
v2).  The v1 notification comes when the cgroup runs out of memory, which
can be before the kill is counted, so the shim reads the counter again for a
few seconds after a notice and once more before it reports the init's exit.

The shim opens the fd before it forks the create worker.  The worker finds
the cgroup in /proc/PID/cgroup and registers the inherited fd, so the
long-lived shim keeps one file descriptor and a few attributes per container.
"""

from __future__ import annotations

import logging
import os

from shim import reaper

log = logging.getLogger(__name__)

CGROUP_ROOT = "/sys/fs/cgroup"
V1 = "v1"
V2 = "v2"
_IN_MODIFY = 0x00000002
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC


def find_memory_cgroup(pid: int, cgroups_path: str | None = None,
                       root: str = CGROUP_ROOT) -> tuple[str, str] | None:
    """Return ``(version, folder)`` of the memory cgroup of ``pid``, or None without one.

    /proc/PID/cgroup names the cgroup; ``cgroups_path`` (the spec's
    linux.cgroupsPath) is the fallback when the process is gone.
    """
    unified = None
    try:
        with open(f"/proc/{pid}/cgroup") as handle:
            lines = handle.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return V1, os.path.join(root, "memory", path.lstrip("/"))
        if controllers == "":
            unified = path
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        path = unified if unified is not None else cgroups_path
        return (V2, os.path.join(root, path.lstrip("/"))) if path is not None else None
    if cgroups_path and os.path.isdir(os.path.join(root, "memory")):
        return V1, os.path.join(root, "memory", cgroups_path.lstrip("/"))
    return None


def read_oom_kills(version: str, folder: str) -> int | None:
    """Return the ``oom_kill`` counter of a memory cgroup, or None when it cannot be read."""
    # os calls and not open(): a file object would run more Python code in every shim.
    name = "memory.oom_control" if version == V1 else "memory.events"
    try:
        fd = os.open(os.path.join(folder, name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            text = os.read(fd, 4096)
        finally:
            os.close(fd)
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(b" ")
        if key == b"oom_kill" and value.strip().isdigit():
            return int(value)
    return None


def drain(fd: int, version: str) -> None:
    """Consume the pending notification so that ``fd`` is not readable again until the next one."""
    try:
        while os.read(fd, 4096):
            if version == V1:
                break
    except OSError:
        pass


def host_version(root: str = CGROUP_ROOT) -> str:
    """Return V2 on a host that mounts only the unified hierarchy, else V1 (the legacy or hybrid layout)."""
    return V2 if os.path.exists(os.path.join(root, "cgroup.controllers")) else V1


def new_notifier(version: str) -> int:
    """Open the fd that OOM notices will wake: an eventfd for v1, an inotify instance for v2.

    The shim opens it before it forks the create worker, which inherits it and
    registers it with ``register``, so the long-lived shim runs no more than
    this call.
    """
    if version == V1:
        return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    libc = reaper.libc()
    fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
    if fd < 0:
        raise OSError(reaper.last_errno(), "inotify_init1 failed")
    return fd


def register(version: str, folder: str, fd: int) -> None:
    """Make the memory cgroup at ``folder`` wake ``fd`` from ``new_notifier``; raise OSError on failure."""
    if version == V1:
        _register_v1(folder, fd)
    else:
        _watch_v2(os.path.join(folder, "memory.events"), fd)


def _register_v1(folder: str, event_fd: int) -> None:
    control_fd = os.open(os.path.join(folder, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
    try:
        # The kernel keeps the registration with the eventfd, so the control file can be closed, and so
        # can this process's copy of the eventfd while another process keeps it open.
        with open(os.path.join(folder, "cgroup.event_control"), "w") as handle:
            handle.write(f"{event_fd} {control_fd}")
    finally:
        os.close(control_fd)


def _watch_v2(path: str, fd: int) -> None:
    # ctypes is already loaded by the launcher (for prctl), so this adds no module to the shim.
    if reaper.libc().inotify_add_watch(fd, os.fsencode(path), _IN_MODIFY) < 0:
        error = reaper.last_errno()
        raise OSError(error, f"inotify_add_watch failed for {path}", path)


# Read once in the launcher, before it forks the shims.
HOST_VERSION = host_version()
