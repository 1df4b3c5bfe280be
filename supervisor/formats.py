"""Shapes of what moord returns for ``ps``, ``inspect`` and ``image ls``."""

from __future__ import annotations

import os
import re
import time
from datetime import datetime, timezone

from shim.protocol import InvalidArgument
from supervisor import health


def iso(ts: float) -> str:
    if not ts:
        return "0001-01-01T00:00:00Z"
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def summary(container) -> dict:
    record = container.record
    return {"id": record.id, "name": record.name, "image": record.image, "status": record.status,
            "command": record.spec.get("process", {}).get("args", []), "created": record.created,
            "started_at": record.started_at, "finished_at": record.finished_at,
            "exit_code": record.exit_code, "restart_count": record.restart_count, "pid": record.pid,
            "health": container.health.status if container.health is not None else ""}


def inspect(container, manager) -> dict:
    """Return a docker-like description of one container."""
    record = container.record
    process = record.spec.get("process", {})
    log_status = manager.plugins.hook.moorage_log_status(container_id=record.id) or {}
    return {
        "Id": record.id,
        "Name": record.name,
        "Created": iso(record.created),
        "Image": record.image,
        "ImageId": record.image_id,
        "State": {
            "Status": record.status,
            "Running": record.status == "running",
            "Restarting": record.status == "restarting",
            "OOMKilled": record.oom_killed,
            "Pid": record.pid,
            "ExitCode": record.exit_code if record.exit_code is not None else 0,
            "ExitSignal": record.exit_signal,
            "Error": record.exit_reason,
            "StartedAt": iso(record.started_at),
            "FinishedAt": iso(record.finished_at),
            "ManuallyStopped": record.manually_stopped,
            "LostOutputBytes": record.lost_bytes,
            **({"Health": container.health.to_docker()} if container.health is not None else {}),
        },
        "RestartCount": record.restart_count,
        "ExecIDs": sorted(container.execs) or None,
        "Config": {
            "Cmd": process.get("args", []),
            "Env": process.get("env", []),
            "WorkingDir": process.get("cwd", "/"),
            "User": process.get("user", {}),
            "Hostname": record.spec.get("hostname", ""),
            "Labels": record.labels,
            "StopSignal": record.options.get("stop_signal", "SIGTERM"),
            "Healthcheck": health.to_docker(record.options.get("health")),
            "Tty": bool(record.options.get("tty")),
            "OpenStdin": bool(record.options.get("open_stdin")),
            "ExposedPorts": record.options.get("exposed_ports", {}),
            "Volumes": {volume["destination"]: {} for volume in record.options.get("anonymous_volumes", [])},
        },
        "Mounts": [{"Type": "volume", "Name": volume["id"], "Source": volume["source"],
                    "Destination": volume["destination"], "RW": True}
                   for volume in record.options.get("anonymous_volumes", [])],
        "HostConfig": {
            "RestartPolicy": record.restart_policy,
            "AutoRemove": bool(record.options.get("auto_remove")),
            "ReadonlyRootfs": bool(record.spec.get("root", {}).get("readonly")),
            "Binds": list(record.options.get("volumes", [])),
            "LogConfig": {"Type": record.options.get("log_driver", "local"),
                          "Config": dict(record.options.get("log_opts") or {})},
        },
        "NetworkSettings": dict(record.network, Mode=(record.options.get("network") or {}).get("mode", "none")),
        "Shim": {"Pid": record.shim_pid, "Generation": record.task_gen,
                 "Socket": str(manager.shim_folder(record.id) / "shim.sock") if record.shim_pid else ""},
        "LogPath": log_status.get("Path", ""),
        "LogDriver": {"Name": log_status.get("Name", ""), "Dropped": log_status.get("Dropped", 0)},
        "Rootfs": record.spec.get("root", {}).get("path", ""),
    }


def image(image) -> dict:
    return {"name": image.name, "id": image.id, "digest": image.manifest_digest, "size": image.size,
            "created": image.created}


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h)$")


def since_timestamp(value, flag: str = "--since") -> str | None:
    """Turn ``--since`` or ``--until`` (RFC 3339, unix seconds, or a duration like 10m ago) into a log timestamp."""
    if value in (None, ""):
        return None
    from plugins.filelog import format_time
    text = str(value)
    match = _DURATION.match(text)
    if match:
        seconds = float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]
        return format_time(time.time() - seconds)
    try:
        return format_time(float(text))
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            f"invalid {flag} value {text!r}: use RFC 3339 (2026-12-04T10:00:00Z), unix seconds or 10m") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return format_time(parsed.timestamp())


def cgroup_version() -> int:
    return 2 if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else 1
