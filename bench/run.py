#!/usr/bin/env python3
"""Moorage against runc and containerd, side by side in one run.

Measures, on one busybox image built from the host's static busybox:

* latency of a short container: ``moor run --rm busybox true`` against
  ``runc run`` of the same root filesystem and ``ctr run --rm``.  The runs are
  interleaved round by round (moor, runc, ctr, moor, runc, ctr, ...), and the
  report gives medians, min-max and the median of the per-round ratios;
* where the time of ``moor run --rm`` goes: client start-up, moord's lifecycle
  events, and the copy, removal and runc calls timed alone;
* N detached ``sleep 3600`` containers started one after another under each
  supervisor: total wall time, and the RSS and PSS of every shim from
  /proc/PID/smaps_rollup, 2 s after the last start;
* with ``--sections images``: the pull and unpack of a large image (busybox
  plus layers of many random files, about 200 MB) from Debian's docker-registry
  on 127.0.0.1, ``moor pull`` against ``ctr images pull`` in interleaved rounds,
  then N detached starts of that image under each, interleaved one by one.

It starts its own containerd (CRI plugin off) and its own moord, each with its
root, state and socket under a temporary folder in /tmp, and removes them,
their containers, shims, mounts and cgroups at the end.  Root only.

    python3 bench/run.py [--rounds 30] [--containers 50] [--json FILE]
    python3 bench/run.py --sections images [--pull-rounds 3] [--image-mb 200]

Run it with the Python that has moorage installed: the event timeline needs pyzmq
and msgpack.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import big_image  # noqa: E402
import busybox_image  # noqa: E402
import report  # noqa: E402
from daemons import Containerd, Moord, Registry  # noqa: E402
from measure import BenchError, Summary  # noqa: E402
from sections import Bench, ImageBench  # noqa: E402

log = logging.getLogger("bench")

NAMESPACE = "moorbench"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--rounds", type=int, default=30,
                        help="measured rounds of the latency comparison and of each piece (default 30)")
    parser.add_argument("--warmup", type=int, default=2, help="rounds run first and not counted (default 2)")
    parser.add_argument("--containers", type=int, default=50,
                        help="detached containers started under each supervisor for the memory figures (default 50)")
    parser.add_argument("--sections", default="latency,pieces,memory",
                        help="comma-separated subset of latency, pieces, memory, images "
                             "(default latency,pieces,memory)")
    parser.add_argument("--pull-rounds", type=int, default=3,
                        help="pulls of the large image under each supervisor in the images section (default 3)")
    parser.add_argument("--image-mb", type=int, default=200,
                        help="megabytes of random files in the large image of the images section (default 200)")
    parser.add_argument("--json", type=Path, help="also write every figure and raw series to this file")
    parser.add_argument("--moor", help="moor console script (default: the one next to this Python)")
    parser.add_argument("--moord", help="moord console script (default: the one next to this Python)")
    parser.add_argument("--busybox", type=Path, default=Path("/bin/busybox"),
                        help="static busybox to build the image from (default /bin/busybox)")
    parser.add_argument("--profile", type=Path,
                        help="also record moord, its launcher and shims with py-spy during the timeline "
                             "runs, and write raw stacks to this file")
    return parser.parse_args(argv)


def _console_script(explicit: str | None, name: str) -> str:
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise BenchError(f"{name} not found next to {sys.executable} nor on PATH; pass --{name}")
    return found


def _first_line(command: list[str]) -> str:
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    return (result.stdout or result.stderr).strip().splitlines()[0] if result.returncode == 0 else "unavailable"


def _cgroup_layout() -> str:
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return "v2 (unified)"
    if Path("/sys/fs/cgroup/unified").is_dir():
        return "v1 (hybrid)"
    return "v1"


def machine_facts(moor_bin: str, base: Path) -> dict:
    """Return the machine and the versions this run measured."""
    with open("/proc/meminfo") as meminfo:
        total_kib = int(meminfo.readline().split()[1])
    interpreter = Path(moor_bin).read_text().splitlines()[0].removeprefix("#!").strip()
    filesystem = _first_line(["findmnt", "-n", "-o", "FSTYPE", "-T", str(base)])
    return {
        "kernel": platform.release(), "cpus": os.cpu_count(), "memory_gib": round(total_kib / 2**20, 1),
        "cgroup": _cgroup_layout(), "temp_filesystem": filesystem,
        "runc": _first_line(["runc", "--version"]),
        "containerd": _first_line(["containerd", "--version"]),
        "moor_interpreter": interpreter,
        "python": _first_line([interpreter, "--version"]),
        "pyzmq": _first_line([interpreter, "-c", "import zmq; print(zmq.__version__, zmq.zmq_version())"]),
        "moorage": _first_line([interpreter, "-c", "import importlib.metadata as m; print(m.version('moorage'))"]),
        "moorage commit": _source_revision(),
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", ""),
    }


def _source_revision() -> str:
    """Return the repository's commit, marked "+ local changes" when product code differs from it."""
    repo = Path(__file__).resolve().parent.parent
    commit = _first_line(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    changed = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "supervisor", "shim", "plugins",
                              "netplugins"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    return commit + (" + local changes" if changed.stdout.strip() else "")


def _check_host(args) -> None:
    if os.geteuid() != 0:
        raise BenchError("the benchmark starts containers and daemons: run it as root")
    tools = ["runc", "containerd", "ctr", "containerd-shim-runc-v2", "cp"]
    if "images" in args.sections.split(","):
        tools.append("docker-registry")
    for tool in tools:
        if not shutil.which(tool):
            raise BenchError(f"{tool} not found on PATH; install runc, containerd and docker-registry "
                             "(apt-get install runc containerd docker-registry)")
    if not args.busybox.is_file():
        raise BenchError(f"{args.busybox} not found; install busybox-static")
    unknown = set(args.sections.split(",")) - {"latency", "pieces", "memory", "images"}
    if unknown:
        raise BenchError(f"unknown section(s) {', '.join(sorted(unknown))}: use latency, pieces, memory, images")
    if min(args.rounds, args.containers, args.pull_rounds, args.image_mb) < 1:
        raise BenchError("--rounds, --containers, --pull-rounds and --image-mb must be at least 1")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        _check_host(args)
        moor_bin, moord_bin = _console_script(args.moor, "moor"), _console_script(args.moord, "moord")
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2

    base = Path(tempfile.mkdtemp(prefix="mb-", dir="/tmp"))
    containerd = Containerd(base, NAMESPACE)
    moord = Moord(base, moord_bin, moor_bin)
    registry = Registry(base)
    results: dict = {"machine": machine_facts(moor_bin, base), "args": {k: str(v) for k, v in vars(args).items()}}
    started = time.monotonic()
    results["load_average_before"] = _load_average()
    try:
        log.info("building the busybox image under %s", base)
        image = busybox_image.build(base, args.busybox, "runc")
        results["image"] = {"layer_bytes": image.layer_bytes, "containerd": image.containerd_name,
                            "moor": image.moor_name}
        log.info("starting containerd and moord")
        containerd.start()
        containerd.import_image(image.archive, image.containerd_name)
        moord.start()
        moord.import_image(image.archive, image.moor_name)

        bench = Bench(base, image, containerd, moord, args.rounds, args.warmup)
        sections = args.sections.split(",")
        if "latency" in sections:
            log.info("latency: %d rounds after %d warm-up rounds", args.rounds, args.warmup)
            results["latency"] = bench.latency()
        if "pieces" in sections:
            log.info("pieces of moor run --rm")
            results["pieces"] = bench.pieces(args.profile)
        if "memory" in sections:
            log.info("memory and detached starts: %d containers each", args.containers)
            results["memory"] = bench.memory(args.containers)
        if "images" in sections:
            results["images"] = _images_section(base, args, containerd, moord, registry)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        print(f"bench: daemon logs kept in {_keep_logs(base, moord)}", file=sys.stderr)
        return 1
    finally:
        log.info("cleaning up")
        moord.cleanup()
        containerd.cleanup()
        registry.cleanup()
        _cleanup_runc(base / "runc")
        shutil.rmtree(base, ignore_errors=True)
    results["wall_seconds"] = time.monotonic() - started
    results["load_average_after"] = _load_average()

    print(report.render(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=_jsonable))
    return 0


def _images_section(base: Path, args, containerd: Containerd, moord: Moord, registry: Registry) -> dict:
    log.info("images: building a %d MB image of random files", args.image_mb)
    image = big_image.build(base, args.busybox, total_mb=args.image_mb)
    result = {"image": {"layers": image.layers, "files": image.files, "tar_bytes": image.tar_bytes,
                        "blob_bytes": image.blob_bytes}}
    registry.start()
    bench = ImageBench(base, containerd, moord, registry, image)
    log.info("images: pushing to %s with moor push", registry.host)
    result["push_seconds"] = bench.push()
    result["load_average_before_pulls"] = _load_average()
    log.info("images: %d pull rounds", args.pull_rounds)
    result["pulls"] = bench.pulls(args.pull_rounds)
    log.info("images: %d detached starts under each", args.containers)
    result["starts"] = bench.starts(args.containers)
    result["load_average_after"] = _load_average()
    return result


def _keep_logs(base: Path, moord: Moord) -> Path:
    """Copy the daemons' logs out of the temporary folder before it is removed."""
    kept = Path(tempfile.mkdtemp(prefix="mb-logs-", dir="/tmp"))
    for path in (moord.root / "moord.log", moord.log_path, moord.state / "launcher.log",
                 base / "containerd" / "containerd.log", base / "registry" / "registry.log"):
        if path.is_file():
            shutil.copy(path, kept / path.name)
    return kept


def _load_average() -> str:
    """Return the 1, 5 and 15 minute load averages: other work on the machine shows there."""
    with open("/proc/loadavg") as loadavg:
        return " ".join(loadavg.read().split()[:3])


def _cleanup_runc(root: Path) -> None:
    """Delete the containers that direct runc runs may have left (after a failure)."""
    if not root.is_dir():
        return
    for entry in root.iterdir():
        subprocess.run(["runc", "--root", str(root), "delete", "--force", entry.name],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=30)


def _jsonable(value):
    if isinstance(value, Summary):
        return value.as_dict()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


if __name__ == "__main__":
    sys.exit(main())
