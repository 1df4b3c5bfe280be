"""contrib/example-plugin end to end: installed from its own pyproject.toml, loaded, acting on containers.

The package's metadata is made by setuptools' ``egg_info`` from its
pyproject.toml into a private folder that goes on moord's PYTHONPATH, so the
entry point is the package's own and the shared virtual environment is not
changed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import wait_until
from test_plugins_helpers import start_with_plugins

EXAMPLE = Path(__file__).resolve().parent.parent / "contrib" / "example-plugin"


@pytest.fixture
def stamp_site(tmp_path) -> Path:
    """Install moorage-stamp into a private site folder: its package plus its egg-info metadata."""
    source = tmp_path / "source"
    shutil.copytree(EXAMPLE, source)
    site = tmp_path / "site"
    site.mkdir()
    subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "egg_info", "--egg-base", str(site)],
                   cwd=source, check=True, capture_output=True, timeout=120)
    shutil.copytree(source / "moorage_stamp", site / "moorage_stamp")
    return site


@pytest.fixture
def stamped(moord_factory, stamp_site, tmp_path):
    """A moord with moorage-stamp installed and configured; returns (moord, journal path)."""
    folder = tmp_path / "stamp"
    moord = start_with_plugins(moord_factory, stamp_site, f'[plugins.stamp]\nfolder = "{folder}"\n')
    return moord, folder / "journal.jsonl"


def journal(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_example_plugin_listed(stamped):
    moord, _ = stamped

    plugins = {item["name"]: item for item in json.loads(moord.moor("plugin", "ls", "--format", "json").stdout)}

    assert plugins["stamp"]["version"] == "0.2.0"
    assert plugins["stamp"]["state"] == "enabled"
    assert plugins["stamp"]["source"] == "entry point moorage_stamp:StampPlugin"


def test_example_plugin_sets_variable(stamped):
    moord, _ = stamped

    result = moord.moor("run", "--rm", "--name", "stamped-one", "busybox", "sh", "-c", "echo $MOORAGE_STAMP")

    assert result.stdout == b"stamped-one\n"


def test_example_plugin_sets_annotation(stamped):
    moord, _ = stamped
    container_id = moord.moor("run", "-d", "--name", "annotated", "busybox", "sleep", "30").stdout.decode().strip()

    bundle = json.loads((moord.state / "shims" / container_id / "config.json").read_text())

    assert bundle["annotations"]["org.example.stamp"] == "annotated"
    moord.moor("rm", "-f", container_id)


def test_example_plugin_journals_lifecycle(stamped):
    moord, path = stamped

    container_id = moord.moor("run", "-d", "busybox", "sh", "-c", "exit 2").stdout.decode().strip()
    moord.wait_status(container_id, "exited")
    moord.moor("rm", container_id)
    wait_until(lambda: any(entry["event"] == "removed" for entry in journal(path)), message="the removal journaled")
    entries = [entry for entry in journal(path) if entry["id"] == container_id]
    # Observers run after the action on the plugin's queue, so "adjusted" (run inline by the
    # start) may come before or after "created"; the observed events keep their order.
    observed = [entry for entry in entries if entry["event"] != "adjusted"]

    assert [entry["event"] for entry in observed] == ["created", "started", "exited", "removed"]
    assert observed[2]["exit_code"] == 2
    assert [entry["event"] for entry in entries].count("adjusted") == 1


def test_example_plugin_denies_label(stamped):
    moord, path = stamped

    result = moord.moor("run", "-d", "--name", "denied", "-l", "stamp.deny=true", "busybox", "true", check=False)

    assert result.returncode == 125
    assert b"stamp.deny=true may not start" in result.stderr
    assert moord.inspect("denied")["State"]["Status"] == "created"
    assert "started" not in [entry["event"] for entry in journal(path)]


def test_example_plugin_without_folder_fails(moord_factory, stamp_site):
    moord = start_with_plugins(moord_factory, stamp_site)

    plugins = {item["name"]: item for item in json.loads(moord.moor("plugin", "ls", "--format", "json").stdout)}

    assert plugins["stamp"]["state"] == "failed"
    assert 'missing option "folder"' in plugins["stamp"]["error"]
