"""moord's configuration: defaults, ``/etc/moorage/config.toml`` and flags, validated once."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

from shim.protocol import InvalidArgument

DEFAULT_CONFIG_FILE = Path("/etc/moorage/config.toml")


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
    default_network: str = "bridge"           # what `moor run` uses without --network
    bridge_name: str = "moor0"                # interface of the default bridge network
    bridge_subnet: str = "172.28.0.0/16"      # subnet of the default bridge network
    nft_table: str = "moorage"                # moord's nftables table (family ip) for published ports
    cni_conf_dir: str = "/etc/cni/net.d"      # CNI network lists (*.conflist) usable as --network NAME
    cni_bin_dir: str = "/usr/lib/cni"         # CNI plugin binaries

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
    elif path is not None:
        raise InvalidArgument(f"config file {path} not found")
    values.update({key: value for key, value in overrides.items() if value is not None})

    known = {f.name: f.type for f in fields(DaemonConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InvalidArgument(f"unknown setting(s) {', '.join(unknown)} in {file}")
    config = DaemonConfig()
    for key in ("root", "state"):
        if key in values:
            values[key] = Path(values[key]).absolute()
    return replace(config, **values).validate()
