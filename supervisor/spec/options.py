"""Run-time options of a container, spelled as docker spells them, and their parsers."""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass

from shim.protocol import InvalidArgument

from .limits import RLIM_INFINITY, ULIMIT_TYPES, check_rlimit

VOLUME_FORM = "HOST:CONTAINER[:ro|rw]"
ULIMIT_FORM = "NAME=SOFT[:HARD], for example nofile=1024:4096"
MEMORY_FORM = "a number with an optional unit b, k, m or g, for example 512m"

# The smallest memory limit that docker accepts, so that a limit docker rejects is rejected here too.
MEMORY_MIN_BYTES = 6 * 1024 * 1024
_MEMORY = re.compile(r"([0-9]+)([bkmg]?)", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

# Linux HOST_NAME_MAX.  Each dot-separated label follows RFC 1123.
HOSTNAME_MAX_BYTES = 64
_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_LIMIT_NUMBER = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class RunOptions:
    """Options of one ``moor run``, as the client parsed them from its command line."""

    args: tuple[str, ...] = ()            # command after the image name, empty for the image Cmd
    entrypoint: tuple[str, ...] | None = None   # None for the image Entrypoint, () to reset it
    env: tuple[str, ...] = ()             # "KEY=VALUE" entries, already resolved by the client
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    read_only: bool = False
    volumes: tuple[str, ...] = ()         # raw "-v" strings
    ulimits: tuple[str, ...] = ()         # raw "--ulimit" strings
    memory: str | None = None             # raw "-m" string
    init: bool = False                    # run an init (tini) as PID 1 that reaps zombies and forwards signals

    def validate(self) -> None:
        """Parse every field and raise InvalidArgument on the first invalid one."""
        check_strings(self.args, "command")
        if self.entrypoint is not None:
            check_strings(self.entrypoint, "--entrypoint")
        check_strings(self.env, "-e")
        for entry in self.env:
            parse_env_entry(entry, "-e")

        if self.workdir is not None:
            clean_absolute_path(self.workdir, "-w")
        if self.user is not None:
            split_user(self.user)
        if self.hostname is not None:
            check_hostname(self.hostname, "--hostname")
        if not isinstance(self.read_only, bool):
            raise InvalidArgument(f"invalid --read-only {self.read_only!r}: expected true or false")
        if not isinstance(self.init, bool):
            raise InvalidArgument(f"invalid --init {self.init!r}: expected true or false")

        parse_volumes(self.volumes)
        parse_ulimits(self.ulimits)
        if self.memory is not None:
            parse_memory(self.memory)


def check_strings(values, where: str) -> None:
    """Reject anything but a sequence of strings without NUL characters."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (tuple, list)):
        raise InvalidArgument(
            f"invalid {where}: expected a sequence of strings, got {type(values).__name__} {values!r}")

    for value in values:
        if not isinstance(value, str):
            raise InvalidArgument(f"invalid {where}: {value!r} is not a string")
        if "\0" in value:
            raise InvalidArgument(
                f"invalid {where}: {value!r} contains a NUL character, which no program "
                f"argument, environment entry or path can carry")


def parse_env_entry(entry: str, where: str) -> tuple[str, str]:
    """Split a run-time ``KEY=VALUE`` entry on its first '=', rejecting a bare KEY."""
    key, sep, value = entry.partition("=")
    if not sep:
        raise InvalidArgument(
            f"invalid {where} entry {entry!r}: expected KEY=VALUE. The client must resolve a "
            f"bare KEY from its own environment before sending it")
    if not key:
        raise InvalidArgument(f"invalid {where} entry {entry!r}: the variable name before '=' is empty")
    return key, value


def clean_absolute_path(path: str, where: str) -> str:
    """Normalise an absolute container path so that '..' stops at '/', and reject a relative one."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidArgument(
            f"invalid {where} {path!r}: a container path must be absolute (start with '/')")
    if "\0" in path:
        raise InvalidArgument(f"invalid {where} {path!r}: the path contains a NUL character")

    # normpath keeps a leading "//", which POSIX leaves implementation-defined, but Linux reads it as "/".
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/")


def split_user(user: str) -> tuple[str, str | None]:
    """Split ``USER[:GROUP]`` into its parts, each a name or a number."""
    if not isinstance(user, str):
        raise InvalidArgument(f"invalid user {user!r}: expected a string such as 1000:1000 or app")
    name, sep, group = user.partition(":")
    bad_characters = any(c in user for c in "\0\n")
    if not name or (sep and not group) or ":" in group or bad_characters:
        raise InvalidArgument(
            f"invalid user {user!r}: expected USER or USER:GROUP, each a name or a number, "
            f"for example 1000:1000 or app")
    return name, (group if sep else None)


def check_hostname(hostname: str, where: str) -> None:
    """Reject a hostname that is not dot-separated RFC 1123 labels of at most 64 bytes in all."""
    labels = hostname.split(".") if isinstance(hostname, str) else [None]
    valid = all(isinstance(label, str) and _HOSTNAME_LABEL.fullmatch(label) for label in labels)
    if not valid or len(hostname.encode()) > HOSTNAME_MAX_BYTES:
        raise InvalidArgument(
            f"invalid {where} {hostname!r}: a hostname is at most {HOSTNAME_MAX_BYTES} "
            f"characters of letters, digits, '-' and '.', for example web-1")


