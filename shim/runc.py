"""Calls to an OCI runtime with runc's command line (runc, crun, youki)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

from shim.protocol import FailedPrecondition, MoorError, StartFailed

log = logging.getLogger(__name__)


class Runtime:
    """One OCI runtime binary with its own state folder (``--root``)."""

    def __init__(self, binary: str, root: Path, log_path: Path):
        self.binary = binary
        self.root = root
        self.log_path = log_path

    def _command(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.root), "--log", str(self.log_path),
                "--log-format", "json", *args]

    def _run(self, args: list[str], stdio: tuple[int, int, int] | None = None) -> subprocess.CompletedProcess:
        if stdio is None:
            return subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, close_fds=True)
        stdin, stdout, stderr = stdio
        return subprocess.run(args, stdin=stdin, stdout=stdout, stderr=stderr, close_fds=True)

    def create(self, container_id: str, bundle: Path, pid_file: Path, stdio: tuple[int, int, int],
               console_socket: str | None = None) -> None:
        """Run ``create``; the container's init inherits ``stdio``, or a terminal with ``console_socket``."""
        console = ["--console-socket", console_socket] if console_socket else []
        result = self._run(self._command("create", "--bundle", str(bundle), "--pid-file", str(pid_file),
                                         *console, container_id), stdio)
        if result.returncode != 0:
            raise start_error(self.last_error() or f"{self.binary} create exited with {result.returncode}")

    def start(self, container_id: str) -> None:
        self._check(self._command("start", container_id), "start")

    def exec(self, container_id: str, process_file: Path, pid_file: Path, stdio: tuple[int, int, int],
             console_socket: str | None = None) -> None:
        """Start an extra process detached; the shim reaps it as subreaper."""
        console = ["--tty", "--console-socket", console_socket] if console_socket else []
        result = self._run(self._command("exec", "--detach", "--process", str(process_file),
                                         "--pid-file", str(pid_file), *console, container_id), stdio)
        if result.returncode != 0:
            raise start_error(self.last_error() or f"{self.binary} exec exited with {result.returncode}")

    def kill(self, container_id: str, signal: int, all_processes: bool) -> None:
        args = ["kill", "--all"] if all_processes else ["kill"]
        self._check(self._command(*args, container_id, str(signal)), "kill")

    def delete(self, container_id: str, force: bool = False) -> None:
        args = ["delete", "--force"] if force else ["delete"]
        result = self._run(self._command(*args, container_id))
        if result.returncode != 0 and self.state(container_id) is not None:
            raise MoorError(f"{self.binary} delete {container_id} failed: {self._message(result)}")

    def state(self, container_id: str) -> dict | None:
        result = self._run(self._command("state", container_id))
        if result.returncode != 0:
            return None
        return json.loads(result.stdout)

    def _check(self, args: list[str], verb: str) -> None:
        result = self._run(args)
        if result.returncode == 0:
            return
        message = self._message(result)
        if "does not exist" in message or "not running" in message or "container not" in message:
            raise FailedPrecondition(f"{verb} failed: {message}")
        raise MoorError(f"{self.binary} {verb} failed: {message}")

    def _message(self, result: subprocess.CompletedProcess) -> str:
        text = result.stderr.decode(errors="replace").strip()
        return self.last_error() or text or f"exit status {result.returncode}"

    def last_error(self) -> str:
        """Return the message of the last error that the runtime logged."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(max(0, os.fstat(handle.fileno()).st_size - 65536))
                lines = handle.read().splitlines()
        except FileNotFoundError:
            return ""
        for line in reversed(lines):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("level") in ("error", "fatal"):
                return str(entry.get("msg", "")).strip()
        return ""


def start_error(message: str) -> StartFailed:
    """Classify a runtime start failure with docker's exit statuses (127, 126, 125)."""
    lowered = message.lower()
    if "no such file or directory" in lowered or "executable file not found" in lowered:
        return StartFailed(message, 127)
    if "permission denied" in lowered:
        return StartFailed(message, 126)
    return StartFailed(message, 125)

