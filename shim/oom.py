"""Watch a container's memory cgroup for kills by the kernel's OOM killer.

The shim's poll loop waits on one file descriptor per container:

* cgroup v1: an eventfd registered for ``memory.oom_control`` through
  ``cgroup.event_control``.  The kernel signals it when the cgroup goes out of
  memory, and again when the cgroup is removed.
* cgroup v2: an inotify watch on ``memory.events``, which the kernel modifies
  on each ``oom`` and ``oom_kill`` event.

Both only signal that something may have changed.  The count of kills is the
``oom_kill`` counter (in ``memory.oom_control`` on v1, ``memory.events`` on
v2), and the v1 notification comes before the kill, so the shim reads the
counter again just before it reports the init's exit.

Finding the cgroup reads /proc/PID/cgroup and runs in the create worker; the
watch itself costs the long-lived shim one or two file descriptors.
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
    name = "memory.oom_control" if version == V1 else "memory.events"
    try:
        with open(os.path.join(folder, name), "rb") as handle:
            text = handle.read()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(b" ")
        if key == b"oom_kill" and value.strip().isdigit():
            return int(value)
    return None


class OomWatch:
    """One memory cgroup's OOM notifications and the number of kills already reported."""

    def __init__(self, version: str, folder: str, fd: int):
        self.version = version
        self.folder = folder
        self.fd = fd
        self.reported = 0

    def __repr__(self) -> str:
        state = "closed" if self.fd < 0 else f"fd={self.fd}"
        return f"<OomWatch {self.version} {self.folder} {state} reported={self.reported}>"

    def drain(self) -> None:
        """Consume the pending notification so that the fd is not readable again until the next one."""
        try:
            while os.read(self.fd, 4096):
                if self.version == V1:
                    break
        except (BlockingIOError, OSError):
            pass

    def new_kills(self) -> int:
        """Return how many kills happened since the last call; the counter starts at 0 with the cgroup."""
        count = read_oom_kills(self.version, self.folder)
        if count is None or count <= self.reported:
            return 0
        fresh, self.reported = count - self.reported, count
        return fresh

    def gone(self) -> bool:
        """Tell whether the cgroup was removed, which also wakes a v1 eventfd."""
        return not os.path.isdir(self.folder)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_watch(version: str, folder: str) -> OomWatch:
    """Start watching the memory cgroup at ``folder``; raise OSError when the kernel refuses."""
    if version == V1:
        return OomWatch(V1, folder, _register_v1(folder))
    return OomWatch(V2, folder, _watch_v2(os.path.join(folder, "memory.events")))


def _register_v1(folder: str) -> int:
    event_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        control_fd = os.open(os.path.join(folder, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
        try:
            # The kernel keeps the registration with the eventfd, so the control file can be closed.
            with open(os.path.join(folder, "cgroup.event_control"), "w") as handle:
                handle.write(f"{event_fd} {control_fd}")
        finally:
            os.close(control_fd)
    except OSError:
        os.close(event_fd)
        raise
    return event_fd


def _watch_v2(path: str) -> int:
    # ctypes is already loaded by the launcher (for prctl), so this adds no module to the shim.
    libc = reaper.libc()
    fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
    if fd < 0:
        raise OSError(reaper.last_errno(), f"inotify_init1 failed for {path}")
    if libc.inotify_add_watch(fd, os.fsencode(path), _IN_MODIFY) < 0:
        error = reaper.last_errno()
        os.close(fd)
        raise OSError(error, f"inotify_add_watch failed for {path}", path)
    return fd
