"""The three measurements of the benchmark: latency, the pieces of one run, memory."""

from __future__ import annotations

import collections
import datetime
import logging
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

from busybox_image import BenchImage
from daemons import Containerd, Moord, wait_for
from measure import (BenchError, Summary, memory_kib, private_memory_kib, process_cmdline, ratios,
                     run_checked, time_command)

log = logging.getLogger("bench")

SETTLE_SECONDS = 2.0  # memory is read this long after the last start, once start-up allocations are done


class Bench:
    """One benchmark run against a started containerd and moord."""

    def __init__(self, base: Path, image: BenchImage, containerd: Containerd, moord: Moord,
                 rounds: int, warmup: int):
        self.base = base
        self.image = image
        self.containerd = containerd
        self.moord = moord
        self.rounds = rounds
        self.warmup = warmup
        self.runc_root = base / "runc"
        self.cached_env = self._bytecode_cache_env()
        self.interpreter = Path(moord.moor_bin).read_text().splitlines()[0].removeprefix("#!").strip()
        self.serial = 0

    def _bytecode_cache_env(self) -> dict:
        """Return an environment in which Python writes and reuses bytecode, kept under the base folder."""
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(self.base / "pycache")
        return env

    def _unique(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{os.getpid()}-{self.serial}"

    # -- latency --------------------------------------------------------------

    def _latency_variants(self) -> dict:
        """Return label -> function making (argv, env) for one run; moor, runc, ctr come first."""
        moord, containerd = self.moord, self.containerd
        variants = {
            "moor": lambda: (moord.moor("run", "--rm", "busybox", "true"), None),
            "runc": lambda: (["runc", "--root", str(self.runc_root), "run", "--bundle", str(self.image.bundle),
                              self._unique("mr")], None),
            "ctr": lambda: (containerd.ctr("run", "--rm", "--fifo-dir", str(containerd.fifo_dir),
                                           self.image.containerd_name, self._unique("mc"), "true"), None),
        }
        on_path = moor_on_path(moord.moor_bin)
        if on_path:
            variants["moor via PATH"] = lambda: (moord.moor("run", "--rm", "busybox", "true", binary=on_path), None)
        variants["moor, bytecode cached"] = lambda: (moord.moor("run", "--rm", "busybox", "true"), self.cached_env)
        return variants

    def _interleave(self, variants: dict) -> dict[str, list[float]]:
        """Run each variant once per round, in a fixed order, and return the counted wall times."""
        times: dict[str, list[float]] = {label: [] for label in variants}
        for round_number in range(self.warmup + self.rounds):
            for label, make in variants.items():
                argv, env = make()
                elapsed = time_command(argv, env=env)
                if round_number >= self.warmup:
                    times[label].append(elapsed)
        return times

    def latency(self) -> dict:
        variants = self._latency_variants()
        times = self._interleave(variants)
        result = {"series": times, "summary": {label: Summary.of(values) for label, values in times.items()},
                  "commands": {label: _describe(*make()) for label, make in variants.items()}, "ratios": {}}
        pairs = [("moor", "ctr"), ("moor", "runc"), ("ctr", "runc"), ("moor, bytecode cached", "ctr"),
                 ("moor, bytecode cached", "moor"), ("moor via PATH", "moor")]
        for numerator, denominator in pairs:
            if numerator in times and denominator in times:
                result["ratios"][f"{numerator} / {denominator}"] = Summary.of(ratios(times[numerator],
                                                                                     times[denominator]))
        if "moor via PATH" in times:
            differences = [a - b for a, b in zip(times["moor via PATH"], times["moor"])]
            result["path_overhead"] = Summary.of(differences)
            result["path_binary"] = moor_on_path(self.moord.moor_bin)
        return result

    # -- pieces of one moor run --rm --------------------------------------------

    def pieces(self, profile: Path | None) -> dict:
        result = {"startup": self._startup()}
        result["timeline"] = self._timeline(profile)
        result["rootfs"] = self._rootfs_copy()
        result["runc"] = self._runc_steps()
        return result

    def _startup(self) -> dict:
        """Time interpreter start-up, ``moor version`` with and without a bytecode cache, and ``ctr version``."""
        variants = {
            "python3 -S -c pass (no site)": lambda: ([self.interpreter, "-S", "-c", "pass"], None),
            "python3 -c pass": lambda: ([self.interpreter, "-c", "pass"], None),
            "moor version": lambda: (self.moord.moor("version"), None),
            "moor version, bytecode cached": lambda: (self.moord.moor("version"), self.cached_env),
            "ctr version": lambda: (["ctr", "-a", str(self.containerd.socket), "version"], None),
        }
        times = self._interleave(variants)
        return {label: Summary.of(values) for label, values in times.items()}

    def _timeline(self, profile: Path | None) -> dict:
        """Follow moord's events during ``moor run --rm busybox true`` and split each run into phases."""
        import msgpack
        import zmq

        context = zmq.Context()
        subscriber = context.socket(zmq.SUB)
        subscriber.setsockopt(zmq.SUBSCRIBE, b"")
        subscriber.setsockopt(zmq.LINGER, 0)
        subscriber.connect(f"ipc://{self.moord.state}/events.sock")
        time.sleep(0.2)  # a SUB socket drops what is published before its connection is up
        profiler = self._start_profiler(profile) if profile else None
        phases: dict[str, list[float]] = collections.defaultdict(list)
        try:
            for number in range(self.warmup + self.rounds):
                run = self._one_followed_run(subscriber, msgpack)
                if number >= self.warmup:
                    for name, seconds in run.items():
                        phases[name].append(seconds)
        finally:
            subscriber.close()
            context.term()
            if profiler is not None:
                self._stop_profiler(profiler)
        summary = {name: Summary.of(values) for name, values in phases.items()}
        return {"phases": summary, "series": dict(phases), "profile": str(profile) if profile else None,
                "profile_top": _profile_top(profile, self.warmup + self.rounds) if profile else None}

    def _one_followed_run(self, subscriber, msgpack) -> dict[str, float]:
        began = time.time()
        time_command(self.moord.moor("run", "--rm", "busybox", "true"))
        ended = time.time()

        stamps: dict[str, dict] = {}
        deadline = time.monotonic() + 10
        while "container.delete" not in stamps:
            if time.monotonic() > deadline:
                raise BenchError(f"timed out waiting for moord's events of one run: got only {sorted(stamps)}")
            if subscriber.poll(1000):
                _, body = subscriber.recv_multipart()
                envelope = msgpack.unpackb(body, raw=False)
                stamps[envelope["topic"]] = envelope
        if {"container.create", "task.start", "task.exit"} - set(stamps):
            # The subscription may still be joining during the first run; a warm-up round absorbs that.
            return {}

        create, start = stamps["container.create"]["ts"], stamps["task.start"]["ts"]
        exit_event, delete = stamps["task.exit"]["ts"], stamps["container.delete"]["ts"]
        exited_at = stamps["task.exit"]["payload"]["exited_at"]
        # moord replies to a --rm run when the exit arrives and cleans up afterwards, so the
        # cleanup (task.exit to container.delete) overlaps the client's exit and is not in the total.
        return {
            "client start-up, request, create (root, spec, record)": create - began,
            "bundle, shim spawn, runc create, runc start": start - create,
            "container runs and exits (task.start to shim's exit stamp)": exited_at - start,
            "exit stamp to task.exit event (exit report, drain, record)": exit_event - exited_at,
            "reply, client exit": ended - exit_event,
            "total": ended - began,
            "after the reply: runc delete, root, network and record removal": delete - exit_event,
        }

    def _start_profiler(self, output: Path) -> subprocess.Popen:
        py_spy = shutil.which("py-spy")
        if py_spy is None:
            raise BenchError("--profile needs py-spy (pip install py-spy)")
        with open(self.base / "py-spy.log", "ab") as errors:
            command = [py_spy, "record", "-p", str(self.moord.process.pid), "--subprocesses",
                       "--rate", str(PROFILE_RATE), "--format", "raw", "--nonblocking", "-o", str(output)]
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors)
        time.sleep(1.0)  # py-spy needs a moment to attach before the first run counts
        return process

    @staticmethod
    def _stop_profiler(process: subprocess.Popen) -> None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def _rootfs_copy(self) -> dict:
        """Time the copy moord makes of the image for each container (``cp -a --reflink=auto``) and its removal."""
        copies, removals = [], []
        folder = self.base / "copies"
        folder.mkdir(exist_ok=True)
        for number in range(self.warmup + self.rounds):
            target = folder / str(number)
            target.mkdir()
            copy = time_command(["cp", "-a", "--reflink=auto", "--", f"{self.image.rootfs}/.", str(target)])
            began = time.perf_counter()
            shutil.rmtree(target)
            removal = time.perf_counter() - began
            if number >= self.warmup:
                copies.append(copy)
                removals.append(removal)
        files = sum(len(names) + len(dirs) for _, dirs, names in os.walk(self.image.rootfs))
        return {"copy": Summary.of(copies), "remove": Summary.of(removals), "entries": files}

    def _runc_steps(self) -> dict:
        """Time runc create, start and delete of the bundle, called as moor's shim calls them."""
        steps: dict[str, list[float]] = {"runc create": [], "runc start": [], "runc delete": []}
        log_path = self.base / "runc-steps.log"
        base = ["runc", "--root", str(self.runc_root), "--log", str(log_path), "--log-format", "json"]
        null = os.open(os.devnull, os.O_RDWR)
        try:
            for number in range(self.warmup + self.rounds):
                timings = self._runc_once(base, log_path, null)
                if number >= self.warmup:
                    for name, seconds in timings.items():
                        steps[name].append(seconds)
        finally:
            os.close(null)
        return {name: Summary.of(values) for name, values in steps.items()}

    def _runc_once(self, base: list[str], log_path: Path, null: int) -> dict[str, float]:
        container_id = self._unique("mp")
        pid_file = self.base / f"{container_id}.pid"
        began = time.perf_counter()
        # The container's init inherits stdio, so a pipe here would stay open until it exits.
        created = subprocess.run(base + ["create", "--bundle", str(self.image.bundle), "--pid-file", str(pid_file),
                                         container_id], stdin=null, stdout=null, stderr=null, timeout=60)
        create = time.perf_counter() - began
        if created.returncode != 0:
            raise BenchError(f"runc create exited with {created.returncode}; see {log_path}")
        pidfd = os.pidfd_open(int(pid_file.read_text()))
        try:
            start = time_command(base + ["start", container_id])
            if not select.select([pidfd], [], [], 30)[0]:
                raise BenchError(f"container {container_id} did not exit within 30 s of runc start")
        finally:
            os.close(pidfd)
        delete = time_command(base + ["delete", container_id])
        pid_file.unlink()
        return {"runc create": create, "runc start": start, "runc delete": delete}

    # -- memory and detached starts ---------------------------------------------

    def memory(self, count: int) -> dict:
        result = {"count": count, "idle": self._daemon_memory()}
        result["moor"] = self._moor_detached(count)
        result["containerd"] = self._ctr_detached(count)
        return result

    def _daemon_memory(self) -> dict:
        return {"moord": memory_kib(self.moord.process.pid),
                "containerd": memory_kib(self.containerd.process.pid)}

    def _moor_detached(self, count: int) -> dict:
        names = [self._unique("md") for _ in range(count)]
        starts = []
        began = time.perf_counter()
        for name in names:
            starts.append(time_command(self.moord.moor("run", "-d", "--name", name, "busybox", "sleep", "3600")))
        total = time.perf_counter() - began
        time.sleep(SETTLE_SECONDS)

        shims = self.moord.shim_pids(names)
        running = sum(1 for item in self.moord.inspect(names) if item["State"]["Status"] == "running")
        launcher = self.moord.launcher_pid()
        result = {"start_total": total, "start_each": Summary.of(starts), "running": running,
                  "subscribe_delays": self._subscribe_delays(),
                  "shims": [memory_kib(pid) for pid in shims], "shim_count": len(set(shims)),
                  "private_of_one": private_memory_kib(shims[0]),
                  "launcher": memory_kib(launcher) if launcher else None,
                  "daemon": memory_kib(self.moord.process.pid)}

        began = time.perf_counter()
        removal = subprocess.run(self.moord.moor("rm", "-f", *names), stdin=subprocess.DEVNULL,
                                 capture_output=True, text=True, timeout=600)
        result["teardown"] = time.perf_counter() - began
        # A failed or partial removal is a finding, not a reason to stop: the report shows the
        # error and the names left, and cleanup removes them.
        left = self._listed_names(names)
        result["teardown_error"] = removal.stderr.strip() if removal.returncode or left else ""
        result["teardown_left"] = left
        wait_for(lambda: not any(b"shim.main" in process_cmdline(pid) for pid in shims), 30,
                 "the moor shims to exit after moor rm -f")
        return result

    def _subscribe_delays(self) -> list[float]:
        """Return, per running shim, the seconds from its ``runc create`` returning to moord's subscribe.

        The shim reads moord's requests only after ``runc create``, so a delay well above zero
        means that moord subscribed late: its connection was not up yet or its event loop was
        busy.  The times come from the shims' own log lines, and a shim whose log lacks either
        line is skipped.
        """
        delays = []
        for log_path in (self.moord.state / "shims").glob("*/shim.log"):
            stamps = {}
            for line in log_path.read_text(errors="replace").splitlines():
                for key, marker in (("created", " created, init pid "), ("subscribed", ": moord subscribed ")):
                    if marker in line and key not in stamps:
                        stamps[key] = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if len(stamps) == 2:
                delays.append(stamps["subscribed"] - stamps["created"])
        return delays

    def _listed_names(self, names: list[str]) -> list[str]:
        """Return which of ``names`` ``moor ps -a`` still lists."""
        listed = set(run_checked(self.moord.moor("ps", "-a"), capture=True).stdout.decode().split())
        return [name for name in names if name in listed]

    def _ctr_detached(self, count: int) -> dict:
        ids = [self._unique("cd") for _ in range(count)]
        starts = []
        began = time.perf_counter()
        for container_id in ids:
            starts.append(time_command(self.containerd.ctr("run", "-d", "--null-io", self.image.containerd_name,
                                                           container_id, "sleep", "3600")))
        total = time.perf_counter() - began
        time.sleep(SETTLE_SECONDS)

        shims = self.containerd.shim_pids()
        tasks = run_checked(self.containerd.ctr("tasks", "ls"), capture=True).stdout.decode()
        running = sum(1 for line in tasks.splitlines() if "RUNNING" in line.split())
        result = {"start_total": total, "start_each": Summary.of(starts), "running": running,
                  "shims": [memory_kib(pid) for pid in shims], "shim_count": len(shims),
                  "private_of_one": private_memory_kib(shims[0]) if shims else None,
                  "daemon": memory_kib(self.containerd.process.pid)}

        began = time.perf_counter()
        self.containerd.remove_containers(ids)
        result["teardown"] = time.perf_counter() - began
        return result


