"""Built-in metrics: per-container numbers from cgroup v1 or v2 files and from psutil.

``moorage_collect_metrics`` returns a flat dict; every key is optional,
because a controller may be missing or a file unreadable:

=========================  ===============================  =================================
key                        cgroup v1 source                 cgroup v2 source
=========================  ===============================  =================================
cpu_usage_ns               cpuacct.usage                    cpu.stat usage_usec * 1000
cpu_periods                cpu.stat nr_periods              cpu.stat nr_periods
cpu_throttled_periods      cpu.stat nr_throttled            cpu.stat nr_throttled
cpu_throttled_ns           cpu.stat throttled_time          cpu.stat throttled_usec * 1000
memory_usage_bytes         memory.usage_in_bytes            memory.current
memory_limit_bytes         memory.limit_in_bytes            memory.max (absent when "max")
memory_cache_bytes         memory.stat total_cache/cache    memory.stat file
memory_oom_kills           memory.oom_control oom_kill      memory.events oom_kill
pids_current               pids.current                     pids.current
pids_limit                 pids.max (absent when "max")     pids.max (absent when "max")
blkio_read_bytes           blkio.throttle.io_service_bytes  io.stat rbytes (all devices)
blkio_write_bytes          (_recursive when present)        io.stat wbytes
processes, rss_bytes       psutil over cgroup.procs, or the process tree of the init pid
=========================  ===============================  =================================

A v1 memory limit above 2**62 means no limit (the kernel reports a page
multiple near 2**63) and is left out, like v2's "max".
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import psutil

from supervisor.hookspecs import hookimpl

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_UNLIMITED = 1 << 62
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio")


def read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, PermissionError, ProcessLookupError, OSError):
        return None
    return int(text) if text.lstrip("-").isdigit() else None


def read_keyed(path: Path) -> dict[str, int]:
    """Parse a flat keyed file (``KEY VALUE`` per line), as cpu.stat, memory.stat and memory.events are."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    values = {}
    for line in lines:
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            values[key] = int(value.strip())
    return values


def is_unified(root: Path = CGROUP_ROOT) -> bool:
    return (root / "cgroup.controllers").exists()


# -- cgroup v1 -------------------------------------------------------------------------

def v1_folders(pid: int, cgroup_path: str, root: Path = CGROUP_ROOT) -> dict[str, Path]:
    """Return each v1 controller's folder for a container, from /proc/PID/cgroup when the pid is alive."""
    relative = {controller: cgroup_path for controller in V1_CONTROLLERS}
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines() if pid else []
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            if controller in relative:
                relative[controller] = path
    return {controller: root / controller / path.lstrip("/") for controller, path in relative.items()}


def read_v1(folders: dict[str, Path]) -> dict:
    metrics: dict = {}
    _put(metrics, "cpu_usage_ns", read_int(folders["cpuacct"] / "cpuacct.usage"))
    cpu = read_keyed(folders["cpu"] / "cpu.stat")
    _put(metrics, "cpu_periods", cpu.get("nr_periods"))
    _put(metrics, "cpu_throttled_periods", cpu.get("nr_throttled"))
    _put(metrics, "cpu_throttled_ns", cpu.get("throttled_time"))

    memory = folders["memory"]
    _put(metrics, "memory_usage_bytes", read_int(memory / "memory.usage_in_bytes"))
    limit = read_int(memory / "memory.limit_in_bytes")
    _put(metrics, "memory_limit_bytes", limit if limit is not None and limit < V1_UNLIMITED else None)
    stat = read_keyed(memory / "memory.stat")
    _put(metrics, "memory_cache_bytes", stat.get("total_cache", stat.get("cache")))
    _put(metrics, "memory_oom_kills", read_keyed(memory / "memory.oom_control").get("oom_kill"))

    _put(metrics, "pids_current", read_int(folders["pids"] / "pids.current"))
    _put(metrics, "pids_limit", read_int(folders["pids"] / "pids.max"))
    metrics.update(_v1_blkio(folders["blkio"]))
    return metrics


def _v1_blkio(folder: Path) -> dict:
    for name in ("blkio.throttle.io_service_bytes_recursive", "blkio.throttle.io_service_bytes"):
        try:
            lines = (folder / name).read_text().splitlines()
        except OSError:
            continue
        totals = {"Read": 0, "Write": 0}
        for line in lines:
            fields = line.split()
            if len(fields) == 3 and fields[1] in totals and fields[2].isdigit():
                totals[fields[1]] += int(fields[2])
        return {"blkio_read_bytes": totals["Read"], "blkio_write_bytes": totals["Write"]}
    return {}


# -- cgroup v2 -------------------------------------------------------------------------

