"""Prometheus text endpoint (exposition format 0.0.4) served by moord's event loop.

Off by default.  ``[metrics] address`` in moord's config, or
``moord --metrics-address``, takes ``HOST:PORT`` (``127.0.0.1:9323``,
``[::1]:9323``) or a unix socket path (``/run/moorage/metrics.sock`` or
``unix:///run/moorage/metrics.sock``).  The handler serves one
``GET /metrics`` per connection, then closes it.  The collection runs in a
worker thread, so a slow cgroup read does not stall the event loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from pathlib import Path

from shim.protocol import InvalidArgument

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REQUEST_TIMEOUT = 10.0
MAX_REQUEST_BYTES = 16 * 1024

# metrics key -> (Prometheus name, type, help, factor applied to the value)
SERIES = (
    ("cpu_usage_ns", "moorage_container_cpu_usage_seconds_total", "counter",
     "CPU time used by the container's processes, in seconds.", 1e-9),
    ("cpu_periods", "moorage_container_cpu_periods_total", "counter",
     "CFS enforcement periods that elapsed while the container ran.", 1),
    ("cpu_throttled_periods", "moorage_container_cpu_throttled_periods_total", "counter",
     "CFS periods in which the container was throttled.", 1),
    ("cpu_throttled_ns", "moorage_container_cpu_throttled_seconds_total", "counter",
     "Time the container was throttled, in seconds.", 1e-9),
    ("memory_usage_bytes", "moorage_container_memory_usage_bytes", "gauge",
     "Memory charged to the container's cgroup, page cache included.", 1),
    ("memory_limit_bytes", "moorage_container_memory_limit_bytes", "gauge",
     "Memory limit of the container's cgroup (absent when unlimited).", 1),
    ("memory_cache_bytes", "moorage_container_memory_cache_bytes", "gauge",
     "Page cache charged to the container's cgroup.", 1),
    ("memory_oom_kills", "moorage_container_memory_oom_kills_total", "counter",
     "Processes the kernel's OOM killer ended in the container's cgroup.", 1),
    ("pids_current", "moorage_container_pids", "gauge", "Tasks in the container's pids cgroup.", 1),
    ("pids_limit", "moorage_container_pids_limit", "gauge", "Task limit of the container (absent when unlimited).", 1),
    ("blkio_read_bytes", "moorage_container_blkio_read_bytes_total", "counter",
     "Bytes read from block devices by the container.", 1),
    ("blkio_write_bytes", "moorage_container_blkio_write_bytes_total", "counter",
     "Bytes written to block devices by the container.", 1),
    ("processes", "moorage_container_processes", "gauge", "Processes in the container, counted with psutil.", 1),
    ("rss_bytes", "moorage_container_rss_bytes", "gauge",
     "Sum of the resident set sizes of the container's processes.", 1),
)


def parse_address(value: str) -> tuple[str, object]:
    """Return ``("unix", path)`` or ``("tcp", (host, port))`` for a metrics address."""
    text = str(value).strip()
    if text.startswith("unix://"):
        text = text[len("unix://"):]
    if text.startswith("/"):
        return "unix", Path(text)
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        number = 0
    if not sep or not 0 < number < 65536:
        raise InvalidArgument(f"invalid metrics address {value!r}: use an IP and port such as 127.0.0.1:9323, "
                              "or a unix socket path")
    return "tcp", (host, number)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) or value != int(value) else str(int(value))


def render(results: list[dict]) -> str:
    """Render collected container metrics in the Prometheus text format."""
    lines = ["# HELP moorage_container_running Whether the container is running (1) or not (0).",
             "# TYPE moorage_container_running gauge"]
    for item in results:
        labels = f'id="{_escape(item["id"])}",name="{_escape(item["name"])}"'
        lines.append(f"moorage_container_running{{{labels}}} {1 if item['status'] == 'running' else 0}")
    for key, name, kind, text, factor in SERIES:
        samples = [(item, item["metrics"][key]) for item in results if key in item["metrics"]]
        if not samples:
            continue
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        for item, value in samples:
            labels = f'id="{_escape(item["id"])}",name="{_escape(item["name"])}"'
            lines.append(f"{name}{{{labels}}} {_number(value * factor)}")
    return "\n".join(lines) + "\n"


class MetricsServer:
    """A minimal HTTP/1.1 server with one resource, ``GET /metrics``."""

    def __init__(self, manager, collect_targets):
        self.manager = manager
        self.collect_targets = collect_targets
        self.server: asyncio.base_events.Server | None = None
        self.unix_path: Path | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            if method not in ("GET", "HEAD"):
                await self._reply(writer, 405, "method not allowed: use GET\n", method == "HEAD")
            elif target.split("?", 1)[0] != "/metrics":
                await self._reply(writer, 404, "not found: the only resource is /metrics\n", False)
            else:
                started = time.monotonic()
                body = render(await self.collect_targets())
                log.debug("metrics collected in %.3f s", time.monotonic() - started)
                await self._reply(writer, 200, body, method == "HEAD")
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                ConnectionError) as exc:
            log.debug("metrics request dropped: %s", exc)
        finally:
            writer.close()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, status: int, body: str, head_only: bool) -> None:
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
        data = body.encode()
        headers = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                   f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n")
        writer.write(headers.encode() + (b"" if head_only else data))
        await writer.drain()

    async def start(self, address: str) -> None:
        kind, target = parse_address(address)
        if kind == "unix":
            target.unlink(missing_ok=True)
            self.server = await asyncio.start_unix_server(self.handle, path=str(target), limit=MAX_REQUEST_BYTES)
            os.chmod(target, 0o660)
            self.unix_path = target
        else:
            host, port = target
            if not ipaddress.ip_address(host).is_loopback:
                log.warning("metrics endpoint on %s is reachable from other hosts and has no authentication", host)
            self.server = await asyncio.start_server(self.handle, host, port, limit=MAX_REQUEST_BYTES)
        log.info("metrics endpoint serving on %s", address)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.unix_path is not None:
            self.unix_path.unlink(missing_ok=True)
            self.unix_path = None
        log.info("metrics endpoint stopped")


async def start_server(address: str, manager) -> MetricsServer:
    from plugins.metrics import collect_all

    async def collect_targets() -> list[dict]:
        targets = metric_targets(manager, include_stopped=False)
        return await asyncio.to_thread(collect_all, manager.plugins, targets)

    server = MetricsServer(manager, collect_targets)
    await server.start(address)
    return server


def metric_targets(manager, include_stopped: bool) -> list[dict]:
    """Return what ``collect_all`` needs for each container of a Manager."""
    targets = []
    for container in manager.containers.values():
        record = container.record
        if not include_stopped and record.status != "running":
            continue
        targets.append({"id": record.id, "name": record.name, "status": record.status, "pid": record.pid,
                        "cgroup_path": record.spec.get("linux", {}).get("cgroupsPath", f"/moorage/{record.id}")})
    return targets
