"""Shim launcher: one pre-imported process that forks every shim.

A Python process with pyzmq loaded costs about 12 MB of private memory.
Forking the shims from one parent that has already imported everything lets
them share those pages copy-on-write, so each shim adds little memory, and a
fork takes about a millisecond where a new interpreter takes tens.

moord starts the launcher with pipes on its stdin and stdout and writes one
msgpack map per shim to start: ``{"config": ShimConfig.to_dict()}``.  The
launcher replies ``{"pid": N}`` or ``{"error": message}``.  Each shim starts
its own session at once, so it outlives the launcher and moord.  The launcher
exits when its stdin closes, which happens when moord exits.

A shim still copies every page that it writes, and CPython writes to an
object each time it takes a reference to it, so the long-lived shim runs as
little Python code as it can: the runtime calls run in short-lived workers
(``service.run_in_worker``), shims log through ``_StderrLogger``, the launcher
forks without the interpreter's at-fork hooks (``_fork``) and fills the free
blocks of the small-object allocator before it forks
(``_fill_allocator_pools``).
"""

from __future__ import annotations

import _signal
import ctypes
import gc
import itertools
import logging
import os
import re
import signal
import sys
import time
import traceback

import msgpack

from shim import console, oom, outbox, protocol, reaper, runc, service, sessions, stdio
from shim.service import Shim, ShimConfig

# One row of the size-class table that sys._debugmallocstats() prints:
# class, size, pools, blocks in use, free blocks.
_STATS_ROW = re.compile(rb"^ *\d+ +(\d+) +\d+ +\d+ +(\d+) *$", re.MULTILINE)

# libc's fork, called with the GIL held.  os.fork also runs the at-fork hooks
# that threading, logging and random register, and their Python code copies
# about 0.3 MB into every shim (measured with 50 shims).  Skipping them is safe while the launcher has
# one thread, so that no lock is held at the fork and the thread state stays
# valid in the child.  NOTE: checked against CPython 3.11 only.
_libc_fork = ctypes.PyDLL(None, use_errno=True).fork if sys.version_info[:2] == (3, 11) else None


class _StderrLogger:
    """Stand-in for ``logging.Logger`` in the shim modules: writes each record straight to stderr.

    A record through the logging package runs some thirty Python functions,
    and every shim would copy the pages they touch.  This writes the same
    line format with a few calls into C.
    """

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def _write(self, level: str, message: str, args: tuple, exc_info: bool = False) -> None:
        now = time.time()
        if args:
            message = message % args
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        line = f"{stamp},{int((now - int(now)) * 1000):03d} {level} {self.name}: {message}\n"
        if exc_info:
            line += traceback.format_exc()
        try:
            os.write(2, line.encode("utf-8", "backslashreplace"))
        except OSError:
            pass

    def debug(self, message: str, *args) -> None:
        """Drop the record: shims log at INFO and above."""

    def info(self, message: str, *args) -> None:
        self._write("INFO", message, args)

    def warning(self, message: str, *args) -> None:
        self._write("WARNING", message, args)

    def error(self, message: str, *args) -> None:
        self._write("ERROR", message, args)

    def exception(self, message: str, *args) -> None:
        self._write("ERROR", message, args, exc_info=True)


log = _StderrLogger("shim.zygote")
_shim_log = _StderrLogger("shim")
_filler: list = []  # objects that keep the allocator's free blocks taken; see _fill_allocator_pools


def _use_stderr_loggers() -> None:
    """Make the shim modules log through _StderrLogger in the launcher and its shims."""
    for module in (oom, outbox, reaper, runc, service, console, sessions, stdio):
        module.log = _StderrLogger(module.log.name)


def _become_shim(config: ShimConfig) -> None:
    """Detach the forked child and run the shim; never returns."""
    code = 1
    try:
        os.setsid()
        # _signal, not signal, because signal's enum wrappers would run more Python code in every shim.
        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)  # ignored signals would pass on to the container
        _signal.signal(_signal.SIGTERM, _log_term)
        folder = os.fspath(config.folder)
        os.makedirs(folder, exist_ok=True)
        _redirect_stdio(os.path.join(folder, "shim.log"))
        _write_pid(os.path.join(folder, "shim.pid"))
        code = Shim(config).run()
    except BaseException:  # the child must never return into the launcher's loop
        _shim_log.exception("shim for container %s failed", config.container_id)
    finally:
        logging.shutdown()
        os._exit(code)


def _log_term(signum, frame) -> None:
    _shim_log.warning("received SIGTERM; a shim stops only when moord deletes its container")


def _redirect_stdio(log_path) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(log_fd, 2)
    os.closerange(3, 1024)


def _write_pid(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, str(os.getpid()).encode())
    finally:
        os.close(fd)


def _fork() -> int:
    """Fork a shim, with libc's fork while the launcher has a single thread."""
    if _libc_fork is None or len(os.listdir("/proc/self/task")) != 1:
        return os.fork()
    pid = _libc_fork()
    if pid < 0:
        raise OSError(ctypes.get_errno(), "fork of a shim failed")
    return pid


def _free_blocks() -> dict[int, int]:
    """Return the free blocks in partly used pools of the small-object allocator, by block size."""
    print_stats = getattr(sys, "_debugmallocstats", None)
    if print_stats is None:
        return {}
    capture = os.memfd_create("mallocstats")
    saved_stderr = os.dup(2)
    try:
        sys.stderr.flush()
        os.dup2(capture, 2)
        try:
            print_stats()
        finally:
            os.dup2(saved_stderr, 2)
        text = os.pread(capture, 1 << 20, 0)
    finally:
        os.close(saved_stderr)
        os.close(capture)
    return {int(size): int(free) for size, free in _STATS_ROW.findall(text)}


def _new_block(size: int) -> object:
    """Return a new object that takes one allocator block of ``size`` bytes."""
    if size == 16:
        return object()
    if size == 32:
        return (1 << 40) + size  # a new two-digit int: 32 bytes
    return bytes(size - sys.getsizeof(b""))  # a bytes object of exactly ``size`` bytes


def _fill_allocator_pools(rounds: int = 3) -> None:
    """Take the free blocks of partly used allocator pools with objects kept in ``_filler``.

    The objects that a shim creates then go to fresh pools of its own instead
    of to free blocks spread over pages that it shares with the launcher,
    each of which it would copy.
    """
    for _ in range(rounds):
        free = _free_blocks()
        if not any(free.values()):
            return
        for size, count in free.items():
            _filler.extend([_new_block(size) for _ in itertools.repeat(None, count)])


def _spawn(request: dict) -> dict:
    try:
        # Paths stay strings: building pathlib objects here would touch pages that each shim then copies.
        config = ShimConfig(**request["config"])
    except (KeyError, TypeError, ValueError) as exc:
        return {"error": f"invalid spawn request: {exc}"}
    pid = _fork()
    if pid == 0:
        _become_shim(config)
    log.info("forked shim %d for container %s", pid, config.container_id)
    return {"pid": pid}


def main() -> int:
    """Serve spawn requests from stdin until it closes."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps shims that exit
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reaper.prepare()
    _use_stderr_loggers()
    protocol._codec()  # bind msgpack in shim.protocol here, not in each shim's own copy of the page
    gc.collect()
    _fill_allocator_pools()
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
