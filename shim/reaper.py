"""Child reaping for a shim that is the subreaper of its container.

``runc create`` forks the container's init and exits, so the init is
reparented to the shim only because the shim set PR_SET_CHILD_SUBREAPER.
An init or exec process may exit before the shim has read its pid file (the
early-exit race), so exits of pids not yet claimed are kept until they
are claimed.
"""

from __future__ import annotations

import _signal
import ctypes
import logging
import os
import signal
import time

from shim.protocol import exit_code_from_status

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
_MAX_UNCLAIMED = 4096


# libc and its prctl, loaded once in the launcher because loading them in each shim costs memory.
_libc = None
_prctl = None


def prepare() -> None:
    """Load libc's prctl; the launcher calls this before it forks, so shims share it."""
    global _libc, _prctl
    if _prctl is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _prctl = _libc.prctl


def libc() -> ctypes.CDLL:
    """Return the libc handle that ``prepare`` loaded, for calls that os does not offer."""
    prepare()
    return _libc


def last_errno() -> int:
    return ctypes.get_errno()


def become_subreaper() -> None:
    prepare()
    if _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


class Exit:
    """Exit status of one process: a code, or 128 + signal when killed."""

    __slots__ = ("pid", "code", "signal", "at")

    def __init__(self, pid: int, status: int, at: float):
        self.pid = pid
        self.code, self.signal = exit_code_from_status(status)
        self.at = at

    def __repr__(self) -> str:
        if self.signal:
            return f"<Exit pid={self.pid} killed by signal {self.signal}>"
        return f"<Exit pid={self.pid} exited with {self.code}>"


def _ignore_signal(signum, frame) -> None:
    """Handle SIGCHLD with nothing: the wake-up fd wakes the loop."""


class Reaper:
    """Collects every child exit through a SIGCHLD wake-up pipe."""

    def __init__(self):
        self.read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._write_fd = write_fd
        self.unclaimed: dict[int, Exit] = {}
        # _signal, not signal, because signal's enum wrappers would run more Python code in every shim.
        _signal.signal(_signal.SIGCHLD, _ignore_signal)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def drain_wakeups(self) -> None:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def reap(self) -> list[Exit]:
        """Wait for every exited child without blocking."""
        exits = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            exits.append(Exit(pid, status, time.time()))
        return exits

    def keep(self, exit_: Exit) -> None:
        if len(self.unclaimed) >= _MAX_UNCLAIMED:
            self.unclaimed.pop(next(iter(self.unclaimed)))
        self.unclaimed[exit_.pid] = exit_

    def claim(self, pid: int) -> Exit | None:
        """Return the exit of ``pid`` if it happened before the pid was known."""
        return self.unclaimed.pop(pid, None)
