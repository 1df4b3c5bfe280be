"""A private containerd and a private moord, started and cleaned up by the benchmark.

Each daemon keeps its root, state and socket under the benchmark's temporary
folder.  Cleanup ends only the processes that the benchmark started, by PID,
after checking the PID's start time and command line.  It also deletes the runc
containers of its own state folders and unmounts what is mounted under the
temporary folder.  It removes cgroup folders only when they are empty.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from measure import (BenchError, all_pids, parent_pid, process_cmdline, process_start_ticks,
                     run_checked)

log = logging.getLogger("bench")

CGROUP_ROOT = Path("/sys/fs/cgroup")
# containerd 1.6 puts each shim's socket under /run/containerd/s and the runc state
# of a namespace under /run/containerd/runc/NAMESPACE, whatever its configured state.
CONTAINERD_RUN = Path("/run/containerd")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _terminate(process: subprocess.Popen, name: str, grace: float = 20) -> None:
    """SIGTERM one child process, then SIGKILL it if it is still running after ``grace`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        log.warning("%s (pid %d) did not exit %g s after SIGTERM; sending SIGKILL", name, process.pid, grace)
        process.kill()
        process.wait(10)


def _kill_if_same(pid: int, start_ticks: int, marker: bytes) -> bool:
    """SIGKILL ``pid`` only if it is still the process first seen with ``start_ticks``."""
    if start_ticks == 0 or process_start_ticks(pid) != start_ticks or marker not in process_cmdline(pid):
        return False
    os.kill(pid, signal.SIGKILL)
    return True


def unmount_under(folder: Path) -> list[str]:
    """Unmount every mount point at or below ``folder``, deepest first."""
    prefix = str(folder).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    ours = sorted({p for p in points if p == str(folder) or p.startswith(prefix)}, reverse=True)
    for point in ours:
        subprocess.run(["umount", point], stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    return ours


def remove_empty_dirs(paths) -> None:
    for path in paths:
        try:
            path.rmdir()
        except OSError:
            pass


class Containerd:
    """containerd with its own config (CRI plugin off), root, state and socket."""

    def __init__(self, base: Path, namespace: str):
        self.folder = base / "containerd"
        self.socket = self.folder / "containerd.sock"
        self.namespace = namespace
        self.fifo_dir = base / "fifo"
        self.process: subprocess.Popen | None = None
        self.seen_shims: dict[int, int] = {}

    def _write_config(self) -> Path:
        self.folder.mkdir()
        self.fifo_dir.mkdir()
        config = self.folder / "config.toml"
        config.write_text(f'''version = 2
root = "{self.folder / 'root'}"
state = "{self.folder / 'state'}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  address = ""
  level = "warn"
[metrics]
  address = ""
''')
        return config

    def ctr(self, *args: str) -> list[str]:
        return ["ctr", "-a", str(self.socket), "-n", self.namespace, *args]

    def start(self) -> None:
        config = self._write_config()
        with open(self.folder / "containerd.log", "ab") as output:
            self.process = subprocess.Popen(["containerd", "--config", str(config)], stdin=subprocess.DEVNULL,
                                            stdout=output, stderr=output, start_new_session=True)
        wait_for(self._answers, 30, "containerd to answer on its socket")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise BenchError(f"containerd exited with {self.process.returncode}; see {self.folder}/containerd.log")
        return subprocess.run(["ctr", "-a", str(self.socket), "version"], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=10).returncode == 0

    def import_image(self, archive: Path, name: str) -> None:
        run_checked(self.ctr("images", "import", str(archive)), timeout=120)
        listed = run_checked(self.ctr("images", "ls", "-q"), capture=True).stdout.decode().split()
        if name not in listed:
            raise BenchError(f"ctr images import did not create {name}; it lists {listed}")

    def shim_pids(self) -> list[int]:
        """Return the containerd-shim-runc-v2 processes that serve this containerd, and remember them."""
        marker = b"-address\0" + str(self.socket).encode() + b"\0"
        found = []
        for pid in all_pids():
            if marker in process_cmdline(pid) and b"containerd-shim" in process_cmdline(pid):
                found.append(pid)
                self.seen_shims.setdefault(pid, process_start_ticks(pid))
        return found

    def task_ids(self) -> list[str]:
        return subprocess.run(self.ctr("tasks", "ls", "-q"), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=30).stdout.split()

    def container_ids(self) -> list[str]:
        return subprocess.run(self.ctr("containers", "ls", "-q"), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=30).stdout.split()

    def remove_containers(self, ids: list[str]) -> None:
        """Kill and delete the tasks of ``ids``, then delete the containers and their snapshots."""
        for cid in ids:
            subprocess.run(self.ctr("tasks", "kill", "-s", "KILL", cid), stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30)
        for cid in ids:
            for _ in range(50):
                done = subprocess.run(self.ctr("tasks", "rm", cid), stdin=subprocess.DEVNULL, capture_output=True,
                                      timeout=30)
                if done.returncode == 0 or b"not found" in done.stderr:
                    break
                time.sleep(0.1)
        for cid in ids:
            run_checked(self.ctr("containers", "rm", cid), timeout=30)

    def cleanup(self) -> None:
        """Delete everything in the namespace, stop containerd and remove what it left outside the folder."""
        if self.process is not None and self.process.poll() is None:
            self.shim_pids()
            try:
                self.remove_containers(sorted(set(self.task_ids()) | set(self.container_ids())))
                subprocess.run(self.ctr("images", "rm", "--sync", *self._image_names()), stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=60)
                subprocess.run(["ctr", "-a", str(self.socket), "namespaces", "rm", self.namespace],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
            except (BenchError, subprocess.TimeoutExpired) as exc:
                log.warning("containerd cleanup: %s", exc)
            _terminate(self.process, "containerd")
        for pid, ticks in self.seen_shims.items():
            if _kill_if_same(pid, ticks, b"containerd-shim"):
                log.warning("killed leftover containerd shim %d", pid)
        runc_root = CONTAINERD_RUN / "runc" / self.namespace
        if runc_root.is_dir():
            for entry in runc_root.iterdir():
                subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", entry.name],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        unmount_under(self.folder)
        remove_empty_dirs([CGROUP_ROOT / c / self.namespace for c in os.listdir(CGROUP_ROOT)])
        remove_empty_dirs([runc_root, CONTAINERD_RUN / "runc", CONTAINERD_RUN / "s", CONTAINERD_RUN])

    def _image_names(self) -> list[str]:
        return subprocess.run(self.ctr("images", "ls", "-q"), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=30).stdout.split()


class Moord:
    """A moord with its own --root and --state, driven through the real ``moor`` command."""

    def __init__(self, base: Path, moord_bin: str, moor_bin: str):
        self.root = base / "moor-root"
        self.state = base / "s"  # short: shim socket paths must fit in 107 bytes
        self.moord_bin = moord_bin
        self.moor_bin = moor_bin
        self.log_path = base / "moord.out"
        self.process: subprocess.Popen | None = None
        self.seen_shims: dict[int, int] = {}
        self.seen_ids: set[str] = set()

    def moor(self, *args: str, binary: str | None = None) -> list[str]:
        return [binary or self.moor_bin, "--state", str(self.state), *args]

    def start(self) -> None:
        with open(self.log_path, "ab") as output:
            # ctr run gives a container a new network namespace with only lo in it. moord's
            # `none` network does the same work, while its default bridge would add a veth.
            self.process = subprocess.Popen([self.moord_bin, "--root", str(self.root), "--state", str(self.state),
                                             "--default-network", "none"],
                                            stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                                            start_new_session=True, cwd="/")
        wait_for(self._answers, 30, "moord to answer on its socket")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise BenchError(f"moord exited with {self.process.returncode}; see {self.log_path}")
        return subprocess.run(self.moor("version"), stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=10).returncode == 0

    def import_image(self, archive: Path, repository: str) -> None:
        run_checked(self.moor("image", "import", str(archive), "--name", repository), timeout=120)

    def inspect(self, refs: list[str]) -> list[dict]:
        return json.loads(run_checked(self.moor("inspect", *refs), capture=True, timeout=120).stdout)

    def shim_pids(self, refs: list[str]) -> list[int]:
        """Return each container's shim pid from ``moor inspect`` (Shim.Pid), and remember them."""
        pids = []
        for item in self.inspect(refs):
            pid = item["Shim"]["Pid"]
            self.seen_ids.add(item["Id"])
            if not pid:
                raise BenchError(f"container {item['Name']} has no shim (status {item['State']['Status']})")
            pids.append(pid)
            self.seen_shims.setdefault(pid, process_start_ticks(pid))
        return pids

    def launcher_pid(self) -> int:
        """Return the pid of the ``moor-shim launcher`` child of moord, or 0."""
        for pid in all_pids():
            if parent_pid(pid) == self.process.pid and b"shim.main\0launcher" in process_cmdline(pid):
                return pid
        return 0

    def _remember_shims(self) -> None:
        for pid_file in (self.state / "shims").glob("*/shim.pid"):
            try:
                pid = int(pid_file.read_text())
            except (OSError, ValueError):
                continue
            self.seen_shims.setdefault(pid, process_start_ticks(pid))
        folder = self.root / "containers"
        if folder.is_dir():
            self.seen_ids.update(entry.name for entry in folder.iterdir())

    def cleanup(self) -> None:
        """Remove every container, stop moord, then delete what a failure may have left."""
        if self.process is not None and self.process.poll() is None:
            self._remember_shims()
            ids = subprocess.run(self.moor("ps", "-a", "-q", "--no-trunc"), stdin=subprocess.DEVNULL,
                                 capture_output=True, text=True, timeout=60).stdout.split()
            if ids:
                subprocess.run(self.moor("rm", "-f", *ids), stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=300)
            _terminate(self.process, "moord")
        self._remember_shims()
        runc_root = self.state / "runc"
        if runc_root.is_dir():
            for entry in runc_root.iterdir():
                subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", entry.name],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        for pid, ticks in self.seen_shims.items():
            if _kill_if_same(pid, ticks, b"shim.main"):
                log.warning("killed leftover moor shim %d", pid)
        unmount_under(self.root)
        for controller in os.listdir(CGROUP_ROOT):
            remove_empty_dirs([CGROUP_ROOT / controller / "moorage" / cid for cid in self.seen_ids])


class Registry:
    """Debian's docker-registry on 127.0.0.1 with a free port, its config and storage under the base folder."""

    def __init__(self, base: Path):
        self.folder = base / "registry"
        self.process: subprocess.Popen | None = None
        self.host = ""

    def start(self) -> None:
        import socket

        self.folder.mkdir()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.host = f"127.0.0.1:{port}"
        config = self.folder / "config.yml"
        config.write_text(f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {self.folder / 'storage'}
http:
  addr: {self.host}
  secret: bench-only-secret
""")
        with open(self.folder / "registry.log", "ab") as output:
            self.process = subprocess.Popen(["docker-registry", "serve", str(config)], stdin=subprocess.DEVNULL,
                                            stdout=output, stderr=output, start_new_session=True)

        def listens() -> bool:
            if self.process.poll() is not None:
                raise BenchError(f"docker-registry exited with {self.process.returncode}; "
                                 f"see {self.folder}/registry.log")
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listens, 30, "docker-registry to listen")

    def cleanup(self) -> None:
        if self.process is not None:
            _terminate(self.process, "docker-registry")
