"""moorage-stamp: an example Moorage plugin, installed as its own package.

It shows the three kinds of hooks:

* spec adjustment: each container gets the environment variable
  ``MOORAGE_STAMP`` (its name) and the annotation ``org.example.stamp``, and
  a container labelled ``stamp.deny=true`` is not allowed to start;
* observers: creates, starts, exits, removals and health results are
  appended as JSON lines to ``FOLDER/journal.jsonl``;
* configuration: ``[plugins.stamp]`` in ``/etc/moorage/config.toml``::

      [plugins.stamp]
      folder = "/var/lib/moorage-stamp"   # required
      variable = "MOORAGE_STAMP"          # optional
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from supervisor.hookspecs import hookimpl

__version__ = "0.2.0"


class StampPlugin:
    """Stamps containers and journals their lifecycle."""

    def __init__(self):
        self.folder: Path | None = None
        self.variable = "MOORAGE_STAMP"
        self.lock = threading.Lock()   # observers of different hooks may run in different threads

    @hookimpl
    def moorage_configure(self, options: dict) -> None:
        if "folder" not in options:
            raise ValueError('missing option "folder": set [plugins.stamp] folder = "/some/dir"')
        self.folder = Path(options["folder"])
        self.folder.mkdir(parents=True, exist_ok=True)
        self.variable = str(options.get("variable", self.variable))

    @hookimpl
    def moorage_adjust_spec(self, container_id: str, spec: dict, options: dict) -> None:
        if options.get("labels", {}).get("stamp.deny") == "true":
            raise PermissionError("containers labelled stamp.deny=true may not start")
        spec["process"].setdefault("env", []).append(f"{self.variable}={options['name']}")
        spec.setdefault("annotations", {})["org.example.stamp"] = options["name"]
        self._journal("adjusted", container_id)

    @hookimpl
    def moorage_release_spec(self, container_id: str) -> None:
        self._journal("released", container_id)

    @hookimpl
    def moorage_container_created(self, container_id: str, name: str, image: str) -> None:
        self._journal("created", container_id, name=name, image=image)

    @hookimpl
    def moorage_task_started(self, container_id: str, pid: int) -> None:
        self._journal("started", container_id, pid=pid)

    @hookimpl
    def moorage_task_exited(self, container_id: str, exit_code: int) -> None:
        self._journal("exited", container_id, exit_code=exit_code)

    @hookimpl
    def moorage_container_removed(self, container_id: str) -> None:
        self._journal("removed", container_id)

    @hookimpl
    def moorage_health_result(self, container_id: str, status: str) -> None:
        self._journal("health", container_id, status=status)

    def _journal(self, event: str, container_id: str, **details) -> None:
        line = json.dumps({"ts": time.time(), "event": event, "id": container_id, **details})
        with self.lock, open(self.folder / "journal.jsonl", "a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