def _describe(argv: list[str], env: dict | None) -> str:
    """Return a command line as a shell would run it, with the variables that differ from ours first."""
    changes = []
    if env is not None:
        changes += [f"{key}={value}" for key, value in env.items() if os.environ.get(key) != value]
        changes += [f"-u {key}" for key in os.environ if key not in env]
    prefix = f"env {' '.join(changes)} " if changes else ""
    return prefix + " ".join(argv)


def moor_on_path(console_script: str) -> str | None:
    """Return the first ``moor`` on PATH that is not ``console_script`` itself, such as a pyenv shim.

    ``pyenv exec`` puts the interpreter's own bin folder first on PATH, so
    ``shutil.which`` alone would find the console script even where a user's
    shell finds the shim.
    """
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(folder, "moor")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            if os.path.realpath(candidate) != os.path.realpath(console_script):
                return candidate
    return None


PROJECT_FOLDERS = ("supervisor/", "shim/", "plugins/", "netplugins/")
PROFILE_RATE = 250  # py-spy samples per second


def _profile_top(path: Path, runs: int, limit: int = 20) -> list[tuple[str, float, float]]:
    """Return Moorage's own frames that appear in the most py-spy samples.

    Each entry is the frame, its share of all samples and the CPU milliseconds
    per run it accounts for (samples / rate / runs).  Entry points (``main``,
    ``<module>``) are left out because every sample of a process contains them.
    """
    inclusive: collections.Counter = collections.Counter()
    total = 0
    with open(path) as raw:
        for line in raw:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            total += int(count)
            for frame in set(stack.split(";")[1:]):
                if any(folder in frame for folder in PROJECT_FOLDERS) and not frame.startswith(("main ", "<module> ")):
                    inclusive[frame] += int(count)
    if not total:
        return []
    return [(frame, samples / total, 1000 * samples / PROFILE_RATE / runs)
            for frame, samples in inclusive.most_common(limit)]


