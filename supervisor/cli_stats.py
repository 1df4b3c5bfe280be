"""``moor stats``: a live table of container resource use, like docker's, or one sample as text or JSON.

CPU % is the CPU time a container used between two samples divided by the
wall time between them, so 100% is one CPU busy.  A container's first row
shows 0.00% until a second sample exists.  MEM % is usage over the cgroup
limit, or over the host's memory when the container has no limit.  NET I/O
is ``--`` because moord does not count network traffic yet.
"""

from __future__ import annotations

import json
import sys
import time

REFRESH_SECONDS = 1.0
HEADER = ("CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "BLOCK I/O", "PIDS")


def add_stats_parser(sub) -> None:
    stats = sub.add_parser("stats", help="show containers' CPU, memory, block I/O and process counts")
    stats.add_argument("-a", "--all", action="store_true", help="include stopped containers")
    stats.add_argument("--no-stream", action="store_true", help="print one sample and exit")
    stats.add_argument("--format", choices=("table", "json"), default="table",
                       help="table (default) or json: one JSON array per sample")
    stats.add_argument("--no-trunc", action="store_true", help="print full container ids")
    stats.add_argument("containers", nargs="*", metavar="CONTAINER", help="only these containers")


def human_bytes(value: float) -> str:
    """Format bytes with binary units as docker's stats does (``12.5MiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.4g}{unit}" if unit != "B" else f"{int(value)}B"
        value /= 1024
    return f"{value}B"


def cpu_percent(previous: dict | None, current: dict, previous_ts: float | None, current_ts: float) -> float:
    if previous is None or previous_ts is None or current_ts <= previous_ts:
        return 0.0
    used = current.get("cpu_usage_ns", 0) - previous.get("cpu_usage_ns", 0)
    return max(0.0, used / ((current_ts - previous_ts) * 1e9) * 100)


def rows(sample: dict, previous: dict | None, no_trunc: bool) -> list[dict]:
    """Return one dict per container with the table's values, computed from two samples."""
    before = {item["id"]: item["metrics"] for item in previous["containers"]} if previous else {}
    out = []
    for item in sample["containers"]:
        metrics = item["metrics"]
        usage = metrics.get("memory_usage_bytes", 0)
        limit = metrics.get("memory_limit_bytes") or sample["host_memory_bytes"]
        out.append({
            "id": item["id"] if no_trunc else item["id"][:12],
            "name": item["name"],
            "cpu_percent": cpu_percent(before.get(item["id"]), metrics, previous["ts"] if previous else None,
                                       sample["ts"]),
            "memory_usage_bytes": usage,
            "memory_limit_bytes": limit,
            "memory_percent": usage / limit * 100 if limit else 0.0,
            "net_io": None,
            "blkio_read_bytes": metrics.get("blkio_read_bytes", 0),
            "blkio_write_bytes": metrics.get("blkio_write_bytes", 0),
            "pids": metrics.get("pids_current", metrics.get("processes", 0)),
            "status": item["status"],
            "metrics": metrics,
        })
    return out


def table(values: list[dict]) -> str:
    lines = [HEADER]
    for row in values:
        lines.append((row["id"], row["name"], f"{row['cpu_percent']:.2f}%",
                      f"{human_bytes(row['memory_usage_bytes'])} / {human_bytes(row['memory_limit_bytes'])}",
                      f"{row['memory_percent']:.2f}%", "--",
                      f"{human_bytes(row['blkio_read_bytes'])} / {human_bytes(row['blkio_write_bytes'])}",
                      str(row["pids"])))
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    return "\n".join("   ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def run_stats(client, args) -> int:
    request = {"all": args.all, "ids": list(args.containers)}
    previous = None
    sample = client.call("stats", **request)
    if args.no_stream:
        # CPU % needs two samples; docker's --no-stream also waits for a second one.
        time.sleep(REFRESH_SECONDS)
        previous, sample = sample, client.call("stats", **request)
        _print(rows(sample, previous, args.no_trunc), args.format, clear=False)
        return 0
    while True:
        _print(rows(sample, previous, args.no_trunc), args.format, clear=sys.stdout.isatty())
        time.sleep(REFRESH_SECONDS)
        previous, sample = sample, client.call("stats", **request)


def _print(values: list[dict], output_format: str, clear: bool) -> None:
    if output_format == "json":
        print(json.dumps(values), flush=True)
        return
    text = table(values)
    if clear:
        text = "\x1b[2J\x1b[H" + text
    print(text, flush=True)