def v2_folder(pid: int, cgroup_path: str, root: Path = CGROUP_ROOT) -> Path:
    """Return a container's unified folder, from the ``0::`` line of /proc/PID/cgroup when the pid is alive."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines() if pid else []
    except OSError:
        lines = []
    for line in lines:
        if line.startswith("0::"):
            return root / line[3:].lstrip("/")
    return root / cgroup_path.lstrip("/")


def read_v2(folder: Path) -> dict:
    metrics: dict = {}
    cpu = read_keyed(folder / "cpu.stat")
    _put(metrics, "cpu_usage_ns", _scaled(cpu.get("usage_usec"), 1000))
    _put(metrics, "cpu_periods", cpu.get("nr_periods"))
    _put(metrics, "cpu_throttled_periods", cpu.get("nr_throttled"))
    _put(metrics, "cpu_throttled_ns", _scaled(cpu.get("throttled_usec"), 1000))

    _put(metrics, "memory_usage_bytes", read_int(folder / "memory.current"))
    _put(metrics, "memory_limit_bytes", read_int(folder / "memory.max"))
    _put(metrics, "memory_cache_bytes", read_keyed(folder / "memory.stat").get("file"))
    _put(metrics, "memory_oom_kills", read_keyed(folder / "memory.events").get("oom_kill"))

    _put(metrics, "pids_current", read_int(folder / "pids.current"))
    _put(metrics, "pids_limit", read_int(folder / "pids.max"))
    metrics.update(_v2_io(folder / "io.stat"))
    return metrics


def _v2_io(path: Path) -> dict:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    read = write = 0
    for line in lines:
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key == "rbytes" and value.isdigit():
                read += int(value)
            elif key == "wbytes" and value.isdigit():
                write += int(value)
    return {"blkio_read_bytes": read, "blkio_write_bytes": write}


# -- processes ---------------------------------------------------------------------

def process_metrics(pids: list[int]) -> dict:
    """Count the processes and sum their resident memory with psutil; vanished ones are skipped."""
    count = rss = 0
    for pid in pids:
        try:
            rss += psutil.Process(pid).memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        count += 1
    return {"processes": count, "rss_bytes": rss}


def container_pids(procs_file: Path, init_pid: int) -> list[int]:
    """Return the pids in a container's cgroup, or the init's process tree when cgroup.procs is unreadable."""
    try:
        return [int(line) for line in procs_file.read_text().split()]
    except (OSError, ValueError):
        pass
    try:
        init = psutil.Process(init_pid)
        return [init_pid] + [child.pid for child in init.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return []


def _put(metrics: dict, key: str, value) -> None:
    if value is not None:
        metrics[key] = value


def _scaled(value: int | None, factor: int) -> int | None:
    return None if value is None else value * factor


def collect(container_id: str, cgroup_path: str, pid: int, root: Path = CGROUP_ROOT) -> dict:
    """Return one container's metrics from whichever cgroup version the host mounts at ``root``."""
    if is_unified(root):
        folder = v2_folder(pid, cgroup_path, root)
        metrics = read_v2(folder)
        procs = folder / "cgroup.procs"
    else:
        folders = v1_folders(pid, cgroup_path, root)
        metrics = read_v1(folders)
        procs = folders["pids"] / "cgroup.procs"
    metrics.update(process_metrics(container_pids(procs, pid)))
    return metrics


class CgroupMetrics:
    """Plugin that reads a container's cgroup files and its processes."""

    name = "metrics"

    def __init__(self, root: Path = CGROUP_ROOT):
        self.root = root

    @hookimpl
    def moorage_collect_metrics(self, container_id: str, cgroup_path: str, pid: int) -> dict:
        return collect(container_id, cgroup_path, pid, self.root)


def host_memory_bytes() -> int:
    return psutil.virtual_memory().total


def online_cpus() -> int:
    return len(os.sched_getaffinity(0))


def collect_all(plugins, targets: list[dict]) -> list[dict]:
    """Call ``moorage_collect_metrics`` for each running target; return the targets with ``metrics`` added.

    Each target has ``id``, ``name``, ``status``, ``cgroup_path`` and ``pid``.
    A plugin error is logged and leaves that container's metrics empty.
    """
    results = []
    for target in targets:
        metrics: dict = {}
        if target["status"] == "running" and target["pid"]:
            try:
                results_of_plugins = plugins.hook.moorage_collect_metrics(container_id=target["id"],
                                                               cgroup_path=target["cgroup_path"], pid=target["pid"])
            except Exception as exc:
                log.error("container %s: collecting metrics failed: %s", target["id"], exc)
                results_of_plugins = []
            # pluggy returns the last registered plugin's result first, so apply them in registration order.
            for result in reversed(results_of_plugins):
                metrics.update(result or {})
        results.append(dict(target, metrics=metrics))
    return results
