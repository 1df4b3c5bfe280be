"""Logging drivers chosen per container, and the plugin that routes output records to them.

A container's driver and options come from ``moor run --log-driver NAME
--log-opt KEY=VALUE`` or, when it gives none, from the ``[logging]`` section of
moord's config.  moord stores them with the container and passes them to
``moorage_log_config`` at create and at restore, so ``LogRouter`` can send
each container's records to its driver.

Drivers:

* ``local``: moord's own line format in rotated, gzipped files (plugins.filelog).
* ``json-file``: docker's JSON lines (plugins.jsonfile).
* ``journald``: the native journal protocol (plugins.journald).
* ``syslog``: RFC 5424 messages on a unix or UDP socket (plugins.syslog).
* ``none``: output is dropped on purpose and never stored.

File drivers write from the event loop, a few kilobytes per call.  Socket
drivers only queue each message for a sender thread, so a slow or broken
sink costs moord nothing but the messages it drops, which are counted.
"""

from __future__ import annotations

import collections
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from shim.protocol import FailedPrecondition, InvalidArgument
from supervisor.hookspecs import hookimpl

log = logging.getLogger(__name__)

DEFAULT_DRIVER = "local"
DRIVER_NAMES = ("local", "json-file", "journald", "syslog", "none")
_SIZE = re.compile(r"^(\d+)([kmg]?)b?$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


def parse_size(key: str, value: str) -> int:
    """Turn a size option like ``10m``, ``512k`` or ``4096`` into bytes."""
    match = _SIZE.match(str(value).strip())
    if not match or int(match.group(1)) <= 0:
        raise InvalidArgument(f"invalid log option {key}={value!r}: give a size like 4096, 512k, 10m or 1g")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def parse_count(key: str, value: str) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise InvalidArgument(f"invalid log option {key}={value!r}: give a whole number of at least 1")
    return int(text)


def parse_bool(key: str, value: str) -> bool:
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0"):
        raise InvalidArgument(f"invalid log option {key}={value!r}: give true or false")
    return text in ("true", "1")


def check_opts(driver: str, opts: dict, known: tuple[str, ...]) -> None:
    unknown = sorted(set(opts) - set(known))
    if unknown:
        allowed = ", ".join(known) if known else "none"
        raise InvalidArgument(f"unknown log option(s) {', '.join(unknown)} for log driver {driver}; "
                              f"it takes: {allowed}")


class Driver:
    """A logging driver: where one kind of sink keeps each container's output.

    ``configure`` validates a container's options and raises InvalidArgument
    for a bad one; the other methods are only called for configured containers.
    """

    name = ""
    readable = False

    def configure(self, container_id: str, container_name: str, opts: dict) -> None:
        raise NotImplementedError

    def write(self, container_id: str, generation: int, records: list[dict]) -> None:
        raise NotImplementedError

    def position(self, container_id: str) -> tuple[int, int] | None:
        return None

    def read(self, container_id: str) -> Iterator[tuple[str, int, bytes, int, int]]:
        raise FailedPrecondition(f"log driver {self.name} keeps no logs that moord can read")

    def dropped(self, container_id: str) -> int:
        return 0

    def forget(self, container_id: str) -> None:
        """Drop what is kept in memory for a container (its files are removed by the router)."""

    def log_path(self, container_id: str) -> str:
        return ""

    def close(self) -> None:
        pass


class LocalDriver(Driver):
    """The ``local`` driver: plugins.filelog's format, rotated by size, rotated files gzipped."""

    name = "local"
    readable = True
    OPTS = ("max-size", "max-file", "compress")

    def __init__(self, root: Path, max_size: int, max_files: int, open_limit: int = 256):
        self.root = root
        self.max_size = max_size
        self.max_files = max_files
        self.open_limit = open_limit
        self.settings: dict[str, tuple[int, int, bool]] = {}
        self.files: collections.OrderedDict = collections.OrderedDict()

    def folder(self, container_id: str) -> Path:
        return self.root / "containers" / container_id / "logs"

    def configure(self, container_id: str, container_name: str, opts: dict) -> None:
        check_opts(self.name, opts, self.OPTS)
        max_size = parse_size("max-size", opts["max-size"]) if "max-size" in opts else self.max_size
        max_files = parse_count("max-file", opts["max-file"]) if "max-file" in opts else self.max_files
        compress = parse_bool("compress", opts["compress"]) if "compress" in opts else True
        self.settings[container_id] = (max_size, max_files, compress)

    def _file(self, container_id: str):
        from plugins.filelog import LogFile

        handle = self.files.get(container_id)
        if handle is None:
            max_size, max_files, compress = self.settings.get(container_id, (self.max_size, self.max_files, True))
            handle = LogFile(self.folder(container_id), max_size, max_files, compress)
            self.files[container_id] = handle
            if len(self.files) > self.open_limit:
                self.files.popitem(last=False)[1].close()
        self.files.move_to_end(container_id)
        return handle

    def write(self, container_id: str, generation: int, records: list[dict]) -> None:
        from plugins.filelog import encode_record

        handle = self._file(container_id)
        for record in records:
            handle.write(encode_record(generation, record))

    def position(self, container_id: str) -> tuple[int, int] | None:
        from plugins.filelog import last_position, log_files

        return last_position(log_files(self.folder(container_id)))

    def read(self, container_id: str):
        from plugins.filelog import log_files, read_lines

        return read_lines(log_files(self.folder(container_id)))

    def forget(self, container_id: str) -> None:
        handle = self.files.pop(container_id, None)
        if handle is not None:
            handle.close()
        self.settings.pop(container_id, None)

    def log_path(self, container_id: str) -> str:
        return str(self.folder(container_id) / "container.log")

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()
        self.files.clear()


class NoneDriver(Driver):
    """The ``none`` driver: output goes nowhere, on purpose, and is not counted as dropped."""

    name = "none"

    def configure(self, container_id: str, container_name: str, opts: dict) -> None:
        check_opts(self.name, opts, ())

    def write(self, container_id: str, generation: int, records: list[dict]) -> None:
        pass

    def read(self, container_id: str):
        raise FailedPrecondition("this container uses log driver none, which keeps no logs; "
                                 "run it with another --log-driver (local or json-file) to read them")


class LogRouter:
    """Plugin that sends each container's output records to the driver it was created with."""

    name = "logging"

    def __init__(self, root: Path, default_driver: str = DEFAULT_DRIVER, default_opts: dict | None = None,
                 max_size: int = 20 * 1024 * 1024, max_files: int = 5):
        from plugins.journald import JournaldDriver
        from plugins.jsonfile import JsonFileDriver
        from plugins.syslog import SyslogDriver

        self.root = root
        self.drivers: dict[str, Driver] = {
            "local": LocalDriver(root, max_size, max_files),
            "json-file": JsonFileDriver(root, max_size, max_files),
            "journald": JournaldDriver(),
            "syslog": SyslogDriver(),
            "none": NoneDriver(),
        }
        self.default_driver = self.driver(default_driver).name
        self.default_opts = dict(default_opts or {})
        self.routes: dict[str, Driver] = {}
        self.write_failures: dict[str, int] = {}

    def driver(self, name: str) -> Driver:
        driver = self.drivers.get(name)
        if driver is None:
            raise InvalidArgument(f"unknown log driver {name!r}: use one of {', '.join(self.drivers)}")
        return driver

    def _route(self, container_id: str) -> Driver:
        route = self.routes.get(container_id)
        if route is None:
            # A container that moord did not configure (made by an older moord) keeps local files.
            route = self.drivers[DEFAULT_DRIVER]
            self.routes[container_id] = route
        return route

    @hookimpl
    def moorage_log_config(self, container_id: str, container_name: str, driver: str, opts: dict) -> None:
        chosen = self.driver(driver)
        chosen.configure(container_id, container_name, {str(k): str(v) for k, v in opts.items()})
        self.routes[container_id] = chosen
        log.debug("container %s logs through driver %s", container_id, chosen.name)

    @hookimpl
    def moorage_container_output(self, container_id: str, generation: int, records: list[dict]) -> None:
        route = self._route(container_id)
        try:
            route.write(container_id, generation, records)
        except OSError as exc:
            # A full or failing disk must not stop the container's output, so the records are counted as dropped.
            total = self.write_failures.get(container_id, 0) + len(records)
            self.write_failures[container_id] = total
            log.error("container %s: log driver %s failed to write %d records (%d dropped so far): %s",
                      container_id, route.name, len(records), total, exc)

    @hookimpl
    def moorage_output_position(self, container_id: str):
        return self._route(container_id).position(container_id)

    @hookimpl
    def moorage_read_logs(self, container_id: str):
        return self._route(container_id).read(container_id)

    @hookimpl
    def moorage_log_status(self, container_id: str) -> dict:
        route = self._route(container_id)
        dropped = route.dropped(container_id) + self.write_failures.get(container_id, 0)
        return {"Name": route.name, "Dropped": dropped, "Path": route.log_path(container_id)}

    @hookimpl
    def moorage_container_removed(self, container_id: str) -> None:
        route = self.routes.pop(container_id, None)
        self.write_failures.pop(container_id, None)
        if route is not None:
            route.forget(container_id)
        shutil.rmtree(self.root / "containers" / container_id / "logs", ignore_errors=True)

    @hookimpl
    def moorage_shutdown(self) -> None:
        for driver in self.drivers.values():
            driver.close()
