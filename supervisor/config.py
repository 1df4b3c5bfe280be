"""moord's configuration: defaults, ``/etc/moorage/config.toml`` and flags, validated once."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

from shim.protocol import InvalidArgument

DEFAULT_CONFIG_FILE = Path("/etc/moorage/config.toml")
_REGISTRY_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


@dataclass(frozen=True)
class DaemonConfig:
    """Settings of one moord instance; every one is also a moord flag."""

    root: Path = Path("/var/lib/moorage")
    state: Path = Path("/run/moorage")
    runtime: str = "runc"
    snapshotter: str = "auto"
    spool_limit: int = 256 * 1024 * 1024
    log_max_size: int = 20 * 1024 * 1024
    log_max_files: int = 5
    log_level: str = "info"
    # Registries (HOST or HOST:PORT) that pull and push reach over plain HTTP without --insecure-registry.
    insecure_registries: tuple[str, ...] = ()

    @property
    def api_socket(self) -> Path:
        return self.state / "moord.sock"

    @property
    def events_socket(self) -> Path:
        return self.state / "events.sock"

    @property
    def db_path(self) -> Path:
        return self.root / "moorage.db"

    def validate(self) -> "DaemonConfig":
        if self.snapshotter not in ("auto", "overlayfs", "copy"):
            raise InvalidArgument(f"invalid snapshotter {self.snapshotter!r}: use auto, overlayfs or copy")
        if self.spool_limit < 1024 * 1024:
            raise InvalidArgument(f"spool_limit {self.spool_limit} is too small: give at least 1048576 bytes")
        if self.log_max_size < 1024 or self.log_max_files < 1:
            raise InvalidArgument("log_max_size must be at least 1024 bytes and log_max_files at least 1")
        for registry in self.insecure_registries:
            if not isinstance(registry, str) or not _REGISTRY_HOST.fullmatch(registry):
                raise InvalidArgument(f"invalid insecure registry {registry!r}: give HOST or HOST:PORT without "
                                      "a scheme or path, for example 127.0.0.1:5000")
        if len(str(self.state / "shims" / ("x" * 64) / "shim.sock")) > 107:
            raise InvalidArgument(f"state folder {self.state} is too long for unix socket paths; use a shorter one")
        return self


def load(path: Path | None, overrides: dict) -> DaemonConfig:
    """Merge the config file (if any) and the flags that were given, then validate."""
    values: dict = {}
    file = path or DEFAULT_CONFIG_FILE
    if file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"invalid config file {file}: {exc}") from None
        values.update(data.get("moord", data))
        values.pop("registries", None)
        values.update(_registry_settings(data.get("registries"), file))
    elif path is not None:
        raise InvalidArgument(f"config file {path} not found")
    values.update({key: value for key, value in overrides.items() if value is not None})

    known = {f.name: f.type for f in fields(DaemonConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InvalidArgument(f"unknown setting(s) {', '.join(unknown)} in {file}")
    config = DaemonConfig()
    if "insecure_registries" in values:
        values["insecure_registries"] = tuple(values["insecure_registries"])
    for key in ("root", "state"):
        if key in values:
            values[key] = Path(values[key]).absolute()
    return replace(config, **values).validate()


def _registry_settings(table, file: Path) -> dict:
    """Return the settings of the config file's ``[registries]`` table: ``insecure = ["HOST:PORT", ...]``."""
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise InvalidArgument(f"invalid [registries] in {file}: expected a table such as "
                              '[registries] insecure = ["127.0.0.1:5000"]')
    unknown = sorted(set(table) - {"insecure"})
    if unknown:
        raise InvalidArgument(f"unknown setting(s) {', '.join(unknown)} in [registries] of {file}; "
                              "the table knows only insecure")
    insecure = table.get("insecure", [])
    if not isinstance(insecure, list):
        raise InvalidArgument(f"invalid [registries] insecure in {file}: expected a list of HOST:PORT strings")
    return {"insecure_registries": tuple(insecure)}
