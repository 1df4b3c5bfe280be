#!/usr/bin/env python3
"""Network setup and teardown cost per container, and 100 containers on one bridge.

The benchmark has three parts.  All of them use a bridge, subnets and an
nftables table of the benchmark's own, with subnets from 10.231.0.0/16 that no
host route covers.  No traffic is sent.

* hooks: network namespace creation, ``moorage_network_setup`` and
  ``moorage_network_teardown`` and namespace removal, called directly as moord
  calls them, for the ``bridge`` plugin and for ``cni`` with a network list of
  bridge, host-local, portmap and loopback;
* run: ``moor run --rm busybox true`` with ``--network none`` and with the
  default bridge, interleaved round by round, against a private moord;
* many: 100 ``sleep 3600`` containers started one after another with
  ``moor run -d`` on one bridge network: wall time, moord's RSS before and
  after, and the time to remove them all.

    python3 bench/network.py [--rounds 20] [--containers 100] [--json FILE]

Run it as root with the Python that has Moorage's dependencies (/opt/moorage).
It removes its containers, moord, bridges, namespaces and table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from netfixture import free_subnet  # noqa: E402
from netplugins import bridge, cni, netns, ports  # noqa: E402
from netplugins.ipam import NetworkDB  # noqa: E402

CNI_BIN = Path("/usr/lib/cni")


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"n": len(values), "median_ms": round(statistics.median(values) * 1000, 1),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 1),
            "min_ms": round(ordered[0] * 1000, 1), "max_ms": round(ordered[-1] * 1000, 1)}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# -- hooks ------------------------------------------------------------------------------

def time_hooks(plugin, network: dict, folder: Path, rounds: int) -> dict:
    """Time namespace creation plus setup, and teardown plus namespace removal, per container."""
    setups, teardowns = [], []
    for index in range(rounds + 2):
        container_id = uuid.uuid4().hex * 2
        path = folder / "ns" / container_id
        options = {"name": f"b{index}", "hostname": container_id[:12], "files_dir": str(folder / "files" / container_id)}
        started = time.monotonic()
        netns.create(path)
        plugin.moorage_network_setup(container_id=container_id, netns=str(path), network=network, options=options)
        set_up = time.monotonic()
        plugin.moorage_network_teardown(container_id=container_id, netns=str(path), network=network)
        netns.remove(path)
        done = time.monotonic()
        if index >= 2:  # the first two make the bridge and the table
            setups.append(set_up - started)
            teardowns.append(done - set_up)
    return {"setup": summary(setups), "teardown": summary(teardowns),
            "total": summary([a + b for a, b in zip(setups, teardowns)])}


def bench_hooks(work: Path, tag: str, rounds: int) -> dict:
    results = {}
    db = NetworkDB(work / "hooks.db")
    rules = ports.Rules(f"moorage-{tag}")
    subnet = free_subnet(24)
    network = {"name": "benchbr", "driver": "bridge", "subnet": subnet, "gateway": subnet.rsplit(".", 1)[0] + ".1",
               "bridge": f"mb{tag}h", "mtu": 1500, "internal": False}
    db.add_network(network)
    try:
        results["bridge"] = time_hooks(bridge.BridgePlugin(db, rules), network, work / "bridge", rounds)
    finally:
        bridge.remove_bridge(network, rules)
    if (CNI_BIN / "bridge").exists():
        results["cni"] = bench_cni(work, tag, rounds)
    return results


def bench_cni(work: Path, tag: str, rounds: int) -> dict:
    subnet = free_subnet(24)
    conflist = {"cniVersion": "1.0.0", "name": "benchcni", "plugins": [
        {"type": "bridge", "bridge": f"mb{tag}c", "isGateway": True, "ipMasq": False,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}],
                  "dataDir": str(work / "host-local")}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "loopback"}]}
    path = work / "bench.conflist"
    path.write_text(json.dumps(conflist))
    network = {"name": "benchcni", "driver": "cni", "conflist": str(path)}
    try:
        return time_hooks(cni.CniPlugin(CNI_BIN, work / "cni-cache"), network, work / "cni", rounds)
    finally:
        subprocess.run(["ip", "link", "delete", f"mb{tag}c"], capture_output=True, timeout=30)


# -- a private moord --------------------------------------------------------------------------

class Daemon:
    def __init__(self, work: Path, tag: str):
        self.state = Path(tempfile.mkdtemp(prefix="mnb-", dir="/tmp"))
        self.root = work / "root"
        self.bridge = f"mb{tag}d"
        self.table = f"moorage-{tag}"
        args = [sys.executable, "-m", "supervisor.daemon", "--root", str(self.root), "--state", str(self.state),
                "--bridge-name", self.bridge, "--bridge-subnet", free_subnet(24), "--nft-table", self.table]
        self.log = open(work / "moord.out", "ab")
        self.process = subprocess.Popen(args, cwd=REPO, stdout=self.log, stderr=self.log, start_new_session=True)
        deadline = time.monotonic() + 30
        while subprocess.run(self.moor("version"), capture_output=True).returncode != 0:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"moord did not start; see {work / 'moord.out'}")
            time.sleep(0.1)

    def moor(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "supervisor.cli", "--state", str(self.state), *args]

    def run(self, *args: str) -> float:
        started = time.monotonic()
        subprocess.run(self.moor(*args), cwd=REPO, check=True, capture_output=True, timeout=120)
        return time.monotonic() - started

    def close(self) -> None:
        ids = subprocess.run(self.moor("ps", "-a", "-q", "--no-trunc"), cwd=REPO, capture_output=True,
                             timeout=60).stdout.split()
        if ids:
            subprocess.run(self.moor("rm", "-f", *[i.decode() for i in ids]), cwd=REPO, capture_output=True,
                           timeout=600)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True, timeout=30)
        subprocess.run(["nft", "delete", "table", "ip", self.table], capture_output=True, timeout=30)
        shutil.rmtree(self.state, ignore_errors=True)


def bench_run(daemon: Daemon, rounds: int) -> dict:
    times: dict[str, list[float]] = {"none": [], "bridge": []}
    for index in range(rounds + 2):
        for network in times:
            elapsed = daemon.run("run", "--rm", "--network", network, "busybox", "true")
            if index >= 2:
                times[network].append(elapsed)
    return {network: summary(values) for network, values in times.items()}


def bench_many(daemon: Daemon, count: int) -> dict:
    before = rss_kib(daemon.process.pid)
    started = time.monotonic()
    for index in range(count):
        daemon.run("run", "-d", "--name", f"many{index}", "busybox", "sleep", "3600")
    elapsed = time.monotonic() - started
    after = rss_kib(daemon.process.pid)
    listing = json.loads(subprocess.run(daemon.moor("network", "inspect", "bridge"), cwd=REPO, capture_output=True,
                                        timeout=60).stdout)[0]
    addresses = {lease["address"] for lease in listing["leases"]}
    started = time.monotonic()
    subprocess.run(daemon.moor("rm", "-f", *[f"many{i}" for i in range(count)]), cwd=REPO, check=True,
                   capture_output=True, timeout=600)
    removed = time.monotonic() - started
    return {"containers": count, "distinct_addresses": len(addresses), "start_all_s": round(elapsed, 2),
            "per_container_ms": round(elapsed / count * 1000, 1), "remove_all_s": round(removed, 2),
            "moord_rss_kib_before": before, "moord_rss_kib_after": after}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/network.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--rounds", type=int, default=20)
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    tag = uuid.uuid4().hex[:5]
    work = Path(tempfile.mkdtemp(prefix="mnb-work-"))
    results: dict = {}
    try:
        results["hooks"] = bench_hooks(work, tag, args.rounds)
        daemon = Daemon(work, tag)
        try:
            results["run"] = bench_run(daemon, args.rounds)
            results["many"] = bench_many(daemon, args.containers)
        finally:
            daemon.close()
    finally:
        subprocess.run(["nft", "delete", "table", "ip", f"moorage-{tag}"], capture_output=True, timeout=30)
        for mount in (line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()):
            if mount.startswith(str(work) + "/"):
                subprocess.run(["umount", "-l", mount], capture_output=True, timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
