"""Slow tests of a real service image built without any registry: Debian with redis-server.

contrib/debian-redis-rootfs.sh makes the root folder with debootstrap (minbase, bookworm)
from the Debian mirror in this machine's apt sources, then installs redis-server in it.
contrib/run-tests.sh builds the folder into /var/tmp/moorage-test-cache/debian-redis-rootfs
before pytest starts, because downloading packages is an install step: the tests themselves
send nothing off the machine, and they are skipped when the folder is missing.

Each test imports the folder with ``moor image import-rootfs`` into its own moord and runs
redis-server detached.  The container has its own network namespace, so redis listens
on, and is reached through, the container's loopback only, with ``moor exec redis-cli``.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import REPO, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap, chroot and runc need root"),
]

CACHE = Path("/var/tmp/moorage-test-cache")
ROOTFS = CACHE / "debian-redis-rootfs"
BUILD_SCRIPT = REPO / "contrib" / "debian-redis-rootfs.sh"
IMAGE = "debian-redis:test"
REDIS_COMMAND = ("redis-server", "--port", "6379", "--bind", "127.0.0.1",
                 "--protected-mode", "no", "--save", "", "--appendonly", "no")


@pytest.fixture(scope="session")
def redis_rootfs() -> Path:
    """Return the cached Debian root with redis-server that the test script built."""
    if not (ROOTFS / "usr" / "bin" / "redis-server").exists():
        pytest.skip(f"no Debian root with redis-server at {ROOTFS}: build it with "
                    f"`{BUILD_SCRIPT} {ROOTFS}` (contrib/run-tests.sh does this first)")
    return ROOTFS


@pytest.fixture
def redis_moord(moord, redis_rootfs):
    """Return a private moord with the Debian root imported as debian-redis:test.

    Teardown removes the test's containers and the image while moord still runs, so
    the three copies of the root (layer, snapshot, container root) do not pile up
    in pytest's kept temporary folders.
    """
    moord.moor("image", "import-rootfs", IMAGE, str(redis_rootfs))
    yield moord
    containers = [item.decode() for item in moord.moor("ps", "-a", "-q", "--no-trunc", check=False).stdout.split()]
    if containers:
        moord.moor("rm", "-f", *containers, check=False)
    moord.moor("image", "rm", "-f", IMAGE, check=False)


def start_redis(moord) -> str:
    """Run redis-server detached in a new container and wait until it replies PONG to PING."""
    name = f"redis-{uuid.uuid4().hex[:8]}"
    moord.moor("run", "-d", "--name", name, IMAGE, *REDIS_COMMAND)
    wait_until(lambda: redis_cli(moord, name, "ping").stdout.strip() == b"PONG", 60,
               message=f"redis-server in {name} to reply PONG on 127.0.0.1")
    return name


def redis_cli(moord, name: str, *command: str) -> subprocess.CompletedProcess:
    return moord.moor("exec", name, "redis-cli", "-h", "127.0.0.1", *command, check=False)


def test_import_rootfs_keeps_merged_usr(redis_moord):
    result = redis_moord.moor("run", "--rm", IMAGE, "readlink", "/bin")

    assert result.stdout.strip() == b"usr/bin"


def test_redis_container_answers_ping(redis_moord):
    name = start_redis(redis_moord)

    result = redis_cli(redis_moord, name, "ping")

    assert result.returncode == 0
    assert result.stdout.strip() == b"PONG"


def test_redis_container_stores_value(redis_moord):
    name = start_redis(redis_moord)

    stored = redis_cli(redis_moord, name, "set", "moorage", "moored")
    read = redis_cli(redis_moord, name, "get", "moorage")

    assert stored.stdout.strip() == b"OK"
    assert read.returncode == 0
    assert read.stdout.strip() == b"moored"


def test_redis_container_stops_with_zero(redis_moord):
    name = start_redis(redis_moord)

    redis_moord.moor("stop", name)
    state = redis_moord.wait_status(name, "exited")["State"]

    assert state["ExitCode"] == 0
    assert state["ExitSignal"] == 0
    assert b"ready to exit" in redis_moord.logs(name)


def test_redis_container_removed_after_stop(redis_moord):
    name = start_redis(redis_moord)
    redis_moord.moor("stop", name)

    redis_moord.moor("rm", name)
    listed = redis_moord.moor("ps", "-a", "--no-trunc").stdout

    assert name.encode() not in listed
