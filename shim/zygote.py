"""Shim launcher: one pre-imported process that forks every shim.

A Python process with pyzmq loaded costs about 12 MB of private memory.
Forking the shims from one parent that has already imported everything lets
them share those pages copy-on-write, so each shim adds little memory, and a
fork takes about a millisecond where a new interpreter takes tens.

moord starts the launcher with pipes on its stdin and stdout and writes one
msgpack map per shim to start: ``{"config": ShimConfig.to_dict()}``.  The
launcher answers ``{"pid": N}`` or ``{"error": message}``.  Each shim starts
its own session at once, so it outlives the launcher and moord.  The launcher
exits when its stdin closes, which happens when moord exits.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys

import msgpack

from shim import protocol  # noqa: F401  (pre-imported for the shims)
from shim.service import Shim, ShimConfig

log = logging.getLogger("shim.zygote")


def _become_shim(config: ShimConfig) -> None:
    """Detach the forked child and run the shim; never returns."""
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # ignored signals would pass on to the container
        signal.signal(signal.SIGTERM, _log_term)
        config.folder.mkdir(parents=True, exist_ok=True)
        _redirect_stdio(config.folder / "shim.log")
        _configure_logging()
        (config.folder / "shim.pid").write_text(str(os.getpid()))
        code = Shim(config).run()
    except BaseException:  # the child must never return into the launcher's loop
        logging.getLogger("shim").exception("shim for container %s failed", config.container_id)
    finally:
        logging.shutdown()
        os._exit(code)


def _log_term(signum, frame) -> None:
    logging.getLogger("shim").warning(
        "received SIGTERM; a shim stops only when moord deletes its container")


def _redirect_stdio(log_path) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(log_fd, 2)
    os.closerange(3, 1024)


def _configure_logging() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _spawn(request: dict) -> dict:
    try:
        config = ShimConfig.from_dict(request["config"])
    except (KeyError, TypeError, ValueError) as exc:
        return {"error": f"invalid spawn request: {exc}"}
    pid = os.fork()
    if pid == 0:
        _become_shim(config)
    log.info("forked shim %d for container %s", pid, config.container_id)
    return {"pid": pid}


def main() -> int:
    """Serve spawn requests from stdin until it closes."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps shims that exit
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gc.collect()
    gc.freeze()

    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=protocol.MAX_MESSAGE_BYTES)
    out = sys.stdout.buffer
    while True:
        data = os.read(0, 65536)
        if not data:
            return 0
        unpacker.feed(data)
        for request in unpacker:
            out.write(msgpack.packb(_spawn(request)))
            out.flush()


if __name__ == "__main__":
    sys.exit(main())