class ImageBench:
    """Pull of a large image from a loopback registry, then detached starts of it, moor against ctr."""

    def __init__(self, base: Path, containerd: Containerd, moord: Moord, registry, image):
        self.base = base
        self.containerd = containerd
        self.moord = moord
        self.registry = registry
        self.image = image
        self.ref = f"{registry.host}/moorbench/big:1"
        self.serial = 0
        self.snapshot_baseline: dict[str, int] = {}

    def _unique(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{os.getpid()}-{self.serial}"

    def push(self) -> float:
        """Import the archive into moord and push it to the registry; return the push's wall time."""
        run_checked(self.moord.moor("image", "import", str(self.image.archive), "--name", "moorbench-big"),
                    timeout=900)
        run_checked(self.moord.moor("tag", "moorbench-big:1", self.ref))
        elapsed = time_command(self.moord.moor("push", "--insecure-registry", "-q", self.ref), timeout=900)
        run_checked(self.moord.moor("image", "rm", "moorbench-big:1", self.ref), timeout=300)
        self._check_moor_blobs(present=False)
        self.snapshot_baseline = {"moor": self._moor_snapshot_count(), "ctr": self._ctr_snapshot_count()}
        return elapsed

    def _moor_snapshot_count(self) -> int:
        return sum(1 for kind in (self.moord.root / "snapshots").iterdir() for _ in kind.iterdir())

    def _ctr_snapshot_count(self) -> int:
        listed = run_checked(self.containerd.ctr("snapshots", "ls"), capture=True).stdout.decode().splitlines()
        return max(0, len(listed) - 1)  # the first line is the header

    def _moor_blob_count(self) -> int:
        folder = self.moord.root / "blobs" / "sha256"
        return sum(1 for digest in self.image.layer_digests if (folder / digest.split(":", 1)[1]).exists())

    def _check_moor_blobs(self, present: bool) -> None:
        found = self._moor_blob_count()
        expected = len(self.image.layer_digests) if present else 0
        if found != expected:
            raise BenchError(f"moord holds {found} of the image's {len(self.image.layer_digests)} layer blobs, "
                             f"expected {expected}")

    def _ctr_blob_count(self) -> int:
        listed = set(subprocess.run(self.containerd.ctr("content", "ls", "-q"), stdin=subprocess.DEVNULL,
                                    capture_output=True, text=True, timeout=60).stdout.split())
        return sum(1 for digest in self.image.layer_digests if digest in listed)

    def _remove_pulled(self) -> None:
        """Remove the pulled image from both stores, with its blobs and snapshots, so the next pull is whole."""
        run_checked(self.moord.moor("image", "rm", self.ref), timeout=300)
        run_checked(self.containerd.ctr("images", "rm", "--sync", self.ref), timeout=300)
        self._check_moor_blobs(present=False)
        left = self._ctr_blob_count()
        if left:
            raise BenchError(f"containerd kept {left} layer blobs after ctr images rm --sync")
        # Leftover snapshots would let the next pull skip unpacking, so both stores must be back to the start.
        counts = {"moor": self._moor_snapshot_count(), "ctr": self._ctr_snapshot_count()}
        if counts != self.snapshot_baseline:
            raise BenchError(f"snapshots left after removing the image: {counts}, expected {self.snapshot_baseline}")

    def pulls(self, rounds: int) -> dict:
        """Pull the image ``rounds`` times under each, interleaved; the image stays pulled after the last."""
        commands = {"moor": self.moord.moor("pull", "--insecure-registry", "-q", self.ref),
                    "ctr": self.containerd.ctr("images", "pull", "--plain-http", self.ref)}
        times: dict[str, list[float]] = {label: [] for label in commands}
        for round_number in range(rounds):
            if round_number:
                self._remove_pulled()
            for label, argv in commands.items():
                times[label].append(time_command(argv, timeout=1800))
                log.info("pull round %d: %s %.1f s", round_number + 1, label, times[label][-1])
        self._check_moor_blobs(present=True)
        if self._ctr_blob_count() != len(self.image.layer_digests):
            raise BenchError("ctr images pull did not leave all the image's layer blobs in containerd")
        return {"series": times, "summary": {label: Summary.of(values) for label, values in times.items()},
                "ratio": Summary.of(ratios(times["moor"], times["ctr"])),
                "commands": {label: " ".join(argv) for label, argv in commands.items()},
                "snapshot_bytes": {"moor": _disk_bytes(self.moord.root / "snapshots"),
                                   "ctr": _disk_bytes(self.containerd.folder / "root" /
                                                      "io.containerd.snapshotter.v1.overlayfs")}}

    def starts(self, count: int) -> dict:
        """Start ``count`` detached containers of the pulled image under each, one moor and one ctr per round."""
        names, ids = [], []
        times: dict[str, list[float]] = {"moor": [], "ctr": []}
        try:
            for _ in range(count):
                names.append(self._unique("mi"))
                times["moor"].append(time_command(self.moord.moor("run", "-d", "--name", names[-1], self.ref,
                                                                  "sleep", "3600")))
                ids.append(self._unique("ci"))
                times["ctr"].append(time_command(self.containerd.ctr("run", "-d", "--null-io", self.ref, ids[-1],
                                                                     "sleep", "3600")))
            running = sum(1 for item in self.moord.inspect(names) if item["State"]["Status"] == "running")
            tasks = run_checked(self.containerd.ctr("tasks", "ls"), capture=True).stdout.decode()
            ctr_running = sum(1 for line in tasks.splitlines() if "RUNNING" in line.split())
        finally:
            began = time.perf_counter()
            if names:
                subprocess.run(self.moord.moor("rm", "-f", *names), stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=600)
            moor_teardown = time.perf_counter() - began
            began = time.perf_counter()
            if ids:
                self.containerd.remove_containers(ids)
            ctr_teardown = time.perf_counter() - began
        return {"count": count, "series": times,
                "summary": {label: Summary.of(values) for label, values in times.items()},
                "totals": {label: sum(values) for label, values in times.items()},
                "ratio": Summary.of(ratios(times["moor"], times["ctr"])),
                "running": {"moor": running, "ctr": ctr_running},
                "teardown": {"moor": moor_teardown, "ctr": ctr_teardown}}


def _disk_bytes(folder: Path) -> int:
    """Return the bytes that ``du`` counts under ``folder`` (0 if it is missing)."""
    if not folder.exists():
        return 0
    result = subprocess.run(["du", "-s", "-B1", str(folder)], stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=120)
    return int(result.stdout.split()[0]) if result.returncode == 0 and result.stdout else 0
