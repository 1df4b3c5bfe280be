"""Health checks: a command run in the container through the shim's exec, on an interval.

The check comes from the image config's ``Healthcheck`` or from the
``--health-*`` options of ``moor run``; options override the image field by
field.  A check passes when its command exits with 0.  The status is:

* ``starting`` from each start of the task until the first pass.  Failures
  during the start period do not count;
* ``healthy`` after a pass;
* ``unhealthy`` after ``retries`` failures in a row.

Each change of status is published as a ``task.health_status`` event, and
every result goes to the plugins' ``moorage_health_result`` hook.  On
``unhealthy``, ``on_failure`` decides: ``none`` (only report), ``kill``
(SIGKILL, then the restart policy applies), ``stop`` (as ``moor stop``) or
``restart`` (stop, then start again).  The status is kept in the
container's folder, so checks resume where they were after moord restarts.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from shim import protocol
from shim.protocol import InvalidArgument, MoorError

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
LOG_ENTRIES = 5
OUTPUT_BYTES = 4096
ON_FAILURE = ("none", "kill", "stop", "restart")

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


# -- configuration -----------------------------------------------------------

def parse_duration(value, option: str) -> float:
    """Turn ``30s``, ``1m30s``, ``500ms`` or a number of seconds into seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value and _DURATION_PART.sub("", value) == "":
        seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(value))
    elif isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        raise InvalidArgument(f"invalid {option} {value!r}: give a duration such as 30s, 1m30s or 500ms")
    if seconds < 0:
        raise InvalidArgument(f"invalid {option} {value!r}: a duration cannot be negative")
    return seconds


def _test_from_image(test) -> list[str] | None:
    """Return the image's check as a command, [] for NONE, or None when the image sets no check."""
    if not test:
        return None
    kind, args = test[0], list(test[1:])
    if kind == "NONE":
        return []
    if kind == "CMD" and args:
        return args
    if kind == "CMD-SHELL" and len(args) == 1:
        return ["/bin/sh", "-c", args[0]]
    raise InvalidArgument(f"invalid Healthcheck.Test {test!r} in the image config: expected NONE, "
                          "CMD with arguments, or CMD-SHELL with one command line")


def resolve(image_check: dict | None, options: dict | None) -> dict | None:
    """Merge the image's ``Healthcheck`` with the run options; return the stored check or None.

    Image durations are nanoseconds (0 means the default); option durations
    are strings such as ``10s``.  The result has ``test`` (the command to
    exec), ``interval``, ``timeout``, ``start_period`` (seconds), ``retries``
    and ``on_failure``.
    """
    image_check = image_check or {}
    options = options or {}
    if options.get("disabled"):
        return None
    test = _test_from_image(image_check.get("Test"))
    if options.get("cmd") is not None:
        command = options["cmd"]
        if not isinstance(command, str) or not command.strip():
            raise InvalidArgument(f"invalid --health-cmd {command!r}: give a command line, or use --no-healthcheck")
        test = [] if command == "NONE" else ["/bin/sh", "-c", command]
    if not test:
        return None

    check = {"test": test,
             "interval": (image_check.get("Interval") or 0) / 1e9 or DEFAULT_INTERVAL,
             "timeout": (image_check.get("Timeout") or 0) / 1e9 or DEFAULT_TIMEOUT,
             "start_period": (image_check.get("StartPeriod") or 0) / 1e9,
             "retries": image_check.get("Retries") or DEFAULT_RETRIES}
    for key in ("interval", "timeout", "start_period"):
        if options.get(key) is not None:
            check[key] = parse_duration(options[key], "--health-" + key.replace("_", "-"))
    if options.get("retries") is not None:
        check["retries"] = options["retries"]
    check["on_failure"] = options.get("on_failure") or "none"
    _validate(check)
    return check


def _validate(check: dict) -> None:
    for key in ("interval", "timeout"):
        if check[key] < 0.001:
            raise InvalidArgument(f"invalid --health-{key} {check[key]:g} s: it must be at least 1ms")
    retries = check["retries"]
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 1:
        raise InvalidArgument(f"invalid --health-retries {retries!r}: give a whole number of at least 1")
    if check["on_failure"] not in ON_FAILURE:
        raise InvalidArgument(f"invalid --health-on-failure {check['on_failure']!r}: use {', '.join(ON_FAILURE)}")


def to_docker(check: dict | None) -> dict | None:
    """Return the check as docker's ``Config.Healthcheck`` spells it (durations in nanoseconds)."""
    if not check:
        return None
    return {"Test": ["CMD", *check["test"]], "Interval": int(check["interval"] * 1e9),
            "Timeout": int(check["timeout"] * 1e9), "StartPeriod": int(check["start_period"] * 1e9),
            "Retries": check["retries"], "OnFailure": check["on_failure"]}


# -- state ----------------------------------------------------------------------

@dataclass
class HealthState:
    """The health of one container's current task."""

    status: str = "starting"
    failing_streak: int = 0
    log: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LOG_ENTRIES))

    def to_docker(self) -> dict:
        return {"Status": self.status, "FailingStreak": self.failing_streak, "Log": list(self.log)}

    def save(self, path: Path) -> None:
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.to_docker()))
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: Path) -> "HealthState":
        try:
            data = json.loads(path.read_text())
            return cls(data["Status"], data["FailingStreak"], collections.deque(data["Log"], maxlen=LOG_ENTRIES))
        except (OSError, ValueError, KeyError, TypeError):
            return cls()


# -- the monitor --------------------------------------------------------------------

