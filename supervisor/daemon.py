"""``moord``: start-up, restore, serving and a clean exit that leaves containers running."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import logging.handlers
import os
import resource
import signal
import sys
from pathlib import Path

import zmq
import zmq.asyncio

import netplugins
from shim.protocol import MoorError
from supervisor import config as daemon_config
from supervisor.api import Api
from supervisor.containers import Manager
from supervisor.events import EventBus
from supervisor.health import HealthMonitor
from supervisor.pluginhost import PluginHost
from supervisor.shims import Launcher
from supervisor.store import Store

log = logging.getLogger("supervisor")

VERSION = "0.1.0"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="moord", description="Moorage supervisor daemon.")
    parser.add_argument("--root", type=Path, help="folder for metadata, images and logs (default /var/lib/moorage)")
    parser.add_argument("--state", type=Path, help="folder for sockets and shim state (default /run/moorage)")
    parser.add_argument("--config", type=Path, help="config file (default /etc/moorage/config.toml if it exists)")
    parser.add_argument("--runtime", help="OCI runtime binary with runc's command line (default runc)")
    parser.add_argument("--snapshotter", choices=("auto", "overlayfs", "copy"),
                        help="how container roots are made: an overlayfs mount on the image, or a copy "
                             "(default auto: overlayfs where the kernel and filesystem allow it)")
    parser.add_argument("--spool-limit", type=int, help="bytes of output a shim keeps while moord is away")
    parser.add_argument("--log-max-size", type=int, help="bytes per container log file before rotation")
    parser.add_argument("--log-max-files", type=int, help="container log files kept, the current one included")
    parser.add_argument("--plugin-timeout", type=float,
                        help="seconds moord waits for a blocking plugin hook before it gives up (default 10)")
    parser.add_argument("--log-driver", help="logging driver of containers that set none: local, json-file, "
                                             "journald, syslog or none (default local)")
    parser.add_argument("--log-opt", action="append", metavar="KEY=VALUE",
                        help="option of the default logging driver, for example max-size=10m (repeatable)")
    parser.add_argument("--metrics-address", help="serve Prometheus metrics on HOST:PORT or a unix socket path "
                                                  "(default: off)")
    parser.add_argument("--default-network", help="network of `moor run` without --network (default bridge)")
    parser.add_argument("--bridge-name", help="interface name of the default bridge network (default moor0)")
    parser.add_argument("--bridge-subnet", help="subnet of the default bridge network (default 172.28.0.0/16)")
    parser.add_argument("--nft-table", help="nftables table (family ip) for published ports (default moorage)")
    parser.add_argument("--port-backend", choices=("auto", "nft", "iptables"),
                        help="what writes the published-port rules (default auto: nft, or iptables where nft "
                             "is missing)")
    parser.add_argument("--cni-conf-dir", help="folder of CNI network lists (default /etc/cni/net.d)")
    parser.add_argument("--cni-bin-dir", help="folder of CNI plugin binaries (default /usr/lib/cni)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="moord's own log level")
    parser.add_argument("--insecure-registry", action="append", metavar="HOST[:PORT]",
                        help="registry that pull and push reach over plain HTTP; may be repeated "
                             "(replaces [registries] insecure of the config file)")
    parser.add_argument("--version", action="version", version=f"moord {VERSION}")
    return parser.parse_args(argv)


def _configure_logging(config: daemon_config.DaemonConfig) -> None:
    handler = logging.handlers.RotatingFileHandler(config.root / "moord.log", maxBytes=10 * 1024 * 1024,
                                                   backupCount=3)
    stream = logging.StreamHandler(sys.stderr)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for h in (handler, stream):
        h.setFormatter(fmt)
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler, stream], force=True)


def _lock_state(config: daemon_config.DaemonConfig) -> int:
    """Take the state folder's lock so that two moords never share it."""
    fd = os.open(config.state / "moord.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise MoorError(f"another moord is already running with state folder {config.state}") from None
    return fd


def _raise_file_limit() -> dict[int, tuple[int, int]]:
    """Raise moord's own open-files limit; return the original limits for its children."""
    original = {resource.RLIMIT_NOFILE: resource.getrlimit(resource.RLIMIT_NOFILE)}
    soft, hard = original[resource.RLIMIT_NOFILE]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return original


async def _serve(config: daemon_config.DaemonConfig, rlimits) -> None:
    from supervisor.images import ImageStore

    context = zmq.asyncio.Context()
    store = Store(config.db_path)
    networks, net_plugins = netplugins.build(config)
    events = EventBus(context, config.events_socket)
    plugins = PluginHost(config, events, VERSION)
    await plugins.load(net_plugins)
    launcher = Launcher(config.state / "launcher.log", rlimits)
    await launcher.start()
    images = ImageStore(config.root, config.db_path, config.snapshotter)
    images.insecure_registries = frozenset(config.insecure_registries)
    manager = Manager(config, store, images, events, plugins, launcher, context,
                      nofile_limits=rlimits[resource.RLIMIT_NOFILE], networks=networks)
    images.container_roots = lambda: [manager.folder(cid) / "rootfs" for cid in list(manager.containers)]
    health = HealthMonitor(manager, plugins, events)
    await plugins.startup(config)

    await manager.restore()
    health.resume()
    metrics_server = await _start_metrics_server(config, manager)
    api = Api(manager, context, config.api_socket, VERSION)
    log.info("moord %s serving on %s (root %s)", VERSION, config.api_socket, config.root)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    server = loop.create_task(api.serve())
    await stop.wait()
    log.info("moord stopping; containers keep running")
    server.cancel()
    health.close()
    if metrics_server is not None:
        metrics_server.close()
    manager.close()
    await plugins.shutdown()
    await launcher.stop()
    events.close()
    api.socket.close(linger=0)
    store.close()
    # destroy, not term: a socket that some path forgot to close must not hang the exit.
    context.destroy(linger=0)


async def _start_metrics_server(config: daemon_config.DaemonConfig, manager: Manager):
    if not config.metrics_address:
        return None
    from plugins.prometheus import start_server
    try:
        return await start_server(config.metrics_address, manager)
    except OSError as exc:
        log.error("metrics endpoint on %s failed to start, moord serves without it: %s", config.metrics_address, exc)
        return None


def _log_opts(entries: list[str] | None) -> dict | None:
    from supervisor.cli import key_values

    return key_values(entries, "--log-opt") if entries else None


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    overrides = {"root": args.root, "state": args.state, "runtime": args.runtime, "snapshotter": args.snapshotter, "spool_limit": args.spool_limit,
                 "log_max_size": args.log_max_size, "log_max_files": args.log_max_files,
                 "log_level": args.log_level, "plugin_timeout": args.plugin_timeout,
                 "log_driver": args.log_driver, "metrics_address": args.metrics_address,
                 "default_network": args.default_network,
                 "bridge_name": args.bridge_name, "bridge_subnet": args.bridge_subnet, "nft_table": args.nft_table,
                 "port_backend": args.port_backend,
                 "cni_conf_dir": args.cni_conf_dir, "cni_bin_dir": args.cni_bin_dir,
                 "insecure_registries": args.insecure_registry}
    try:
        overrides["log_opts"] = _log_opts(args.log_opt)
        config = daemon_config.load(args.config, overrides)
        config.root.mkdir(parents=True, exist_ok=True, mode=0o711)
        config.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        _configure_logging(config)
        lock = _lock_state(config)
    except MoorError as exc:
        print(f"moord: {exc.message}", file=sys.stderr)
        return 1
    rlimits = _raise_file_limit()
    try:
        asyncio.run(_serve(config, rlimits))
    finally:
        os.close(lock)
    log.info("moord stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
