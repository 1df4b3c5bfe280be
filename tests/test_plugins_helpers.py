"""Make installed-looking plugins for a private moord: a module plus a dist-info with an entry point.

``importlib.metadata`` finds a distribution through any ``NAME-VERSION.dist-info``
folder on ``sys.path``, so a folder put on moord's PYTHONPATH acts as a
package installation without touching the shared virtual environment.
"""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

from shim import protocol
from supervisor.client import subscribe_events


def install_plugin(site: Path, name: str, source: str, version: str = "1.0", attribute: str = "Plugin") -> None:
    """Write module ``NAME`` with ``source`` and a dist-info whose entry point names ``NAME:attribute``."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{name}.py").write_text(textwrap.dedent(source))
    dist = site / f"{name}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(f"[moorage.plugins]\n{name} = {name}:{attribute}\n")


def start_with_plugins(moord_factory, site: Path, config: str = "", *extra: str):
    """Start a private moord that sees the plugins under ``site`` and uses ``config`` as its config file."""
    config_file = site.parent / "config.toml"
    config_file.write_text(textwrap.dedent(config))
    daemon = moord_factory("--config", str(config_file), *extra, start=False)
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{site}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(site)
    daemon.start(env=env)
    return daemon


def subscribed(moord):
    sub = subscribe_events(moord.state)
    time.sleep(0.2)  # a SUB socket drops what is published before its subscription reaches the PUB
    return sub


def next_event(sub, topic: str, timeout: float = 30.0) -> dict:
    """Return the next event with ``topic``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sub.poll(200):
            continue
        _, body = sub.recv_multipart()
        event = protocol.unpack(body)
        if event["topic"] == topic:
            return event
    raise AssertionError(f"no {topic} event within {timeout:g} s")


# A plugin that appends each observed call to the file named by its "record" option.
RECORDER = '''
    import json
    from supervisor.hookspecs import hookimpl

    class Plugin:
        def _write(self, *words):
            with open(self.record, "a") as handle:
                handle.write(" ".join(str(w) for w in words) + "\\n")

        @hookimpl
        def moorage_configure(self, options):
            self.record = options["record"]
            self._write("configure", json.dumps(options, sort_keys=True))

        @hookimpl
        def moorage_container_created(self, container_id, name):
            self._write("created", container_id)

        @hookimpl
        def moorage_task_started(self, container_id, pid):
            self._write("started", container_id)

        @hookimpl
        def moorage_task_exited(self, container_id, exit_code):
            self._write("exited", container_id, exit_code)

        @hookimpl
        def moorage_container_removed(self, container_id):
            self._write("removed", container_id)
'''
