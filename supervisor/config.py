"""moord's configuration: defaults, ``/etc/moorage/config.toml`` and flags, validated once."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from shim.protocol import InvalidArgument

DEFAULT_CONFIG_FILE = Path("/etc/moorage/config.toml")
# Statically linked inits, which run in any image: Debian's tini, docker's and podman's.
INIT_CANDIDATES = ("/usr/bin/tini-static", "/usr/libexec/docker/docker-init", "/usr/bin/docker-init",
                   "/usr/libexec/podman/catatonit")
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
    plugin_timeout: float = 10.0
    plugins: dict = field(default_factory=dict)   # [plugins.NAME] tables: "enabled" and the plugin's options
    log_driver: str = "local"
    log_opts: dict = field(default_factory=dict)
    metrics_address: str = ""
    default_network: str = "bridge"           # what `moor run` uses without --network
    bridge_name: str = "moor0"                # interface of the default bridge network
    bridge_subnet: str = "172.28.0.0/16"      # subnet of the default bridge network
    nft_table: str = "moorage"                # moord's nftables table (family ip) for published ports
    port_backend: str = "auto"                # nft, iptables, or auto (nft where the nft command exists)
    cni_conf_dir: str = "/etc/cni/net.d"      # CNI network lists (*.conflist) usable as --network NAME
    cni_bin_dir: str = "/usr/lib/cni"         # CNI plugin binaries
    init_path: str = ""                       # static init for --init; "" finds tini-static or docker-init
    # Registries (HOST or HOST:PORT) that pull and push reach over plain HTTP without --insecure-registry.
    insecure_registries: tuple[str, ...] = ()

    def find_init(self) -> str | None:
        """Return the init program that ``--init`` mounts into containers, or None if there is none."""
        if self.init_path:
            if not os.access(self.init_path, os.X_OK):
                raise InvalidArgument(f"init_path {self.init_path!r} in moord's config is not an executable "
                                      "file: point it at a static init such as /usr/bin/tini-static")
            return self.init_path
        for candidate in INIT_CANDIDATES:
            if os.access(candidate, os.X_OK):
                return candidate
        return None

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
        from plugins.logdrivers import DRIVER_NAMES
        if self.log_driver not in DRIVER_NAMES:
            raise InvalidArgument(f"unknown log driver {self.log_driver!r}: use one of {', '.join(DRIVER_NAMES)}")
        if not isinstance(self.log_opts, dict):
            raise InvalidArgument("[logging] opts must be a table of KEY = \"VALUE\" pairs")
        if self.metrics_address:
            from plugins.prometheus import parse_address
            parse_address(self.metrics_address)
        for registry in self.insecure_registries:
            if not isinstance(registry, str) or not _REGISTRY_HOST.fullmatch(registry):
                raise InvalidArgument(f"invalid insecure registry {registry!r}: give HOST or HOST:PORT without "
                                      "a scheme or path, for example 127.0.0.1:5000")
        if len(str(self.state / "shims" / ("x" * 64) / "shim.sock")) > 107:
            raise InvalidArgument(f"state folder {self.state} is too long for unix socket paths; use a shorter one")
        if self.port_backend not in ("auto", "nft", "iptables"):
            raise InvalidArgument(f"invalid port_backend {self.port_backend!r}: use auto, nft or iptables")
        _check_plugins(self.plugins, self.plugin_timeout)
        return self


def _sections(data: dict, file: Path) -> dict:
    """Flatten ``[moord]`` (or top-level keys), ``[logging]`` and ``[metrics]`` into setting names."""
    data = dict(data)
    logging_table = data.pop("logging", {})
    metrics_table = data.pop("metrics", {})
    values = dict(data.get("moord", data))
    for key, name in (("driver", "log_driver"), ("opts", "log_opts"), ("max_size", "log_max_size"),
                      ("max_files", "log_max_files")):
        if key in logging_table:
            values[name] = logging_table.pop(key)
    if "address" in metrics_table:
        values["metrics_address"] = metrics_table.pop("address")
    leftover = [f"logging.{key}" for key in logging_table] + [f"metrics.{key}" for key in metrics_table]
    if leftover:
        raise InvalidArgument(f"unknown setting(s) {', '.join(leftover)} in {file}")
    return values


def load(path: Path | None, overrides: dict) -> DaemonConfig:
    """Merge the config file (if any) and the flags that were given, then validate."""
    values: dict = {}
    file = path or DEFAULT_CONFIG_FILE
    if file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"invalid config file {file}: {exc}") from None
        values.update(_sections(data, file))
        if "moord" in data and "plugins" in data:
            values["plugins"] = data["plugins"]
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


def _check_plugins(plugins, timeout) -> None:
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise InvalidArgument(f"invalid plugin_timeout {timeout!r}: give a number of seconds above 0")
    if not isinstance(plugins, dict):
        raise InvalidArgument("invalid plugins setting: use one [plugins.NAME] table per plugin")
    for name, table in plugins.items():
        if not isinstance(table, dict):
            raise InvalidArgument(f"invalid plugins.{name} = {table!r}: use a [plugins.{name}] table")
        if not isinstance(table.get("enabled", True), bool):
            raise InvalidArgument(f"invalid plugins.{name}.enabled = {table['enabled']!r}: use true or false")


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
