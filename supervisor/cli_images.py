"""``moor`` verbs for images beyond import and removal: pull, push, tag, login, save, prune, system df.

``supervisor.cli`` adds these parsers and hands the verbs over; the module stays
free of heavy imports, because every ``moor`` command loads it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def add_image_commands(image_sub, sub) -> None:
    """Add the image verbs of this module to ``moor image`` and the top-level parser."""
    prune = image_sub.add_parser("prune", help="remove unused snapshots and blobs")
    prune.add_argument("-a", "--all", action="store_true",
                       help="also remove every image that no container uses")
    prune.add_argument("-f", "--force", action="store_true", help="accepted for docker compatibility")

    save = image_sub.add_parser("save", help="write images to an archive (OCI layout and docker save)")
    save.add_argument("-o", "--output", required=True, help="archive file to write")
    save.add_argument("images", nargs="+", metavar="IMAGE")

    for verb, text in (("pull", "download an image from a registry"),
                       ("push", "upload an image to the registry its name starts with")):
        command = sub.add_parser(verb, help=text)
        command.add_argument("--insecure-registry", action="store_true",
                             help="use plain HTTP instead of HTTPS")
        command.add_argument("--tls-ca", help="CA certificate file that signed the registry's "
                             "certificate (default: ROOT/certs.d/HOST:PORT/ca.crt)")
        command.add_argument("-q", "--quiet", action="store_true", help="print no progress")
        command.add_argument("image", metavar="NAME[:TAG|@DIGEST]")
    sub.choices["pull"].add_argument("--platform", help="OS/ARCH[/VARIANT] (default: the host's)")
    tag = sub.add_parser("tag", help="give an image another name")
    tag.add_argument("source", metavar="SOURCE")
    tag.add_argument("target", metavar="TARGET")
    login = sub.add_parser("login", help="store credentials for a registry (file mode 0600)")
    login.add_argument("-u", "--username", required=True)
    login.add_argument("--password-stdin", action="store_true", required=True,
                       help="read the password from standard input")
    login.add_argument("registry", metavar="HOST[:PORT]")

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


def cmd_pull(client, args: argparse.Namespace) -> int:
    progress = LayerProgress(sys.stdout, quiet=args.quiet)
    image = client.call("image_pull", ref=args.image, platform=args.platform,
                        insecure=args.insecure_registry, ca_file=_absolute(args.tls_ca),
                        on_output=progress.update)
    progress.finish()
    print(f"{image['name']} {image['id']}")
    return 0


def cmd_push(client, args: argparse.Namespace) -> int:
    progress = LayerProgress(sys.stdout, quiet=args.quiet)
    result = client.call("image_push", ref=args.image, insecure=args.insecure_registry,
                         ca_file=_absolute(args.tls_ca), on_output=progress.update)
    progress.finish()
    print(f"{args.image} {result['digest']}")
    return 0


def cmd_tag(client, args: argparse.Namespace) -> int:
    client.call("image_tag", source=args.source, target=args.target)
    return 0


def cmd_login(client, args: argparse.Namespace) -> int:
    password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("moor: no password on standard input", file=sys.stderr)
        return 2
    client.call("login", registry=args.registry, user=args.username, password=password)
    print("Login stored")
    return 0


def _absolute(path: str | None) -> str | None:
    return os.path.abspath(path) if path else None


class LayerProgress:
    """Progress display of a pull or push: one line per layer with digest, status, bytes and rate.

    On a terminal the lines are redrawn in place; otherwise each layer's last state
    is printed once at the end.
    """

    def __init__(self, out, quiet: bool = False):
        self._out = out
        self._quiet = quiet
        self._tty = out.isatty()
        self._layers: dict[str, dict] = {}
        self._drawn = 0

    def update(self, message: dict) -> None:
        if self._quiet or "layer" not in message:
            return
        now = time.monotonic()
        state = self._layers.setdefault(message["layer"], {"start": now})
        state.update(message, now=now)
        if self._tty:
            self._draw()

    def _line(self, digest: str, state: dict) -> str:
        elapsed = max(state["now"] - state["start"], 1e-3)
        rate = human_size(state["done"] / elapsed) + "/s"
        return (f"{digest.removeprefix('sha256:')[:12]}: {state['status']:<11} "
                f"{human_size(state['done'])}/{human_size(state['total'])} {rate}")

    def _draw(self) -> None:
        if self._drawn:
            self._out.write(f"\x1b[{self._drawn}F")
        for digest, state in self._layers.items():
            self._out.write("\x1b[2K" + self._line(digest, state) + "\n")
        self._drawn = len(self._layers)
        self._out.flush()

    def finish(self) -> None:
        if self._quiet or self._tty:
            return
        for digest, state in self._layers.items():
            self._out.write(self._line(digest, state) + "\n")


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
