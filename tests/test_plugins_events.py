"""The events PUB socket read by consumers that do not import Moorage: the C and raw Python examples."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONSUMER = REPO / "contrib" / "events-consumer"


@pytest.fixture(scope="module")
def c_consumer(tmp_path_factory) -> Path:
    """Build moor-events.c with the system's libzmq and msgpack-c."""
    binary = tmp_path_factory.mktemp("consumer") / "moor-events"
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libzmq", "msgpack"], capture_output=True,
                           text=True, check=True, timeout=30).stdout
    subprocess.run(["cc", "-Wall", "-Werror", "-o", str(binary), str(CONSUMER / "moor-events.c"),
                    *shlex.split(flags)], check=True, timeout=120)
    return binary


def start_consumer(args: list[str]) -> subprocess.Popen:
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.5)  # a SUB socket drops what is published before its subscription reaches the PUB
    return process


def finish(process: subprocess.Popen) -> list[str]:
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate(timeout=10)
        pytest.fail(f"consumer did not finish: {out!r} {err!r}")
    return out.decode().splitlines()


def test_c_consumer_prints_container_events(moord, c_consumer):
    process = start_consumer([str(c_consumer), "-s", str(moord.state), "-n", "2", "container."])

    moord.moor("run", "--rm", "--name", "seen-by-c", "busybox", "true")
    lines = finish(process)
    fields = [line.split(" ", 3) for line in lines]

    assert process.returncode == 0
    assert [f[1] for f in fields] == ["container.create", "container.delete"]
    assert fields[0][2] == fields[1][2]
    assert '"name"=>"seen-by-c"' in fields[0][3]


def test_c_consumer_filters_by_prefix(moord, c_consumer):
    process = start_consumer([str(c_consumer), "-s", str(moord.state), "-n", "1", "task.exit"])

    moord.moor("run", "--rm", "busybox", "sh", "-c", "exit 5", check=False)
    lines = finish(process)

    assert lines[0].split(" ", 3)[1] == "task.exit"
    assert '"exit_code"=>5' in lines[0]


def test_python_consumer_without_moorage(moord, tmp_path):
    # Run from an empty folder with no PYTHONPATH, so the consumer cannot import Moorage.
    process = subprocess.Popen([sys.executable, str(CONSUMER / "consume.py"), str(moord.state), "task.start"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env={})
    time.sleep(0.5)  # a SUB socket drops what is published before its subscription reaches the PUB
    try:
        container_id = moord.moor("run", "-d", "busybox", "sleep", "30").stdout.decode().strip()
        line = process.stdout.readline().decode()
    finally:
        process.kill()
        process.communicate(timeout=10)

    assert line.split(" ", 3)[1:3] == ["task.start", container_id]
    moord.moor("rm", "-f", container_id)