class HealthMonitor:
    """Runs the checks of every running container that has one."""

    def __init__(self, manager, plugins, events):
        self.manager = manager
        self.plugins = plugins
        self.events = events
        self.tasks: dict[str, asyncio.Task] = {}
        events.listeners.append(self._on_event)

    def _path(self, container_id: str) -> Path:
        return self.manager.folder(container_id) / "health.json"

    def _on_event(self, envelope: dict) -> None:
        topic, container_id = envelope["topic"], envelope["id"]
        if topic == protocol.TOPIC_TASK_START:
            container = self.manager.containers.get(container_id)
            if container is not None and container.record.options.get("health"):
                container.health = HealthState()
                self._start(container)
        elif topic in (protocol.TOPIC_TASK_EXIT, protocol.TOPIC_CONTAINER_DELETE):
            self._stop(container_id)

    def resume(self) -> None:
        """Start checking running containers after moord restarted, from their saved status."""
        for container in self.manager.containers.values():
            if container.record.status == "running" and container.record.options.get("health"):
                container.health = HealthState.load(self._path(container.id))
                log.info("container %s: resuming health checks (%s)", container.id, container.health.status)
                self._start(container)

    def _start(self, container) -> None:
        self._stop(container.id)
        self.tasks[container.id] = asyncio.get_running_loop().create_task(self._run(container))

    def _stop(self, container_id: str) -> None:
        task = self.tasks.pop(container_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()

    async def _run(self, container) -> None:
        try:
            await self._check_while_running(container)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("container %s: health checks stopped by an internal error", container.id)

    async def _check_while_running(self, container) -> None:
        check = container.record.options["health"]
        while container.record.status == "running":
            await asyncio.sleep(check["interval"])
            try:
                result = await self._probe(container, check)
            except MoorError as exc:
                # The task is stopping or its shim is away; the exit event ends this loop.
                log.info("container %s: health check not run: %s", container.id, exc.message)
                continue
            if self._record(container, check, result) and check["on_failure"] != "none":
                # The action ends this task (stop and restart cancel it), so it runs in its own.
                asyncio.get_running_loop().create_task(self._act(container, check["on_failure"]))
                return

    async def _probe(self, container, check: dict) -> dict:
        """Run the check once through the shim's exec; return a docker-style log entry."""
        started = time.time()
        try:
            session = await self.manager.exec_start(container, {"args": list(check["test"])})
        except MoorError as exc:
            if container.record.status != "running" or container.shim is None:
                raise
            return {"Start": _iso(started), "End": _iso(time.time()), "ExitCode": -1,
                    "Output": f"health check could not run: {exc.message}"}
        output = bytearray()
        try:
            code = await asyncio.wait_for(self._collect(session, output), check["timeout"])
        except asyncio.TimeoutError:
            code = -1
            output[:] = f"health check timed out after {check['timeout']:g} s".encode()
            await self._kill_exec(container, session.exec_id)
        finally:
            container.execs.pop(session.exec_id, None)
        return {"Start": _iso(started), "End": _iso(time.time()), "ExitCode": code,
                "Output": bytes(output[:OUTPUT_BYTES]).decode(errors="replace")}

    @staticmethod
    async def _collect(session, output: bytearray) -> int:
        while True:
            item = await session.queue.get()
            if item[0] == "output":
                if len(output) < OUTPUT_BYTES:
                    output += item[2]
            else:
                return item[1]

    @staticmethod
    async def _kill_exec(container, exec_id: str) -> None:
        if container.shim is None:
            return
        try:
            await container.shim.call("kill", signal=int(signal.SIGKILL), exec=exec_id)
        except MoorError as exc:
            log.warning("container %s: could not kill timed-out health check %s: %s", container.id, exec_id,
                        exc.message)

    def _record(self, container, check: dict, result: dict) -> bool:
        """Apply one result; return True when the container just became unhealthy."""
        health = container.health
        previous = health.status
        in_start_period = time.time() - container.record.started_at < check["start_period"]
        if result["ExitCode"] == 0:
            health.status, health.failing_streak = "healthy", 0
        elif not (in_start_period and health.status == "starting"):
            health.failing_streak += 1
            if health.failing_streak >= check["retries"]:
                health.status = "unhealthy"
        health.log.append(result)
        self._save(container, health)

        self.plugins.notify("moorage_health_result", container.id, status=health.status,
                            exit_code=result["ExitCode"], output=result["Output"],
                            failing_streak=health.failing_streak)
        if health.status == previous:
            return False
        log.info("container %s: health %s -> %s", container.id, previous, health.status)
        self.events.publish(protocol.TOPIC_TASK_HEALTH_STATUS, container.id, name=container.record.name,
                            status=health.status, failing_streak=health.failing_streak)
        return health.status == "unhealthy"

    def _save(self, container, health: HealthState) -> None:
        try:
            health.save(self._path(container.id))
        except OSError as exc:
            log.error("container %s: could not save its health status: %s", container.id, exc)

    async def _act(self, container, action: str) -> None:
        """Carry out ``--health-on-failure`` for a container that became unhealthy."""
        if container.record.status != "running":
            return
        log.warning("container %s is unhealthy; health-on-failure is %s", container.id, action)
        try:
            if action == "kill":
                await self.manager._signal(container, signal.SIGKILL, all_processes=True)
            elif action == "stop":
                await self.manager.stop(container)
            elif action == "restart":
                await self._restart(container)
        except MoorError as exc:
            log.error("container %s: health-on-failure %s failed: %s", container.id, action, exc.message)

    async def _restart(self, container) -> None:
        await self.manager.stop(container)
        record = container.record
        record.manually_stopped = False
        record.restart_count += 1
        await self.manager.start(container, by_user=False)
        self.events.publish(protocol.TOPIC_TASK_RESTART, container.id, name=record.name,
                            restart_count=record.restart_count, reason="unhealthy")


def _iso(ts: float) -> str:
    from supervisor.formats import iso
    return iso(ts)
