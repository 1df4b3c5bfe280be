"""Markdown report of one benchmark run."""

from __future__ import annotations

from measure import Summary, markdown_table, mb, ms

LATENCY_GOAL = 0.8  # moor run --rm at most this many times ctr run --rm


def _ms_cells(summary: Summary) -> list[str]:
    return [ms(summary.median), f"{ms(summary.low)}-{ms(summary.high)}", str(summary.count)]


def _machine(results: dict) -> str:
    facts = results["machine"]
    rows = [[key, str(value)] for key, value in facts.items()]
    rows.append(["image layer", f"{results['image']['layer_bytes'] / 1e6:.2f} MB uncompressed"])
    rows.append(["benchmark wall time", f"{results.get('wall_seconds', 0):.0f} s"])
    rows.append(["load average (1, 5, 15 min) before / after",
                 f"{results.get('load_average_before', '?')} / {results.get('load_average_after', '?')}"])
    return "## Machine and versions\n\n" + markdown_table(["item", "value"], rows)


def _latency(latency: dict) -> str:
    rows = [[f"`{label}`", *_ms_cells(summary)] for label, summary in latency["summary"].items()]
    text = ["## Latency of a short container (`true`), interleaved rounds",
            markdown_table(["path", "median ms", "min-max ms", "n"], rows)]
    ratio_rows = [[name, f"x{s.median:.2f}", f"{s.low:.2f}-{s.high:.2f}"] for name, s in latency["ratios"].items()]
    text.append("Ratios are the median of the per-round ratios.\n\n"
                + markdown_table(["ratio", "median", "min-max"], ratio_rows))
    if "path_overhead" in latency:
        overhead = latency["path_overhead"]
        text.append(f"`moor` found on PATH ({latency['path_binary']}) costs {ms(overhead.median)} ms more per run "
                    f"than the console script itself (median of per-round differences, "
                    f"{ms(overhead.low)} to {ms(overhead.high)} ms).")
    commands = [[f"`{label}`", f"`{command}`"] for label, command in latency["commands"].items()]
    text.append(markdown_table(["path", "command (one run; ids differ per run)"], commands))
    return "\n\n".join(text)


def _pieces(pieces: dict) -> str:
    text = ["## Where `moor run --rm busybox true` spends its time"]
    startup = [[f"`{label}`", *_ms_cells(summary)] for label, summary in pieces["startup"].items()]
    text.append("Client and interpreter start-up, interleaved:\n\n"
                + markdown_table(["command", "median ms", "min-max ms", "n"], startup))

    phases = pieces["timeline"]["phases"]
    if phases:
        total = phases["total"].median
        rows = [[name, *_ms_cells(s), f"{100 * s.median / total:.0f} %" if name != "total" else ""]
                for name, s in phases.items()]
        text.append("Phases between moord's events (`container.create`, `task.start`, the shim's exit stamp, "
                    "`task.exit`, `container.delete`) and the client's own start and exit:\n\n"
                    + markdown_table(["phase", "median ms", "min-max ms", "n", "share of median total"], rows))

    alone = [["`cp -a --reflink=auto` of the image root "
              f"({pieces['rootfs']['entries']} entries)", *_ms_cells(pieces["rootfs"]["copy"])],
             ["`shutil.rmtree` of that copy", *_ms_cells(pieces["rootfs"]["remove"])]]
    alone += [[f"`{name}` (as the shim calls it)", *_ms_cells(s)] for name, s in pieces["runc"].items()]
    text.append("Pieces timed alone:\n\n" + markdown_table(["piece", "median ms", "min-max ms", "n"], alone))

    top = pieces["timeline"].get("profile_top")
    if top:
        rows = [[f"`{frame}`", f"{100 * share:.0f} %", f"{per_run:.1f}"] for frame, share, per_run in top]
        text.append(f"py-spy CPU samples of moord, its launcher and shims during the timeline runs "
                    f"({pieces['timeline']['profile']}), Moorage's frames by the samples that contain them:\n\n"
                    + markdown_table(["frame", "share of all samples", "CPU ms per run"], rows))
    return "\n\n".join(text)


