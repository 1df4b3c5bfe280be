"""Command line of ``moor-shim``.

moord starts shims through the launcher (``moor-shim launcher``).  Running a
shim by hand (``moor-shim run``) is for debugging: it stays in the foreground
and serves the same socket as a shim that moord started.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="moor-shim", description="Moorage's per-container shim.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("launcher", help="serve spawn requests from moord on stdin (started by moord)")

    run = commands.add_parser("run", help="run one container's shim in the foreground")
    run.add_argument("--id", required=True, help="container id")
    run.add_argument("--bundle", required=True, type=Path, help="OCI bundle folder holding config.json")
    run.add_argument("--folder", required=True, type=Path, help="shim state folder; the socket goes there")
    run.add_argument("--spool", required=True, type=Path, help="folder for spooled output")
    run.add_argument("--runtime", default="runc", help="OCI runtime binary (default: runc)")
    run.add_argument("--runtime-root", type=Path, default=Path("/run/moorage/runc"),
                     help="state folder given to the runtime as --root")
    run.add_argument("--spool-limit", type=int, default=256 * 1024 * 1024,
                     help="bytes of output kept while moord is away (default: 256 MiB)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.command == "launcher":
        from shim import zygote
        return zygote.main()

    from shim.service import Shim, ShimConfig
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ShimConfig(container_id=args.id, bundle=args.bundle, folder=args.folder,
                        spool_dir=args.spool, runtime=args.runtime, runtime_root=args.runtime_root,
                        spool_limit=args.spool_limit)
    config.folder.mkdir(parents=True, exist_ok=True)
    return Shim(config).run()


if __name__ == "__main__":
    sys.exit(main())
