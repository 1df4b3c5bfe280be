"""Timing, statistics, process memory and Markdown tables for the benchmark."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message names the command and its output."""


def run_checked(argv: Sequence[str], env: dict | None = None, timeout: float = 120,
                capture: bool = False) -> subprocess.CompletedProcess:
    """Run ``argv`` and raise BenchError with the tail of its stderr if it fails."""
    try:
        result = subprocess.run(list(argv), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(argv)} timed out after {timeout:g} s") from None
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip()[-600:]
        raise BenchError(f"{' '.join(argv)} exited with {result.returncode}: {tail}")
    return result


def time_command(argv: Sequence[str], env: dict | None = None, timeout: float = 120) -> float:
    """Return the wall time in seconds of one run of ``argv``, from fork to reaped exit."""
    start = time.perf_counter()
    run_checked(argv, env=env, timeout=timeout)
    return time.perf_counter() - start


@dataclass(frozen=True)
class Summary:
    """Median, minimum and maximum of one series, in the series' own unit."""

    median: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Summary":
        if not values:
            raise BenchError("no values to summarize")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def as_dict(self) -> dict:
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.count}


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Per-round ratios of two interleaved series of the same length."""
    if len(numerators) != len(denominators):
        raise BenchError("ratio of series of different lengths")
    return [a / b for a, b in zip(numerators, denominators)]


def memory_kib(pid: int) -> tuple[int, int]:
    """Return ``(Rss, Pss)`` in KiB of one process, from /proc/PID/smaps_rollup."""
    rss = pss = None
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            key, _, rest = line.partition(":")
            if key == "Rss":
                rss = int(rest.split()[0])
            elif key == "Pss":
                pss = int(rest.split()[0])
    if rss is None or pss is None:
        raise BenchError(f"/proc/{pid}/smaps_rollup has no Rss or Pss line")
    return rss, pss


def private_memory_kib(pid: int) -> dict[str, int]:
    """Return one process's private (unshared) memory in KiB by kind of mapping, and its thread count.

    Kinds: ``anonymous`` (mappings without a name, such as malloc arenas and
    thread stacks), ``heap`` ([heap]), ``stack`` (the main thread's [stack]) and
    ``file`` (data pages of mapped files, such as a library's writable data).
    """
    totals = {"anonymous": 0, "heap": 0, "stack": 0, "file": 0}
    kind = "anonymous"
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if not fields[0].endswith(":"):  # a mapping's header line: range, perms, offset, dev, inode[, name]
                name = fields[5] if len(fields) > 5 else ""
                kind = {"": "anonymous", "[heap]": "heap", "[stack]": "stack"}.get(
                    name, "file" if name.startswith("/") else "anonymous")
            elif fields[0] in ("Private_Dirty:", "Private_Clean:"):
                totals[kind] += int(fields[1])
    with open(f"/proc/{pid}/status") as status:
        threads = next(int(line.split()[1]) for line in status if line.startswith("Threads:"))
    return {**totals, "threads": threads}


def process_start_ticks(pid: int) -> int:
    """Return the start time of ``pid`` in clock ticks since boot, or 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0
    return int(fields[19])


def process_cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def parent_pid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def mb(kib: float) -> str:
    """Format KiB as decimal megabytes (10**6 bytes)."""
    return f"{kib * 1024 / 1e6:.2f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
