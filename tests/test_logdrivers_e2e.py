"""End-to-end tests of logging drivers: real moord, shims and runc, sinks on loopback or under /tmp."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running containers with runc needs root")

COUNT_TO_3000 = 'i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo "n=$i"; sleep 0.002; done'


@pytest.fixture
def socket_folder():
    """A short folder for unix sockets (their paths are limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="mle-", dir="/tmp") as folder:
        yield Path(folder)


def log_folder(moord, ref: str) -> Path:
    return moord.root / "containers" / moord.inspect(ref)["Id"] / "logs"


def numbers_in(text: bytes) -> list[int]:
    return [int(line[2:]) for line in text.decode().splitlines() if line.startswith("n=")]


# -- local ------------------------------------------------------------------------------

def size_or_zero(path: Path) -> int:
    """Return a file's size, or 0 if a rotation removed it since it was listed."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("max_files", [1, 3], ids=["one-file", "three-files"])
def test_local_follow_across_rotation(moord, max_files):
    """A follower keeps printing through every rotation; the files stay within their bound."""
    moord.moor("create", "--name", "rot", "--log-opt", "max-size=1k", "--log-opt", f"max-file={max_files}",
               "busybox", "sh", "-c", COUNT_TO_3000)
    moord.moor("start", "rot")
    follower = subprocess.Popen([sys.executable, "-m", "supervisor.cli", "--state", str(moord.state), "logs", "-f",
                                 "rot"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    folder = log_folder(moord, "rot")
    largest = 0
    while follower.poll() is None:
        largest = max(largest, sum(size_or_zero(path) for path in folder.glob("container.log*")))
        time.sleep(0.05)  # the case samples the on-disk size every 50 ms while the container writes
    out, err = follower.communicate(timeout=60)
    numbers = numbers_in(out)

    assert follower.returncode == 0, err
    assert numbers[-1] == 3000
    assert all(later > earlier for earlier, later in zip(numbers, numbers[1:]))
    assert largest <= 1024 * max_files + 128


@pytest.mark.parametrize("max_files", [1, 3], ids=["one-file", "three-files"])
def test_local_logs_after_rotation_intact(moord, max_files):
    moord.moor("run", "--name", "rot", "--log-opt", "max-size=1k", "--log-opt", f"max-file={max_files}",
               "busybox", "sh", "-c", COUNT_TO_3000)

    numbers = numbers_in(moord.logs("rot"))

    assert numbers[-1] == 3000
    assert numbers == list(range(numbers[0], 3001))


def test_local_rotated_files_compressed(moord):
    # One line per output record, so that the 1 KiB files rotate several times (a record is never split).
    moord.moor("run", "--name", "gz", "--log-opt", "max-size=1k", "--log-opt", "max-file=3", "busybox", "sh", "-c",
               'i=0; while [ $i -lt 600 ]; do i=$((i+1)); echo "n=$i"; sleep 0.002; done')
    folder = log_folder(moord, "gz")
    expected = ["container.log", "container.log.1.gz", "container.log.2.gz"]

    def names():
        return sorted(path.name for path in folder.iterdir())

    wait_until(lambda: names() == expected, 30, message="both rotated files to be gzipped")

    assert names() == expected


def test_local_tail_reads_compressed_files(moord):
    moord.moor("run", "--name", "gz", "--log-opt", "max-size=1k", "--log-opt", "max-file=3",
               "busybox", "sh", "-c", "seq 1 2000")

    out = moord.moor("logs", "--tail", "3", "gz").stdout

    assert out == b"1998\n1999\n2000\n"


def test_logs_until_excludes_later_lines(moord):
    moord.moor("run", "--name", "t", "busybox", "sh", "-c", "echo early; sleep 1.2; echo late")
    stamped = moord.moor("logs", "-t", "t").stdout.decode().splitlines()
    late_time = stamped[1].split(" ")[0]

    out = moord.moor("logs", "--until", late_time, "t").stdout

    assert out == b"early\n"


def test_logs_since_excludes_earlier_lines(moord):
    moord.moor("run", "--name", "t", "busybox", "sh", "-c", "echo early; sleep 1.2; echo late")
    late_time = moord.moor("logs", "-t", "t").stdout.decode().splitlines()[1].split(" ")[0]

    out = moord.moor("logs", "--since", late_time, "t").stdout

    assert out == b"late\n"


def test_logs_until_invalid_names_value(moord):
    moord.moor("run", "--name", "t", "busybox", "echo", "x")

    result = moord.moor("logs", "--until", "yesterday", "t", check=False)

    assert result.returncode == 2
    assert b"invalid --until value 'yesterday'" in result.stderr


# -- json-file ----------------------------------------------------------------------------

def test_json_file_has_docker_lines(moord):
    moord.moor("run", "--name", "j", "--log-driver", "json-file", "busybox", "sh", "-c", "echo hi; echo oops >&2")
    info = moord.inspect("j")

    entries = [json.loads(line) for line in Path(info["LogPath"]).read_text().splitlines()]

    assert sorted((entry["log"], entry["stream"]) for entry in entries) == [("hi\n", "stdout"), ("oops\n", "stderr")]
    assert all(entry["time"].endswith("Z") for entry in entries)


def test_json_file_read_by_moor_logs(moord):
    moord.moor("run", "--name", "j", "--log-driver", "json-file", "busybox", "sh", "-c", "seq 1 5")

    assert moord.logs("j") == b"1\n2\n3\n4\n5\n"


def test_json_file_resumes_without_duplicates(moord):
    moord.moor("run", "-d", "--name", "j", "--log-driver", "json-file", "busybox", "sh", "-c",
               'i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo "n=$i"; sleep 0.005; done')
    log_path = Path(moord.inspect("j")["LogPath"])
    wait_until(lambda: log_path.exists() and log_path.stat().st_size > 0, 30, message="first json lines")

    moord.kill9()
    moord.start()
    moord.wait_status("j", "exited", timeout=60)
    numbers = [int(json.loads(line)["log"][2:]) for line in log_path.read_text().splitlines()]

    assert numbers == list(range(1, 401))


# -- journald, syslog and none ---------------------------------------------------------

def test_journald_entry_has_container_fields(moord, socket_folder):
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(socket_folder / "journal.sock"))
    journal.settimeout(30)

    moord.moor("run", "--name", "jd", "--log-driver", "journald", "--log-opt",
               f"journald-socket={socket_folder}/journal.sock", "busybox", "echo", "to the journal")
    entry = journal.recv(65536)
    container_id = moord.inspect("jd")["Id"]
    journal.close()

    assert b"MESSAGE=to the journal\n" in entry
    assert f"CONTAINER_ID_FULL={container_id}\n".encode() in entry
    assert b"CONTAINER_NAME=jd\n" in entry


def test_journald_without_socket_rejected(moord, socket_folder):
    result = moord.moor("run", "--name", "jd", "--log-driver", "journald", "--log-opt",
                        f"journald-socket={socket_folder}/absent.sock", "busybox", "true", check=False)

    assert result.returncode == 125
    assert b"does not exist" in result.stderr


def test_syslog_unix_socket_receives_line(moord, socket_folder):
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(socket_folder / "log.sock"))
    sink.settimeout(30)

    moord.moor("run", "--name", "sl", "--log-driver", "syslog", "--log-opt",
               f"syslog-address=unix://{socket_folder}/log.sock", "busybox", "echo", "to syslog")
    message = sink.recv(65536)
    sink.close()

    assert message.startswith(b"<30>1 ")
    assert message.endswith(b" sl - - - to syslog")


def test_syslog_broken_sink_counts_drops(moord, socket_folder):
    moord.moor("run", "--name", "sl", "--log-driver", "syslog", "--log-opt",
               f"syslog-address=unix://{socket_folder}/absent.sock", "busybox", "sh", "-c", "seq 1 20")

    wait_until(lambda: moord.inspect("sl")["LogDriver"]["Dropped"] == 20, 30, message="20 dropped syslog messages")
    container_id = moord.inspect("sl")["Id"]

    assert moord.inspect("sl")["State"]["ExitCode"] == 0
    assert f"container {container_id}: log driver syslog:" in (moord.root / "moord.log").read_text()


def test_syslog_logs_command_names_driver(moord, socket_folder):
    moord.moor("run", "--name", "sl", "--log-driver", "syslog", "--log-opt",
               f"syslog-address=unix://{socket_folder}/absent.sock", "busybox", "true")

    result = moord.moor("logs", "sl", check=False)

    assert result.returncode == 5
    assert b"log driver syslog keeps no logs" in result.stderr


def test_none_driver_logs_says_no_logs(moord):
    moord.moor("run", "--name", "quiet", "--log-driver", "none", "busybox", "echo", "gone")

    result = moord.moor("logs", "quiet", check=False)

    assert result.returncode == 5
    assert b"log driver none, which keeps no logs" in result.stderr


def test_none_driver_stores_no_files(moord):
    moord.moor("run", "--name", "quiet", "--log-driver", "none", "busybox", "echo", "gone")

    folder = log_folder(moord, "quiet")

    assert not folder.exists() or list(folder.iterdir()) == []


# -- defaults from moord ------------------------------------------------------------------

def test_moord_flag_sets_default_driver(moord_factory):
    daemon = moord_factory("--log-driver", "json-file", "--log-opt", "max-size=2k")
    daemon.moor("run", "--name", "d", "busybox", "echo", "x")

    log_config = daemon.inspect("d")["HostConfig"]["LogConfig"]

    assert log_config == {"Type": "json-file", "Config": {"max-size": "2k"}}


def test_config_file_sets_default_driver(moord_factory, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[logging]\ndriver = "none"\n')
    daemon = moord_factory("--config", str(config))
    daemon.moor("run", "--name", "d", "busybox", "echo", "x")

    assert daemon.inspect("d")["LogDriver"]["Name"] == "none"


def test_run_flag_overrides_default_driver(moord_factory):
    daemon = moord_factory("--log-driver", "none")
    daemon.moor("run", "--name", "d", "--log-driver", "local", "busybox", "echo", "kept")

    assert daemon.logs("d") == b"kept\n"


def test_moord_rejects_unknown_default_driver(moord_factory, tmp_path):
    daemon = moord_factory("--log-driver", "gelf", start=False)
    args = [sys.executable, "-m", "supervisor.daemon", "--root", str(daemon.root), "--state", str(daemon.state),
            "--log-driver", "gelf"]

    result = subprocess.run(args, capture_output=True, cwd=REPO, timeout=60)

    assert result.returncode == 1
    assert b"unknown log driver 'gelf'" in result.stderr
