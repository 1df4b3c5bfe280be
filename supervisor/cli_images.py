"""``moor`` verbs for images beyond import and removal: prune, system df, and their output.

``supervisor.cli`` adds these parsers and hands the verbs over; the module stays
free of heavy imports, because every ``moor`` command loads it.
"""

from __future__ import annotations

import argparse
import os


def add_image_commands(image_sub, sub) -> None:
    """Add the image verbs of this module to ``moor image`` and the top-level parser."""
    prune = image_sub.add_parser("prune", help="remove unused snapshots and blobs")
    prune.add_argument("-a", "--all", action="store_true",
                       help="also remove every image that no container uses")
    prune.add_argument("-f", "--force", action="store_true", help="accepted for docker compatibility")

    save = image_sub.add_parser("save", help="write images to an archive (OCI layout and docker save)")
    save.add_argument("-o", "--output", required=True, help="archive file to write")
    save.add_argument("images", nargs="+", metavar="IMAGE")

    system = sub.add_parser("system", help="show disk use of images and containers")
    system_sub = system.add_subparsers(dest="system_command", required=True, metavar="COMMAND")
    system_sub.add_parser("df", help="show disk use of images, snapshots and blobs")


IMAGE_COMMANDS = frozenset({"prune", "save"})


def cmd_image_more(client, args: argparse.Namespace) -> int:
    """Run a ``moor image`` verb of this module."""
    if args.image_command == "save":
        client.call("image_save", refs=args.images, file=os.path.abspath(args.output))
    elif args.image_command == "prune":
        result = client.call("image_prune", all=args.all)
        for name in result["untagged"]:
            print(f"Untagged: {name}")
        for image_id in result["deleted"]:
            print(f"Deleted: {image_id}")
        for snapshot in result["snapshots"]:
            print(f"Deleted snapshot: {snapshot[:12]}")
        print(f"Total reclaimed space: {human_size(result['reclaimed'])}")
    return 0


def cmd_system(client, args: argparse.Namespace) -> int:
    usage = client.call("system_df")
    rows = [("TYPE", "TOTAL", "SIZE", "RECLAIMABLE"),
            ("Images", str(usage["image_ids"]), human_size(usage["snapshot_bytes"]),
             human_size(usage["snapshot_reclaimable"])),
            ("Containers", str(usage["containers"]), "", ""),
            ("Snapshots", str(usage["snapshots"]), human_size(usage["snapshot_bytes"]),
             human_size(usage["snapshot_reclaimable"])),
            ("Blobs", str(usage["blobs"]), human_size(usage["blob_bytes"]),
             human_size(usage["blob_reclaimable"]))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def human_size(count: float) -> str:
    """Format a byte count with a decimal unit, as docker prints sizes."""
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f}{unit}" if unit == "B" else f"{count:.1f}{unit}"
        count /= 1000
    return f"{count:.1f}TB"
