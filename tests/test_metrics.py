"""Tests of plugins.metrics, ``moor stats`` and the Prometheus endpoint.

cgroup v2 parsing runs on the recorded trees under tests/data/cgroupv2 (see
the README there).  cgroup v1 runs for real: containers started by a private
moord with limits in a --spec file, read from /sys/fs/cgroup.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, wait_until
from plugins import metrics, prometheus
from shim.protocol import InvalidArgument
from supervisor.ocispec import RunOptions, build_spec

V2_TREES = Path(__file__).parent / "data" / "cgroupv2"
V2_ID = "0123456789abcdef" * 4
MIB = 1024 * 1024
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="running containers with runc needs root")
cgroup_v1_only = pytest.mark.skipif(metrics.is_unified(), reason="this host mounts cgroup v2")


# -- cgroup v2, recorded trees ---------------------------------------------------------------

def read_tree(name: str) -> dict:
    return metrics.read_v2(metrics.v2_folder(0, f"/moorage/{V2_ID}", V2_TREES / name))


def test_v2_tree_marked_unified():
    assert metrics.is_unified(V2_TREES / "limited")


def test_v2_limited_values():
    assert read_tree("limited") == {
        "cpu_usage_ns": 2_471_930_000, "cpu_periods": 412, "cpu_throttled_periods": 97,
        "cpu_throttled_ns": 5_830_211_000, "memory_usage_bytes": 48_758_784, "memory_limit_bytes": 64 * MIB,
        "memory_cache_bytes": 15_728_640, "memory_oom_kills": 2, "pids_current": 7, "pids_limit": 100,
        "blkio_read_bytes": 1_187_840 + 4096, "blkio_write_bytes": 20_971_520 + 8192}


@pytest.mark.parametrize("key", ["memory_limit_bytes", "pids_limit"])
def test_v2_max_means_no_limit(key):
    assert key not in read_tree("unlimited")


def test_v2_empty_io_stat_is_zero():
    values = read_tree("unlimited")

    assert values["blkio_read_bytes"] == 0
    assert values["blkio_write_bytes"] == 0


def test_v2_without_controllers_has_cpu_usage_only():
    assert read_tree("cpu-only") == {"cpu_usage_ns": 1_500_000}


def test_v2_folder_from_proc_of_live_pid(tmp_path):
    own = Path("/proc/self/cgroup").read_text()
    unified = [line[3:] for line in own.splitlines() if line.startswith("0::")]

    folder = metrics.v2_folder(os.getpid(), "/moorage/unused", tmp_path)

    assert folder == tmp_path / unified[0].lstrip("/")


# -- processes ------------------------------------------------------------------------------

def test_process_metrics_counts_live_pids():
    child = subprocess.Popen(["sleep", "30"])
    try:
        values = metrics.process_metrics([os.getpid(), child.pid])
    finally:
        child.kill()
        child.wait()

    assert values["processes"] == 2
    assert values["rss_bytes"] > 0


def test_process_metrics_skips_vanished_pid():
    child = subprocess.Popen(["true"])
    child.wait()

    assert metrics.process_metrics([child.pid]) == {"processes": 0, "rss_bytes": 0}


# -- Prometheus text format --------------------------------------------------------------

def sample(metrics_values: dict, name: str = "web", status: str = "running") -> dict:
    return {"id": "c" * 64, "name": name, "status": status, "pid": 1, "cgroup_path": "/x", "metrics": metrics_values}


def test_render_counter_in_seconds():
    text = prometheus.render([sample({"cpu_usage_ns": 2_500_000_000})])

    assert "# TYPE moorage_container_cpu_usage_seconds_total counter" in text
    assert f'moorage_container_cpu_usage_seconds_total{{id="{"c" * 64}",name="web"}} 2.5' in text


def test_render_escapes_label_values():
    text = prometheus.render([sample({"pids_current": 3}, name='we"b\\x')])

    assert 'name="we\\"b\\\\x"' in text


def test_render_skips_absent_metric():
    text = prometheus.render([sample({"pids_current": 3})])

    assert "moorage_container_memory_limit_bytes" not in text


def test_render_running_gauge_for_stopped():
    text = prometheus.render([sample({}, status="exited")])

    assert text.splitlines()[-1].endswith("} 0")


@pytest.mark.parametrize("address, expected", [
    ("127.0.0.1:9323", ("tcp", ("127.0.0.1", 9323))),
    ("[::1]:9323", ("tcp", ("::1", 9323))),
    ("/run/m.sock", ("unix", Path("/run/m.sock"))),
    ("unix:///run/m.sock", ("unix", Path("/run/m.sock"))),
], ids=["ipv4", "ipv6", "path", "unix-url"])
def test_metrics_address_parsed(address, expected):
    assert prometheus.parse_address(address) == expected


@pytest.mark.parametrize("address", ["localhost:9323", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:http"],
                         ids=["hostname", "no-port", "port-zero", "port-name"])
def test_metrics_address_invalid_rejected(address):
    with pytest.raises(InvalidArgument, match="invalid metrics address"):
        prometheus.parse_address(address)


# -- cgroup v1, real containers -----------------------------------------------------------

@pytest.fixture
def limited_spec(tmp_path) -> Path:
    """A --spec file for `sh -c` with a 64 MiB memory limit, 50 pids and a 10% CPU quota."""
    rootfs = tmp_path / "unused-rootfs"
    (rootfs / "bin").mkdir(parents=True)

    def make(script: str) -> Path:
        spec = build_spec({}, RunOptions(args=("sh", "-c", script)), rootfs=str(rootfs), container_id="spec",
                          hostname="box", cgroups_path="/moorage/replaced-by-moord")
        resources = spec["linux"].setdefault("resources", {})
        resources["memory"] = {"limit": 64 * MIB}
        resources["pids"] = {"limit": 50}
        resources["cpu"] = {"quota": 10_000, "period": 100_000}
        path = tmp_path / f"spec-{len(list(tmp_path.glob('spec-*')))}.json"
        path.write_text(json.dumps(spec))
        return path
    return make


def stats_of(moord, name: str) -> dict:
    result = moord.call("stats", ids=[name])
    return result["containers"][0]["metrics"]


@root_only
@cgroup_v1_only
def test_v1_limits_read_from_cgroup(moord, limited_spec):
    moord.moor("run", "-d", "--name", "lim", "--spec", str(limited_spec("sleep 300 & wait")), "busybox")
    wait_until(lambda: stats_of(moord, "lim").get("pids_current") == 2, 30, message="sh and its sleep")

    values = stats_of(moord, "lim")

    assert values["memory_limit_bytes"] == 64 * MIB
    assert values["pids_limit"] == 50
    assert values["pids_current"] == 2


@root_only
@cgroup_v1_only
def test_v1_cpu_throttling_counted(moord, limited_spec):
    moord.moor("run", "-d", "--name", "busy", "--spec", str(limited_spec("while :; do :; done")), "busybox")

    wait_until(lambda: stats_of(moord, "busy").get("cpu_throttled_periods", 0) > 0, 30,
               message="a throttled CFS period")
    values = stats_of(moord, "busy")

    assert values["cpu_throttled_ns"] > 0
    assert values["cpu_usage_ns"] > 0


@root_only
@cgroup_v1_only
def test_v1_memory_usage_and_cache(moord, limited_spec):
    script = "dd if=/dev/zero of=/tmp/fill bs=1M count=8 2>/dev/null; sleep 300"
    moord.moor("run", "-d", "--name", "mem", "--spec", str(limited_spec(script)), "busybox")

    wait_until(lambda: stats_of(moord, "mem").get("memory_cache_bytes", 0) >= 8 * MIB, 30,
               message="8 MiB of page cache charged")
    values = stats_of(moord, "mem")

    assert values["memory_usage_bytes"] >= values["memory_cache_bytes"]


@root_only
@cgroup_v1_only
def test_v1_oom_kill_counted(moord, limited_spec):
    # tail keeps the last 100 MiB in memory, more than the 64 MiB limit, so the kernel kills it; sh lives on.
    script = "head -c 100m /dev/zero | tail -c 100m >/dev/null; sleep 300"
    moord.moor("run", "-d", "--name", "oom", "--spec", str(limited_spec(script)), "busybox")

    wait_until(lambda: stats_of(moord, "oom").get("memory_oom_kills", 0) >= 1, 60,
               message="an OOM kill in the container's cgroup")
    values = stats_of(moord, "oom")

    assert values["memory_oom_kills"] >= 1


@root_only
@cgroup_v1_only
def test_v1_processes_from_cgroup(moord):
    moord.moor("run", "-d", "--name", "procs", "busybox", "sh", "-c", "sleep 300 & sleep 300 & wait")

    wait_until(lambda: stats_of(moord, "procs").get("processes") == 3, 30,
               message="sh and two sleeps")
    values = stats_of(moord, "procs")

    assert values["rss_bytes"] > 0


# -- moor stats -------------------------------------------------------------------------------

@root_only
def test_stats_json_lists_running_only(moord):
    moord.moor("run", "-d", "--name", "up", "busybox", "sleep", "300")
    moord.moor("create", "--name", "down", "busybox", "true")

    rows = json.loads(moord.moor("stats", "--no-stream", "--format", "json").stdout)

    assert [row["name"] for row in rows] == ["up"]


@root_only
def test_stats_all_includes_stopped(moord):
    moord.moor("run", "-d", "--name", "up", "busybox", "sleep", "300")
    moord.moor("create", "--name", "down", "busybox", "true")

    rows = json.loads(moord.moor("stats", "-a", "--no-stream", "--format", "json").stdout)

    assert sorted(row["name"] for row in rows) == ["down", "up"]


@root_only
def test_stats_table_has_docker_columns(moord):
    moord.moor("run", "-d", "--name", "up", "busybox", "sleep", "300")

    lines = moord.moor("stats", "--no-stream").stdout.decode().splitlines()

    assert lines[0].split("   ")[:3] == ["CONTAINER ID", "NAME", "CPU %"]
    assert "MEM USAGE / LIMIT" in lines[0]
    assert "BLOCK I/O" in lines[0]
    assert lines[1].split()[1] == "up"


@root_only
def test_stats_stream_prints_each_sample(moord):
    moord.moor("run", "-d", "--name", "busy", "busybox", "sh", "-c", "while :; do :; done")
    command = [sys.executable, "-m", "supervisor.cli", "--state", str(moord.state), "stats", "--format", "json"]
    streaming = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        first = json.loads(streaming.stdout.readline())
        second = json.loads(streaming.stdout.readline())
    finally:
        streaming.kill()
        streaming.wait(30)

    assert first[0]["cpu_percent"] == 0.0
    assert second[0]["cpu_percent"] > 0.0


@root_only
def test_stats_unknown_container_not_found(moord):
    result = moord.moor("stats", "--no-stream", "nosuch", check=False)

    assert result.returncode == 3
    assert b"no such container: nosuch" in result.stderr


# -- Prometheus endpoint ------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_get(port: int, path: str) -> tuple[int, str, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read().decode()
    finally:
        connection.close()


@root_only
def test_prometheus_endpoint_serves_container(moord_factory):
    port = free_port()
    daemon = moord_factory("--metrics-address", f"127.0.0.1:{port}")
    daemon.moor("run", "-d", "--name", "web", "busybox", "sleep", "300")
    container_id = daemon.inspect("web")["Id"]

    status, content_type, body = http_get(port, "/metrics")

    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert f'moorage_container_running{{id="{container_id}",name="web"}} 1' in body
    assert f'moorage_container_memory_usage_bytes{{id="{container_id}",name="web"}}' in body


@root_only
def test_prometheus_other_path_not_found(moord_factory):
    port = free_port()
    moord_factory("--metrics-address", f"127.0.0.1:{port}")

    status, _, _ = http_get(port, "/")

    assert status == 404


@root_only
def test_prometheus_unix_socket(moord_factory):
    daemon = moord_factory(start=False)
    path = daemon.state / "metrics.sock"
    daemon.extra_args = ("--metrics-address", str(path))
    daemon.start()

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(30)
        client.connect(str(path))
        client.sendall(b"GET /metrics HTTP/1.1\r\nHost: moord\r\n\r\n")
        reply = b""
        while chunk := client.recv(65536):
            reply += chunk

    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")


@root_only
def test_prometheus_off_by_default(moord):
    assert not (moord.state / "metrics.sock").exists()
    assert "metrics endpoint" not in (moord.root / "moord.log").read_text()