def parse_volume(text: str) -> dict:
    """Parse a docker ``-v HOST:CONTAINER[:ro|rw]`` string into an OCI bind mount."""
    parts = text.split(":") if isinstance(text, str) else []
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidArgument(f"invalid volume {text!r}: expected the form {VOLUME_FORM}")
    host, container = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"

    if mode not in ("ro", "rw"):
        raise InvalidArgument(
            f"invalid volume {text!r}: unknown mode {mode!r}. Use ro or rw, as in {VOLUME_FORM}")
    source = _check_volume_source(host, text)
    destination = _check_volume_destination(container, text)

    return {
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": ["rbind", "rprivate", mode],
    }


def _check_volume_source(host: str, text: str) -> str:
    if not host.startswith("/"):
        raise InvalidArgument(
            f"invalid volume {text!r}: the host path {host!r} is not absolute. Named volumes "
            f"are not supported, so give an absolute host path as in {VOLUME_FORM}")
    if "\0" in host:
        raise InvalidArgument(f"invalid volume {text!r}: the host path contains a NUL character")
    if not os.path.exists(host):
        raise InvalidArgument(
            f"invalid volume {text!r}: the host path {host} does not exist. Create it first")
    return posixpath.normpath(host)


def _check_volume_destination(container: str, text: str) -> str:
    if not container.startswith("/"):
        raise InvalidArgument(
            f"invalid volume {text!r}: the container path {container!r} is not absolute")
    if ".." in container.split("/"):
        raise InvalidArgument(
            f"invalid volume {text!r}: the container path {container!r} contains '..'. "
            f"Give the path without '..'")

    destination = clean_absolute_path(container, "volume container path")
    if destination == "/":
        raise InvalidArgument(
            f"invalid volume {text!r}: the container path cannot be '/', because that would "
            f"replace the image's root filesystem")
    return destination


def parse_volumes(volumes) -> list[dict]:
    """Parse every ``-v`` string and reject two volumes at the same container path."""
    check_strings(volumes, "-v")
    mounts = [parse_volume(text) for text in volumes]

    seen: dict[str, str] = {}
    for text, mount in zip(volumes, mounts):
        destination = mount["destination"]
        if destination in seen:
            raise InvalidArgument(
                f"invalid volumes {seen[destination]!r} and {text!r}: both mount at "
                f"{destination}. Keep one of them")
        seen[destination] = text
    return mounts


def parse_ulimit(text: str) -> dict:
    """Parse a docker ``--ulimit NAME=SOFT[:HARD]`` string into an OCI rlimit entry."""
    name, sep, values = text.partition("=") if isinstance(text, str) else ("", "", "")
    if not sep or not name or not values:
        raise InvalidArgument(f"invalid ulimit {text!r}: expected {ULIMIT_FORM}")
    rlimit_type = ULIMIT_TYPES.get(name)
    if rlimit_type is None:
        known = ", ".join(sorted(ULIMIT_TYPES))
        raise InvalidArgument(f"invalid ulimit {text!r}: unknown limit {name!r}. Known limits: {known}")

    soft_text, sep, hard_text = values.partition(":")
    soft = _parse_limit_value(soft_text, text)
    hard = _parse_limit_value(hard_text, text) if sep else soft
    check_rlimit(rlimit_type, soft, hard, f"ulimit {text!r}")
    return {"type": rlimit_type, "soft": soft, "hard": hard}


def _parse_limit_value(value: str, text: str) -> int:
    if value in ("-1", "unlimited"):
        return RLIM_INFINITY
    if not _LIMIT_NUMBER.fullmatch(value) or int(value) > RLIM_INFINITY:
        raise InvalidArgument(
            f"invalid ulimit {text!r}: {value!r} is not a number. Use a decimal number, "
            f"or -1 or unlimited for no limit, as in {ULIMIT_FORM}")
    return int(value)


def parse_memory(text: str) -> int:
    """Parse docker's ``-m``/``--memory`` value (``512m``, ``1g``, ``65536k``) into bytes, in binary units."""
    match = _MEMORY.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidArgument(f"invalid memory limit {text!r}: expected {MEMORY_FORM}")
    limit = int(match.group(1)) * _MEMORY_UNITS[match.group(2).lower()]
    if limit < MEMORY_MIN_BYTES:
        raise InvalidArgument(f"invalid memory limit {text!r}: it is {limit} bytes, below the minimum of "
                              f"{MEMORY_MIN_BYTES // (1 << 20)}m; give 6m or more")
    if limit >= 1 << 63:
        raise InvalidArgument(f"invalid memory limit {text!r}: it does not fit in 63 bits; leave -m out "
                              "for no limit")
    return limit


def parse_ulimits(ulimits) -> list[dict]:
    """Parse every ``--ulimit`` string and reject a limit given twice."""
    check_strings(ulimits, "--ulimit")
    rlimits = [parse_ulimit(text) for text in ulimits]

    types = [rlimit["type"] for rlimit in rlimits]
    for rlimit_type in types:
        if types.count(rlimit_type) > 1:
            raise InvalidArgument(
                f"invalid ulimits {list(ulimits)!r}: {rlimit_type} is set more than once. Keep one")
    return rlimits
