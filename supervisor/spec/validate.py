"""Checks of a complete OCI runtime config before it reaches the OCI runtime.

The checks cover the fields that Moorage and runc rely on, with messages that
name the field, so that a bad config fails here with one clear error instead
of deep inside the runtime.  Fields this module does not know are left to the
runtime, because the OCI runtime spec requires unknown properties to be ignored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from shim.protocol import InvalidArgument

from .limits import CAPABILITIES, RLIM_INFINITY, RLIMIT_TYPES, check_rlimit
from .options import check_hostname

UINT32_MAX = 2**32 - 1
NAMESPACE_TYPES = frozenset({"pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time"})
CAPABILITY_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")

_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
               int: "an integer", float: "a number", type(None): "null"}


def _invalid(field: str, problem: str) -> InvalidArgument:
    return InvalidArgument(f"invalid OCI config: {field} {problem}")


def _describe(value) -> str:
    """Name the JSON type of ``value`` and show the start of its JSON text."""
    kind = _JSON_TYPES.get(type(value), type(value).__name__)
    if value is None:
        return kind
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return f"{kind} ({text[:60]}{'...' if len(text) > 60 else ''})"


def _expect(value, kind: type, field: str, example: str = ""):
    """Return ``value`` if it has the JSON type ``kind``, where a bool never counts as an integer."""
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    hint = f", for example {example}" if example else ""
    raise _invalid(field, f"is {_describe(value)}, but it must be {_JSON_TYPES[kind]}{hint}")


def _optional(section: dict, key: str, kind: type, field: str, example: str = ""):
    if key not in section:
        return None
    return _expect(section[key], kind, field, example)


def _expect_uint(value, field: str, maximum: int) -> int:
    _expect(value, int, field)
    if not 0 <= value <= maximum:
        raise _invalid(field, f"is {value}, but it must be between 0 and {maximum}")
    return value


def _expect_string_list(value, field: str, example: str) -> list[str]:
    _expect(value, list, field, example)
    for index, item in enumerate(value):
        _expect(item, str, f"{field}[{index}]")
        if "\0" in item:
            raise _invalid(f"{field}[{index}]", f"{item!r} contains a NUL character")
    return value


def _expect_absolute(value, field: str) -> str:
    _expect(value, str, field)
    if not value.startswith("/"):
        raise _invalid(field, f"{value!r} is not an absolute path. Give a path that starts with '/'")
    return value


def validate_spec(spec, bundle: Path | None = None) -> None:
    """Validate a complete OCI runtime config for a Linux container, raising InvalidArgument.

    A relative ``root.path`` is taken relative to ``bundle``, the folder that
    contains config.json, and is invalid when ``bundle`` is None.
    """
    _expect(spec, dict, "the config", '{"ociVersion": "1.0.2", ...}')
    version = spec.get("ociVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise _invalid("ociVersion", f"is {version!r}, but it must be a 1.x version string such as \"1.0.2\"")

    _check_process(spec)
    _check_root(spec, bundle)
    _check_mounts(spec)
    _check_linux(spec)
    _check_hostname(spec)
    _check_annotations(spec)


def _check_process(spec: dict) -> None:
    if "process" not in spec:
        raise _invalid("process", 'is missing. Add a "process" object with "args", "cwd" and "user"')
    process = _expect(spec["process"], dict, "process")

    _optional(process, "terminal", bool, "process.terminal")
    size = _optional(process, "consoleSize", dict, "process.consoleSize", '{"height": 24, "width": 80}')
    if size is not None:
        for key in ("height", "width"):
            _expect_uint(size.get(key), f"process.consoleSize.{key}", 65535)
    _check_args(process)
    _check_env(process)
    if "cwd" not in process:
        raise _invalid("process.cwd", 'is missing. Set it to an absolute path such as "/"')
    _expect_absolute(process["cwd"], "process.cwd")

    _check_user(process)
    _check_capabilities(process)
    _check_rlimits(process)
    _optional(process, "noNewPrivileges", bool, "process.noNewPrivileges")
    score = _optional(process, "oomScoreAdj", int, "process.oomScoreAdj")
    if score is not None and not -1000 <= score <= 1000:
        raise _invalid("process.oomScoreAdj", f"is {score}, but it must be between -1000 and 1000")


def _check_args(process: dict) -> None:
    example = '["/bin/sh", "-c", "true"]'
    if "args" not in process:
        raise _invalid("process.args", f"is missing. Give the command as a list such as {example}")
    args = _expect_string_list(process["args"], "process.args", example)
    if not args:
        raise _invalid("process.args", f"is empty. Give the command to run, such as {example}")
    if not args[0]:
        raise _invalid("process.args[0]", "is an empty string. Give the program to run")


def _check_env(process: dict) -> None:
    if "env" not in process:
        return
    env = _expect_string_list(process["env"], "process.env", '["PATH=/usr/bin:/bin"]')
    for index, entry in enumerate(env):
        key, sep, _ = entry.partition("=")
        if not sep or not key:
            raise _invalid(f"process.env[{index}]",
                           f"{entry!r} is not KEY=VALUE. Write {entry}= for an empty value")


def _check_user(process: dict) -> None:
    if "user" not in process:
        raise _invalid("process.user", 'is missing. Add {"uid": 0, "gid": 0} to run as root')
    user = _expect(process["user"], dict, "process.user", '{"uid": 0, "gid": 0}')

    for key in ("uid", "gid"):
        if key not in user:
            raise _invalid(f"process.user.{key}", "is missing. Give a number such as 0")
        _expect_uint(user[key], f"process.user.{key}", UINT32_MAX - 1)
    if "umask" in user:
        _expect_uint(user["umask"], "process.user.umask", 0o777)

    gids = _optional(user, "additionalGids", list, "process.user.additionalGids", "[10, 20]") or []
    for index, gid in enumerate(gids):
        _expect_uint(gid, f"process.user.additionalGids[{index}]", UINT32_MAX - 1)


def _check_capabilities(process: dict) -> None:
    capabilities = _optional(process, "capabilities", dict, "process.capabilities")
    for key, names in (capabilities or {}).items():
        field = f"process.capabilities.{key}"
        if key not in CAPABILITY_SETS:
            raise _invalid(field, f"is not a capability set. Use one of {', '.join(CAPABILITY_SETS)}")
        _expect_string_list(names, field, '["CAP_CHOWN", "CAP_KILL"]')
        for index, name in enumerate(names):
            if name not in CAPABILITIES:
                raise _invalid(f"{field}[{index}]",
                               f"{name!r} is not a Linux capability name such as CAP_KILL")


def _check_rlimits(process: dict) -> None:
    rlimits = _optional(process, "rlimits", list, "process.rlimits") or []
    seen = set()
    for index, rlimit in enumerate(rlimits):
        field = f"process.rlimits[{index}]"
        _expect(rlimit, dict, field, '{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}')
        rlimit_type = _expect(rlimit.get("type"), str, f"{field}.type", '"RLIMIT_NOFILE"')
        if rlimit_type not in RLIMIT_TYPES:
            known = ", ".join(sorted(RLIMIT_TYPES))
            raise _invalid(f"{field}.type", f"{rlimit_type!r} is not a Linux rlimit. Use one of {known}")
        if rlimit_type in seen:
            raise _invalid(f"{field}.type", f"{rlimit_type} appears twice in process.rlimits. Keep one entry")
        seen.add(rlimit_type)

        soft = _expect_uint(rlimit.get("soft"), f"{field}.soft", RLIM_INFINITY)
        hard = _expect_uint(rlimit.get("hard"), f"{field}.hard", RLIM_INFINITY)
        check_rlimit(rlimit_type, soft, hard, f"OCI config: {field} ({rlimit_type})")


def _check_root(spec: dict, bundle: Path | None) -> None:
    if "root" not in spec:
        raise _invalid("root", 'is missing. Add {"path": "rootfs"} naming the root filesystem')
    root = _expect(spec["root"], dict, "root", '{"path": "rootfs"}')
    _optional(root, "readonly", bool, "root.readonly")
    path = _expect(root.get("path"), str, "root.path", '"rootfs"')
    if not path:
        raise _invalid("root.path", "is empty. Give the root filesystem folder")

    if not os.path.isabs(path):
        if bundle is None:
            raise _invalid("root.path", f"{path!r} is relative, but there is no bundle folder to "
                                        f"resolve it in. Give an absolute path")
        path = os.path.join(bundle, path)
    if not os.path.exists(path):
        raise _invalid("root.path",
                       f"{path} does not exist. Create the root filesystem there or fix the path")
    if not os.path.isdir(path):
        raise _invalid("root.path", f"{path} is not a directory")


def _check_mounts(spec: dict) -> None:
    mounts = _optional(spec, "mounts", list, "mounts") or []
    for index, mount in enumerate(mounts):
        field = f"mounts[{index}]"
        _expect(mount, dict, field, '{"destination": "/data", "type": "bind", "source": "/srv"}')
        if "destination" not in mount:
            raise _invalid(f"{field}.destination", "is missing. Give the absolute path inside the container")
        _expect_absolute(mount["destination"], f"{field}.destination")
        _optional(mount, "type", str, f"{field}.type", '"tmpfs"')
        _optional(mount, "source", str, f"{field}.source")
        if "options" in mount:
            _expect_string_list(mount["options"], f"{field}.options", '["nosuid", "ro"]')


def _check_linux(spec: dict) -> None:
    if "linux" not in spec:
        raise _invalid("linux", 'is missing, but a Linux container needs it. '
                                'Add a "linux" object with at least "namespaces"')
    linux = _expect(spec["linux"], dict, "linux", '{"namespaces": [{"type": "pid"}]}')

    namespaces = _namespace_types(linux)
    _optional(linux, "cgroupsPath", str, "linux.cgroupsPath", '"/moorage/ID"')
    for key in ("maskedPaths", "readonlyPaths"):
        for index, path in enumerate(_optional(linux, key, list, f"linux.{key}") or []):
            _expect_absolute(path, f"linux.{key}[{index}]")
        if linux.get(key) and "mount" not in namespaces:
            raise _invalid(f"linux.{key}",
                           'needs a mount namespace. Add {"type": "mount"} to linux.namespaces')
    _check_device_rules(linux)


def _check_device_rules(linux: dict) -> None:
    resources = _optional(linux, "resources", dict, "linux.resources") or {}
    for index, rule in enumerate(_optional(resources, "devices", list, "linux.resources.devices") or []):
        field = f"linux.resources.devices[{index}]"
        _expect(rule, dict, field, '{"allow": false, "access": "rwm"}')
        _expect(rule.get("allow"), bool, f"{field}.allow")
        access = _optional(rule, "access", str, f"{field}.access", '"rwm"')
        if access is not None and not set(access) <= set("rwm"):
            raise _invalid(f"{field}.access", f"{access!r} may contain only the letters r, w and m")


def _namespace_types(linux: dict) -> set[str]:
    types: set[str] = set()
    for index, namespace in enumerate(_optional(linux, "namespaces", list, "linux.namespaces") or []):
        field = f"linux.namespaces[{index}]"
        _expect(namespace, dict, field, '{"type": "pid"}')
        kind = namespace.get("type")
        if not isinstance(kind, str) or kind not in NAMESPACE_TYPES:
            known = ", ".join(sorted(NAMESPACE_TYPES))
            raise _invalid(f"{field}.type", f"{kind!r} is not a namespace type. Use one of {known}")
        if kind in types:
            raise _invalid(f"{field}.type", f"{kind} appears twice in linux.namespaces. Keep one entry")
        if "path" in namespace:
            _expect_absolute(namespace["path"], f"{field}.path")
        types.add(kind)
    return types


def _check_hostname(spec: dict) -> None:
    hostname = _optional(spec, "hostname", str, "hostname", '"web-1"')
    if not hostname:
        return
    check_hostname(hostname, "OCI config hostname")
    namespaces = [ns.get("type") for ns in spec["linux"].get("namespaces", [])]
    if "uts" not in namespaces:
        raise _invalid("hostname", "is set, but only a container with its own UTS namespace can "
                                   'have one. Add {"type": "uts"} to linux.namespaces')


def _check_annotations(spec: dict) -> None:
    annotations = _optional(spec, "annotations", dict, "annotations") or {}
    for key, value in annotations.items():
        _expect(value, str, f"annotations[{key!r}]")
