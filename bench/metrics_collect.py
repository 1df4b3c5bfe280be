"""Time one metrics collection (the ``stats`` op) for many running containers.

Run as root from the repository: ``python3 bench/metrics_collect.py [--containers 50] [--rounds 20]``.
It starts its own moord with --root and --state under a new /tmp folder and
runs that many ``sleep 3600`` busybox containers.  It times the ``stats`` op
round after round and prints the median, minimum and maximum.  At the end it
removes the containers and stops that moord.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from supervisor.client import Client  # noqa: E402


def moor(state: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "supervisor.cli", "--state", str(state), *args], cwd=REPO, check=True,
                   capture_output=True, timeout=120)


def wait_for_moord(state: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"moord exited with {process.returncode}")
        try:
            client = Client(state)
            client.call("version", timeout=2)
            client.close()
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit("moord did not respond within 30 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="mm-", dir="/tmp"))
    root, state = base / "root", base / "s"
    process = subprocess.Popen([sys.executable, "-m", "supervisor.daemon", "--root", str(root), "--state",
                                str(state)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    names = [f"bench-{index}" for index in range(args.containers)]
    try:
        wait_for_moord(state, process)
        for name in names:
            moor(state, "run", "-d", "--name", name, "busybox", "sleep", "3600")
        client = Client(state)
        times = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            result = client.call("stats", timeout=60)
            times.append(time.perf_counter() - started)
        client.close()
        collected = sum(1 for item in result["containers"] if item["metrics"])
        print(f"stats op for {collected} running containers, {args.rounds} rounds: "
              f"median {statistics.median(times) * 1000:.1f} ms, min {min(times) * 1000:.1f} ms, "
              f"max {max(times) * 1000:.1f} ms")
    finally:
        for name in names:
            subprocess.run([sys.executable, "-m", "supervisor.cli", "--state", str(state), "rm", "-f", name],
                           cwd=REPO, capture_output=True, timeout=120)
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
