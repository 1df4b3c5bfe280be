"""Fixtures that run a private moord per test and clean up everything it made.

Each ``moord`` fixture gets its own ``--root`` (under pytest's tmp_path) and
``--state`` (a short folder under /tmp, because unix socket paths are limited
to 107 bytes).  Teardown stops moord, then deletes every runc container left
in that state folder, kills the shims it recorded by pid, and removes the
folders, also when the test failed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from supervisor.client import Client  # noqa: E402


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, message: str = "condition"):
    """Poll ``predicate`` until it returns a true value; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {message}")
        time.sleep(interval)


class Moord:
    """One private moord: its folders, its process and helpers to drive it."""

    def __init__(self, root: Path, state: Path, extra_args: tuple[str, ...] = ()):
        self.root = root
        self.state = state
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None
        self.shim_pids: set[int] = set()

    # -- the daemon ---------------------------------------------------------

    def start(self, *extra: str, env: dict | None = None, preexec_fn=None) -> None:
        args = [sys.executable, "-m", "supervisor.daemon", "--root", str(self.root), "--state", str(self.state),
                *self.extra_args, *extra]
        if "--default-network" not in args:
            # Tests never use the host's default bridge network; network tests make their own.
            args += ["--default-network", "none"]
        log = open(self.root.parent / "moord.out", "ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=REPO,
                                        env=env, start_new_session=True, preexec_fn=preexec_fn)
        log.close()
        wait_until(self._answers, 30, message="moord to answer on its socket")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"moord exited with {self.process.returncode}; see {self.root.parent / 'moord.out'}")
        try:
            client = Client(self.state)
        except Exception:
            return False
        try:
            client.call("version", timeout=2)
            return True
        except Exception:
            return False
        finally:
            client.close()

    def kill9(self) -> None:
        """SIGKILL moord, as a crash would; shims and containers must survive."""
        self._remember_shims()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM moord and wait for its clean exit."""
        if self.process is None or self.process.poll() is not None:
            return
        self._remember_shims()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- the client -----------------------------------------------------------

    def moor(self, *args: str, check: bool = True, timeout: float = 120, input: bytes | None = None,
             env: dict | None = None) -> subprocess.CompletedProcess:
        """Run the ``moor`` CLI against this moord; return the completed process."""
        command = [sys.executable, "-m", "supervisor.cli", "--state", str(self.state), *args]
        result = subprocess.run(command, capture_output=True, timeout=timeout, cwd=REPO, input=input, env=env)
        if check and result.returncode != 0:
            pytest.fail(f"moor {' '.join(args)} exited with {result.returncode}:\n"
                        f"stdout: {result.stdout.decode(errors='replace')}\n"
                        f"stderr: {result.stderr.decode(errors='replace')}")
        self._remember_shims()
        return result

    def client(self) -> Client:
        return Client(self.state)

    def call(self, op: str, **args):
        client = self.client()
        try:
            return client.call(op, timeout=120, **args)
        finally:
            client.close()

    def inspect(self, ref: str) -> dict:
        return self.call("inspect", id=ref)

    def logs(self, ref: str) -> bytes:
        return self.moor("logs", ref).stdout

    def wait_status(self, ref: str, status: str, timeout: float = 30) -> dict:
        return wait_until(lambda: (lambda info: info if info["State"]["Status"] == status else None)(self.inspect(ref)),
                          timeout, message=f"container {ref} to be {status}")

    # -- teardown ---------------------------------------------------------------

    def _remember_shims(self) -> None:
        for pid_file in (self.state / "shims").glob("*/shim.pid"):
            try:
                self.shim_pids.add(int(pid_file.read_text()))
            except (OSError, ValueError):
                pass

    def cleanup(self) -> None:
        self._remember_shims()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        runc_root = self.state / "runc"
        if runc_root.is_dir():
            for entry in runc_root.iterdir():
                subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", entry.name],
                               capture_output=True, timeout=30)
        for pid in self.shim_pids:
            if _is_shim(pid):
                os.kill(pid, signal.SIGKILL)
        # Network namespaces that moord pinned under its state folder outlive it by design.
        _unmount_under(self.state)
        shutil.rmtree(self.state, ignore_errors=True)
        _unmount_under(self.root)
        for folder in (Path("/sys/fs/cgroup") / c / "moorage" for c in os.listdir("/sys/fs/cgroup")):
            _remove_empty_cgroups(folder, self._container_ids())

    def _container_ids(self) -> set[str]:
        folder = self.root / "containers"
        return {entry.name for entry in folder.iterdir()} if folder.is_dir() else set()


def _unmount_under(folder: Path) -> None:
    """Unmount every mount below ``folder`` (container roots left by a failed test)."""
    prefix = str(folder) + "/"
    targets = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
               if line.split()[4].startswith(prefix)]
    for target in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, timeout=30)


def _is_shim(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"shim" in cmdline


def _remove_empty_cgroups(parent: Path, ids: set[str]) -> None:
    for container_id in ids:
        path = parent / container_id
        if path.is_dir():
            try:
                path.rmdir()
            except OSError:
                pass


@pytest.fixture
def moord_factory(tmp_path):
    """Make private moords (started) on demand; all are cleaned up at teardown."""
    made: list[Moord] = []

    def make(*extra_args: str, start: bool = True) -> Moord:
        base = tmp_path / f"moord{len(made)}"
        base.mkdir()
        state = Path(tempfile.mkdtemp(prefix="ms-", dir="/tmp"))
        daemon = Moord(base / "root", state, extra_args)
        made.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield make
    for daemon in made:
        daemon.cleanup()


@pytest.fixture
def moord(moord_factory) -> Moord:
    """A started private moord with its own root and state folders."""
    return moord_factory()


def _run_quietly(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="session", autouse=True)
def empty_nat_tables_removed():
    """Delete the ``ip nat`` and ``ip6 nat`` tables that iptables-nft made for the tests, once empty.

    The tests remove their own chains and rules, but iptables-nft still leaves
    the table behind with its empty base chains.
    """
    existed = {family: _run_quietly("nft", "list", "table", family, "nat").returncode == 0
               for family in ("ip", "ip6")}
    yield
    for family, tool in (("ip", "iptables"), ("ip6", "ip6tables")):
        if existed[family] or _run_quietly("nft", "list", "table", family, "nat").returncode != 0:
            continue
        rules = _run_quietly(tool, "-w", "10", "-t", "nat", "-S").stdout.splitlines()
        if all(rule.startswith("-P ") for rule in rules):
            _run_quietly("nft", "delete", "table", family, "nat")