def _shim_figures(side: dict) -> tuple[float, float, float]:
    count = max(1, len(side["shims"]))
    pss = sum(p for _, p in side["shims"])
    rss = sum(r for r, _ in side["shims"])
    return pss / count, rss / count, pss


def _memory(memory: dict) -> str:
    count = memory["count"]
    rows = []
    for label, key in (("moor-shim (forked from the launcher)", "moor"), ("containerd-shim-runc-v2", "containerd")):
        side = memory[key]
        pss_each, rss_each, pss_total = _shim_figures(side)
        rows.append([label, f"{side['shim_count']} / {side['running']} running", mb(pss_each), mb(rss_each),
                     mb(pss_total)])
    launcher = memory["moor"].get("launcher")
    text = [f"## Memory of {count} idle shims ({count} detached `sleep 3600`, read 2 s after the last start)",
            markdown_table(["shim", "shims / containers", "PSS each MB", "RSS each MB", "PSS all MB"], rows)]
    if launcher:
        pss_each, _, pss_total = _shim_figures(memory["moor"])
        text.append(f"The moor-shim launcher, which forks every shim and shares its pages with them, has "
                    f"RSS {mb(launcher[0])} MB and PSS {mb(launcher[1])} MB; counted with the shims, "
                    f"each container costs {mb((pss_total + launcher[1]) / count)} MB PSS.")
    private = []
    for label, key in (("moor-shim", "moor"), ("containerd-shim-runc-v2", "containerd")):
        one = memory[key].get("private_of_one")
        if one:
            private.append([label, mb(one["anonymous"]), mb(one["heap"]), mb(one["stack"]), mb(one["file"]),
                            str(one["threads"])])
    if private:
        text.append("Private memory of one shim of each kind (pages no other process shares, Private_Clean + "
                    "Private_Dirty from /proc/PID/smaps):\n\n"
                    + markdown_table(["shim", "anonymous MB", "[heap] MB", "[stack] MB", "file data MB", "threads"],
                                     private))
    daemons = [["moord", mb(memory["idle"]["moord"][1]), mb(memory["moor"]["daemon"][1])],
               ["containerd", mb(memory["idle"]["containerd"][1]), mb(memory["containerd"]["daemon"][1])]]
    text.append(markdown_table(["daemon", "PSS idle MB", f"PSS with {count} running MB"], daemons))

    starts = []
    for label, key, command in (("moor", "moor", "`moor run -d`"), ("ctr", "containerd", "`ctr run -d --null-io`")):
        side = memory[key]
        starts.append([f"{command} x{count}", f"{side['start_total']:.2f}",
                       f"{ms(side['start_each'].median)} ({ms(side['start_each'].low)}-{ms(side['start_each'].high)})",
                       f"{side['teardown']:.2f}"])
    text.append(f"## {count} detached starts, one after another\n\n"
                + markdown_table(["starts", "total s", "each, median (min-max) ms", "teardown s"], starts)
                + "\n\nTeardown is one `moor rm -f` with all names for moor, and `ctr tasks kill`, "
                  "`ctr tasks rm` and `ctr containers rm` per container for containerd.")
    delays = memory["moor"].get("subscribe_delays") or []
    if delays:
        slow = sum(1 for delay in delays if delay > 0.05)
        text.append(f"moord subscribed to each new shim a median {ms(Summary.of(delays).median)} ms after the shim's "
                    f"`runc create` returned (max {ms(max(delays))} ms, from the shims' logs); "
                    f"{slow} of {len(delays)} waited more than 50 ms.")
    if memory["moor"].get("teardown_error"):
        text.append(f"`moor rm -f` reported an error: `{memory['moor']['teardown_error']}`; containers left "
                    f"behind: {', '.join(memory['moor']['teardown_left']) or 'none'}.")
    return "\n\n".join(text)


def _images(images: dict) -> str:
    image = images["image"]
    pulls, starts = images["pulls"], images["starts"]
    text = [f"## Pull and unpack of a large image from a loopback registry\n\n"
            f"{image['layers']} gzip layers, {image['files']} random files plus busybox: "
            f"{image['tar_bytes'] / 1e6:.1f} MB of tar, {image['blob_bytes'] / 1e6:.1f} MB of blobs. "
            f"`moor push` of it took {images['push_seconds']:.1f} s. Load average before the pulls: "
            f"{images['load_average_before_pulls']}, after the starts: {images['load_average_after']}."]
    rows = [[f"`{pulls['commands'][label]}`", f"{summary.median:.2f}", f"{summary.low:.2f}-{summary.high:.2f}",
             str(summary.count)] for label, summary in pulls["summary"].items()]
    ratio = pulls["ratio"]
    text.append(markdown_table(["pull", "median s", "min-max s", "n"], rows)
                + f"\n\nmoor / ctr, median of per-round ratios: x{ratio.median:.2f} ({ratio.low:.2f}-{ratio.high:.2f}). "
                  f"Snapshot folders after the last pull: moor {pulls['snapshot_bytes']['moor'] / 1e6:.1f} MB, "
                  f"containerd {pulls['snapshot_bytes']['ctr'] / 1e6:.1f} MB.")
    rows = []
    for label, command in (("moor", "`moor run -d --name N REF sleep 3600`"),
                           ("ctr", "`ctr run -d --null-io REF ID sleep 3600`")):
        summary = starts["summary"][label]
        rows.append([f"{command} x{starts['count']}", f"{starts['totals'][label]:.2f}",
                     f"{ms(summary.median)} ({ms(summary.low)}-{ms(summary.high)})",
                     f"{starts['running'][label]}", f"{starts['teardown'][label]:.2f}"])
    ratio = starts["ratio"]
    text.append(f"## {starts['count']} detached starts of the pulled image, moor and ctr alternating\n\n"
                + markdown_table(["starts", "total s", "each, median (min-max) ms", "running", "teardown s"], rows)
                + f"\n\nmoor / ctr, median of per-start ratios: x{ratio.median:.2f} ({ratio.low:.2f}-{ratio.high:.2f}).")
    return "\n\n".join(text)


def _goals(results: dict) -> str:
    lines = ["## Goals"]
    latency = results.get("latency")
    if latency and "moor / ctr" in latency["ratios"]:
        ratio = latency["ratios"]["moor / ctr"].median
        moor, ctr = latency["summary"]["moor"].median, latency["summary"]["ctr"].median
        # The verdict uses the median of per-round ratios; the ratio of the two medians can differ,
        # so both are printed.
        verdict = "met" if ratio <= LATENCY_GOAL else "NOT met"
        lines.append(f"- `moor run --rm` at most {LATENCY_GOAL}x `ctr run --rm`: {verdict}. Median of per-round "
                     f"ratios x{ratio:.2f}; medians {ms(moor)} ms against {ms(ctr)} ms, a ratio of "
                     f"x{moor / ctr:.2f}.")
    memory = results.get("memory")
    if memory:
        moor_each, _, moor_total = _shim_figures(memory["moor"])
        ctr_each, _, _ = _shim_figures(memory["containerd"])
        launcher = memory["moor"].get("launcher")
        verdict = "met" if moor_each <= ctr_each else "NOT met"
        line = (f"- shim PSS at or under containerd's: {verdict}. {mb(moor_each)} MB per moor shim against "
                f"{mb(ctr_each)} MB per containerd shim")
        if launcher:
            with_launcher = (moor_total + launcher[1]) / memory["count"]
            line += f"; {mb(with_launcher)} MB with the launcher's share"
        lines.append(line + ".")
    return "\n".join(lines)


def render(results: dict) -> str:
    parts = ["# Moorage benchmark", _machine(results)]
    if "latency" in results:
        parts.append(_latency(results["latency"]))
    if "pieces" in results:
        parts.append(_pieces(results["pieces"]))
    if "memory" in results:
        parts.append(_memory(results["memory"]))
    if "images" in results:
        parts.append(_images(results["images"]))
    parts.append(_goals(results))
    return "\n\n".join(parts) + "\n"
