"""Container registry and lifecycle: create, start, stop, kill, exec, remove, restore.

Each container has at most one task at a time: a shim running one OCI
container.  ``start`` spawns a shim (which runs ``runc create``) and requests
that the shim start it. The task ends when the shim reports the init's exit, after which
moord deletes the task and the shim exits.  A restart is a new task with the
next generation number.

State machine of ``ContainerRecord.status``::

    created --start--> running --exit--> exited --start--> running
                          |                 ^
                          +--restart wait---+ (status "restarting" while waiting)

Every transition goes through ``_transition``, which checks it, saves the
record and publishes the event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shutil
import signal as signals
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq.asyncio

from shim import protocol
from shim.protocol import (AlreadyExists, FailedPrecondition, InvalidArgument, MoorError, NotFound,
                           StartFailed, Unavailable)
from shim.netns import has_new_network_namespace
from shim.service import ShimConfig
from supervisor import health, names, restart
from supervisor.config import DaemonConfig
from supervisor.pluginhost import PluginFailure
from supervisor.events import EventBus
from supervisor.images import volumes as image_volumes
from supervisor.shims import Launcher, ShimClient, process_start_time
from supervisor.store import ContainerRecord, Store

log = logging.getLogger(__name__)

_ALLOWED = {
    "created": {"running", "exited", "removing"},
    "running": {"exited", "removing"},
    "exited": {"running", "restarting", "removing"},
    "restarting": {"running", "exited", "removing"},
    "removing": set(),
}
VANISHED_EXIT_CODE = 255
# Seconds that `moor run -i/-t` has to attach to the shim before the start fails.
ATTACH_TIMEOUT = 60


@dataclass
class ExecSession:
    """An extra process in a running container and the client following it."""

    exec_id: str
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    pid: int = 0
    exit_code: int | None = None
    # The exit can arrive before exec_start has published task.exec.started;
    # its event then waits here, so that events keep their order.
    announced: bool = False
    held_exit_event: dict | None = None
    # An interactive exec's client follows it through the shim; moord only lists it while it runs.
    interactive: bool = False


class Container:
    """A container's record plus what moord keeps only in memory."""

    def __init__(self, record: ContainerRecord):
        self.record = record
        self.shim: ShimClient | None = None
        self.lock = asyncio.Lock()
        self.task_lock = asyncio.Lock()
        self.remove_lock = asyncio.Lock()
        self.exit_event = asyncio.Event()
        self.changed = asyncio.Event()
        self.listeners: set[asyncio.Queue] = set()
        self.execs: dict[str, ExecSession] = {}
        self.restart_handle: asyncio.TimerHandle | None = None
        # What the current shim supports beyond the first protocol release, from its state.
        self.shim_features: frozenset[str] = frozenset()
        self.failures_in_a_row = 0
        self.stopping = False
        self.removing = False
        self.start_gate = asyncio.Event()  # cleared while _start_task waits for the shim
        self.start_gate.set()
        self.health = None   # supervisor.health.HealthState while the task has a health check

    @property
    def id(self) -> str:
        return self.record.id

    def __repr__(self) -> str:
        return f"<Container {self.record.name} {self.id[:12]} {self.record.status}>"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class Manager:
    """Owns every container of one moord and their shims."""

    def __init__(self, config: DaemonConfig, store: Store, images, events: EventBus, plugins,
                 launcher: Launcher, context: zmq.asyncio.Context, nofile_limits: tuple[int, int] | None = None,
                 networks=None):
        self.config = config
        self.networks = networks
        self.nofile_limits = nofile_limits
        self.store = store
        self.images = images
        self.events = events
        self.plugins = plugins
        self.launcher = launcher
        self.context = context
        self.containers: dict[str, Container] = {}
        # Shims of removed containers whose cleanup is under way (see _clear_remains).
        self.retiring: dict[str, ShimClient] = {}
        self.boot_id = _boot_id()

    # -- lookups ------------------------------------------------------------

    def get(self, ref: str) -> Container:
        """Find a container by full id, unique id prefix or name."""
        names.check_ref(ref)
        if ref in self.containers:
            return self.containers[ref]
        for container in self.containers.values():
            if container.record.name == ref:
                return container
        matches = [c for c in self.containers.values() if c.id.startswith(ref)] if len(ref) >= 3 else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"container id prefix {ref!r} is ambiguous: give more characters")
        raise NotFound(f"no such container: {ref} (see `moor ps -a`)")

    def folder(self, container_id: str) -> Path:
        return self.config.root / "containers" / container_id

    def shim_folder(self, container_id: str) -> Path:
        return self.config.state / "shims" / container_id

    # -- state machine --------------------------------------------------------

    def _transition(self, container: Container, status: str, topic: str | None = None, **payload) -> None:
        current = container.record.status
        if status != current and status not in _ALLOWED[current]:
            raise FailedPrecondition(f"container {container.record.name} cannot go from {current} to {status}")
        container.record.status = status
        self.store.save(container.record)
        container.changed.set()
        container.changed = asyncio.Event()
        log.info("container %s: %s -> %s", container.id, current, status)
        if topic:
            self.events.publish(topic, container.id, name=container.record.name, **payload)

    # -- create ---------------------------------------------------------------

    async def create(self, request: dict, starting: bool = False) -> Container:
        """Record a new container and prepare its root filesystem; start nothing.

        ``starting`` means that a start follows at once, so an overlay root
        stays mounted for it instead of being unmounted and mounted again.
        """
        from supervisor import ocispec

        name = names.check_name(request["name"]) if request.get("name") else None
        taken = {c.record.name for c in self.containers.values()}
        if name in taken:
            raise AlreadyExists(f"container name {name!r} is already in use; remove it (`moor rm {name}`) "
                                "or choose another name")
        policy = restart.parse_policy(request.get("restart") or "no")
        options = ocispec.RunOptions(**request.get("options", {}))
        if request.get("spec") is not None:
            _reject_options_with_spec(options)
        options.validate()
        network_request, image = await asyncio.to_thread(
            lambda: (self._check_network_request(request), self._resolve_image(request["image"])))
        healthcheck = health.resolve(image.config.get("Healthcheck"), request.get("health"))

        container_id = names.new_id()
        name = name or names.new_name(taken)
        log_driver, log_opts = self._log_config(request)
        self.plugins.hook.moorage_log_config(container_id=container_id, container_name=name, driver=log_driver,
                                             opts=log_opts)
        rootfs = self.folder(container_id) / "rootfs"
        volumes: list[dict] = []
        try:
            spec = await self._prepare(image, options, container_id, rootfs, request.get("spec"), volumes)
            _apply_terminal(spec["process"], request)
            # A --spec file may ask for a terminal itself; the shim must then receive the pty.
            request = {**request, "tty": bool(spec["process"].get("terminal"))}
            if not starting:
                await asyncio.to_thread(self.images.unmount_rootfs, rootfs)
        except BaseException:
            await asyncio.to_thread(self._remove_folder, container_id)
            await asyncio.to_thread(image_volumes.remove_volumes, volumes, container_id)
            self.plugins.hook.moorage_container_removed(container_id=container_id)
            raise

        record = ContainerRecord(
            id=container_id, name=name, image=image.name, image_id=image.id, spec=spec,
            options=dict(self._stored_options(request, image, volumes), health=healthcheck, log_driver=log_driver,
                         log_opts=log_opts, network=_with_exposed_ports(network_request, image)),
            labels=_labels(image, request), restart_policy=str(policy), boot_id=self.boot_id)
        self.store.insert(record)
        container = Container(record)
        self.containers[container_id] = container
        self.events.publish(protocol.TOPIC_CONTAINER_CREATE, container_id, name=name, image=image.name)
        log.info("container %s created as %s from image %s", container_id, name, image.name)
        return container

    def _resolve_image(self, ref: str):
        """Find an image; ``busybox`` is made from the host's busybox-static on first use."""
        try:
            return self.images.get(ref)
        except NotFound:
            if ref in ("busybox", "busybox:latest"):
                return self.images.ensure_busybox()
            raise

    async def _prepare(self, image, options, container_id: str, rootfs: Path, user_spec: dict | None,
                       volumes: list[dict]) -> dict:
        """Make the root and the spec; the image's anonymous volumes are appended to ``volumes``."""
        from supervisor import ocispec

        def root_and_volumes() -> list[dict]:
            # One trip to a worker thread for both: each trip costs a start about 0.3 ms.
            rootfs.parent.mkdir(parents=True, exist_ok=True)
            self.images.prepare_rootfs(image, rootfs)
            if user_spec is not None:
                return []
            bind_destinations = {ocispec.parse_volume(text)["destination"] for text in options.volumes}
            return image_volumes.create_volumes(self.config.root / "volumes", image.config, rootfs,
                                                bind_destinations, container_id)

        volumes += await asyncio.to_thread(root_and_volumes)
        if user_spec is None:
            binds = tuple(f"{volume['source']}:{volume['destination']}" for volume in volumes)
            options = dataclasses.replace(options, volumes=tuple(options.volumes) + binds)
        if user_spec is not None:
            spec = dict(user_spec)
            spec["root"] = dict(spec.get("root") or {}, path=str(rootfs))
            ocispec.validate_spec(spec)
            # Each container gets its own cgroup, whatever cgroupsPath the file sets, so that
            # two containers made from one file never share (and kill) one cgroup.
            spec["linux"] = dict(spec["linux"], cgroupsPath=f"/moorage/{container_id}")
            return spec
        return ocispec.build_spec(image.config, options, rootfs=str(rootfs), container_id=container_id,
                                  hostname=container_id[:12], cgroups_path=f"/moorage/{container_id}",
                                  nofile_limits=self.nofile_limits, init_path=self.config.find_init())

    def _log_config(self, request: dict) -> tuple[str, dict]:
        """Return the request's logging driver and options, or moord's default ones."""
        driver = request.get("log_driver") or self.config.log_driver
        opts = request.get("log_opts")
        if opts is None:
            opts = self.config.log_opts if driver == self.config.log_driver else {}
        if not isinstance(opts, dict):
            raise InvalidArgument("log_opts must be a map of option names to values")
        return str(driver), {str(key): str(value) for key, value in opts.items()}

    def _restore_log_config(self, container: Container) -> None:
        options = container.record.options
        if "log_driver" not in options:
            return  # made before logging drivers: the router's default local files
        try:
            self.plugins.hook.moorage_log_config(container_id=container.id, container_name=container.record.name,
                                                 driver=options["log_driver"], opts=options.get("log_opts") or {})
        except MoorError as exc:
            log.error("container %s: log driver %s unavailable (%s); its output goes to local files",
                      container.id, options["log_driver"], exc.message)

    @staticmethod
    def _stored_options(request: dict, image, volumes: list[dict]) -> dict:
        stored = dict(request.get("options", {}))
        stored["anonymous_volumes"] = volumes
        stored["exposed_ports"] = dict(image.config.get("ExposedPorts") or {})
        stored["auto_remove"] = bool(request.get("rm"))
        stored["stop_signal"] = request.get("stop_signal") or image.config.get("StopSignal") or "SIGTERM"
        stored["stop_timeout"] = request.get("stop_timeout", 10)
        stored["tty"] = bool(request.get("tty"))
        stored["open_stdin"] = bool(request.get("open_stdin"))
        return stored

    def _remove_folder(self, container_id: str) -> None:
        folder = self.folder(container_id)
        rootfs = folder / "rootfs"
        if rootfs.exists():
            self.images.remove_rootfs(rootfs)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(self.shim_folder(container_id), ignore_errors=True)

    # -- start ----------------------------------------------------------------

    async def start(self, container: Container, by_user: bool = True, wait_attach: bool = False) -> int:
        """Start a new task for the container and return the init's pid."""
        async with container.lock:
            if container.record.status == "running":
                raise FailedPrecondition(f"container {container.record.name} is already running")
            if container.record.status == "removing":
                raise FailedPrecondition(f"container {container.record.name} is being removed")
            self._cancel_restart(container)
            if by_user:
                container.record.manually_stopped = False
                container.record.restart_count = 0
                container.failures_in_a_row = 0
            return await self._start_task(container, wait_attach)

    async def _start_task(self, container: Container, wait_attach: bool = False) -> int:
        record = container.record
        try:
            spec, adjusted_by = await self.plugins.adjust_spec(container.id, record.spec, _plugin_options(record))
        except StartFailed as exc:
            record.exit_reason = exc.message
            self.store.save(record)
            raise
        try:
            return await self._create_task(container, spec, wait_attach)
        except BaseException:
            await self.plugins.undo("moorage_release_spec", adjusted_by, container.id, True)
            raise

    async def _create_task(self, container: Container, spec: dict, wait_attach: bool = False) -> int:
        record = container.record
        folder = self.shim_folder(container.id)
        spec = await self._network_up(container, spec)
        def bundle_and_root() -> None:
            self._write_bundle(folder, spec)
            self.images.mount_rootfs(self.folder(container.id) / "rootfs")
        await asyncio.to_thread(bundle_and_root)
        record.task_gen += 1
        stdin, tty = bool(record.options.get("open_stdin")), bool(record.options.get("tty"))
        config = ShimConfig(
            container_id=container.id, bundle=folder, folder=folder,
            spool_dir=self.folder(container.id) / "spool", runtime=self.config.runtime,
            runtime_root=self.config.state / "runc", spool_limit=self.config.spool_limit,
            stdin=stdin, tty=tty, start=not (stdin or tty), loopback=has_new_network_namespace(spec))

        record.shim_pid = await self.launcher.spawn(config)
        record.shim_start_time = process_start_time(record.shim_pid)
        record.acked_seq = 0
        record.exit_reason = ""
        record.oom_kills, record.oom_killed = 0, False
        self.store.save(record)
        container.exit_event = asyncio.Event()
        self._connect(container, record.task_gen)

        container.start_gate.clear()
        try:
            state = await self._first_contact(container, record.shim_pid)
            container.shim_features = frozenset(state.get("features") or ())
            if state["status"] == "failed":
                await self._fail_start(container, state["error"])
            if state["status"] != "created":
                result = state  # the shim started the container right after creating it
            elif state.get("error"):
                raise protocol.error_from_wire(state["error"])
            elif wait_attach:
                result = await container.shim.call("start", timeout=ATTACH_TIMEOUT, wait_attach=True)
            else:
                result = await container.shim.call("start", timeout=60)
        except StartFailed:
            raise
        except MoorError as exc:
            log.error("container %s: start failed: %s", container.id, exc.message)
            await self._delete_task(container)
            await asyncio.to_thread(self._force_delete_runtime, container.id)
            raise
        finally:
            container.start_gate.set()
        record.pid = result["pid"]
        record.started_at = time.time()
        record.exit_code = None
        self._transition(container, "running", protocol.TOPIC_TASK_START, pid=record.pid)
        return record.pid

    async def _first_contact(self, container: Container, shim_pid: int) -> dict:
        """Subscribe to a new shim, and fail at once instead of after the timeout if the shim dies first."""
        call = asyncio.ensure_future(container.shim.call("subscribe", timeout=120, **{"from": 1}))
        try:
            while True:
                done, _ = await asyncio.wait({call}, timeout=0.2)
                if done:
                    return call.result()
                if not process_start_time(shim_pid):
                    try:
                        tail = (self.shim_folder(container.id) / "shim.log").read_bytes()[-2048:]
                    except OSError:
                        tail = b""
                    log.error("container %s: shim %d exited before it responded; the end of its log:\n%s",
                              container.id, shim_pid, tail.decode(errors="replace"))
                    raise Unavailable(f"the shim of container {container.record.name} (pid {shim_pid}) exited "
                                      "before it answered; moord's log contains the end of the shim's log")
        finally:
            call.cancel()

    @staticmethod
    def _write_bundle(folder: Path, spec: dict) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, mode=0o700)
        (folder / "config.json").write_text(json.dumps(spec))

    def _connect(self, container: Container, generation: int) -> None:
        if container.shim is not None:
            container.shim.close()
        socket_path = self.shim_folder(container.id) / "shim.sock"
        container.shim = ShimClient(self.context, container.id, socket_path,
                                    lambda records: self._on_records(container, generation, records))

    async def _fail_start(self, container: Container, error: dict) -> None:
        failure = protocol.error_from_wire(error)
        status = getattr(failure, "status", 125)
        record = container.record
        await self._delete_task(container)
        record.exit_code, record.exit_signal = status, 0
        record.exit_reason = f"failed to start: {failure.message}"
        record.finished_at = time.time()
        self._transition(container, "exited" if record.status != "created" else "created")
        self.store.save(record)
        container.exit_event.set()
        raise StartFailed(f"failed to start container {record.name}: {failure.message}", status)

    # -- networking -------------------------------------------------------------
    # The network plugins run here, and only here: after moord has made the
    # container's namespace and before `runc create`.  A failed setup is
    # undone by the teardown hook before the start fails.

    def _netns_state(self, container_id: str) -> Path:
        return self.config.state / "netns" / f"{container_id}.json"

    def _check_network_request(self, request: dict) -> dict:
        from netplugins import attach
        if request.get("spec") is not None:
            given = {key: value for key, value in (request.get("network") or {}).items() if value}
            if given:
                raise InvalidArgument(f"--spec cannot be combined with network options ({', '.join(sorted(given))}): "
                                      "the spec file's linux.namespaces sets the network")
            return {"mode": attach.SPEC_MODE}
        net = attach.check_request(request.get("network") or {}, self.config.default_network)
        if not net["mode"].startswith("container:"):
            self.networks.resolve(net["mode"])
        return net

    async def _network_up(self, container: Container, spec: dict) -> dict:
        """Make the namespace, run the setup hook and return ``spec`` with them, to write for this task."""
        from netplugins import attach, netns

        record = container.record
        net = record.options.get("network") or {"mode": attach.SPEC_MODE}
        if net["mode"] == attach.SPEC_MODE or not attach.uses_own_namespace(spec):
            return spec
        def target_and_namespace():
            # One trip to a worker thread for the three steps: each trip costs a start about 0.3 ms.
            network, netns_path, files_dir = self._network_target(container, net)
            own_netns = netns_path == str(self.config.state / "netns" / container.id)
            attach.save_state(self._netns_state(container.id), {"network": network, "netns": netns_path,
                                                                "own_netns": own_netns})
            try:
                if own_netns:
                    netns.create(Path(netns_path))
            except Exception as exc:
                return network, netns_path, files_dir, exc
            return network, netns_path, files_dir, None

        network, netns_path, files_dir, failure = await asyncio.to_thread(target_and_namespace)
        try:
            if failure is not None:
                raise failure
            result = await self._network_setup_hook(container, netns_path, network, net)
            if files_dir == self.folder(container.id) / "net":
                await asyncio.to_thread(attach.write_files, files_dir, network["driver"],
                                        record.spec.get("hostname", container.id[:12]), result, net)
        except StartFailed as exc:
            cause = _plugin_cause(exc)
            log.error("container %s: network %s setup failed: %s", container.id, network["name"], cause)
            await self._network_down(container.id)
            raise StartFailed(f"failed to set up network {network['name']} for container {record.name}: {cause}")
        except Exception as exc:
            log.error("container %s: network %s setup failed: %s", container.id, network["name"], exc)
            await self._network_down(container.id)
            raise StartFailed(f"failed to set up network {network['name']} for container {record.name}: {exc}")
        record.network = result
        self.store.save(record)
        log.info("container %s: network %s (%s) is set up", container.id, network["name"], network["driver"])
        return attach.spec_with_network(spec, netns_path, files_dir)

    def _network_target(self, container: Container, net: dict) -> tuple[dict, str, Path]:
        """Find the network dict, the namespace path and the folder of the hosts files for a start."""
        from netplugins import netns

        files_dir = self.folder(container.id) / "net"
        shutil.rmtree(files_dir, ignore_errors=True)
        network = self.networks.resolve(net["mode"])
        if network["driver"] == "host":
            return network, "", files_dir
        if network["driver"] == "container":
            other = self.get(network["container"])
            other_netns = self.config.state / "netns" / other.id
            if other.record.status != "running" or not netns.is_pinned(other_netns):
                raise StartFailed(f"cannot join the network of container {other.record.name}: it is not running "
                                  "with a network namespace of its own")
            return network, str(other_netns), self.folder(other.id) / "net"
        return network, str(self.config.state / "netns" / container.id), files_dir

    async def _network_setup_hook(self, container: Container, netns_path: str, network: dict, net: dict) -> dict:
        record = container.record
        options = {"name": record.name, "hostname": record.spec.get("hostname", container.id[:12]),
                   "ip": net.get("ip"), "ports": net.get("ports") or [], "publish_all": net.get("publish_all"),
                   "exposed_ports": net.get("exposed_ports") or [], "add_hosts": net.get("add_hosts") or [],
                   "dns": net.get("dns") or [], "files_dir": str(self.folder(container.id) / "net")}
        answers = await self.plugins.network_setup(container.id, netns_path, network, options)
        merged: dict = {}
        for _, result in reversed(answers):   # the first plugin in call order wins a clash
            merged.update(result or {})
        return merged

    async def _network_down(self, container_id: str) -> None:
        """Run the teardown hook and remove the namespace; keep the state file if teardown failed."""
        from netplugins import netns

        state_file = self._netns_state(container_id)
        try:
            state = json.loads(state_file.read_text())
        except (FileNotFoundError, ValueError):
            return
        failed = await self.plugins.network_teardown(container_id, state["netns"], state["network"])
        if failed:
            log.error("container %s: network %s teardown failed in plugin(s) %s; moord retries at its next start",
                      container_id, state["network"]["name"], ", ".join(failed))
        if state.get("own_netns"):
            await asyncio.to_thread(netns.remove, Path(state["netns"]))
        if not failed:
            state_file.unlink(missing_ok=True)
        container = self.containers.get(container_id)
        if container is not None and container.record.network:
            container.record.network = {}
            self.store.save(container.record)
        log.info("container %s: network %s is torn down", container_id, state["network"]["name"])

    async def check_network(self, container: Container) -> dict:
        """Run the check hook on a running container's network; store the outcome for inspect and return it."""
        record = container.record
        try:
            state = json.loads(self._netns_state(container.id).read_text())
        except (FileNotFoundError, ValueError):
            state = None
        if record.status != "running" or state is None:
            raise FailedPrecondition(f"container {record.name} has no network set up by moord (it is "
                                     f"{record.status}): start it first")
        network_name = state["network"]["name"]
        answers = await self.plugins.network_check(container.id, state["netns"], state["network"])
        errors = [f"plugin {plugin}: {error}" for plugin, _, error in answers if error]
        status = "ok" if answers else "unchecked"   # unchecked: no plugin serves this network's driver
        if errors:
            status = "failed"
        check = {"status": status,
                 "checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "errors": errors,
                 "details": {plugin: result for plugin, result, _ in answers if result}}
        if record.network:
            record.network = dict(record.network, check=check)
            self.store.save(record)
        if errors:
            log.error("container %s: network %s check failed: %s", container.id, network_name, "; ".join(errors))
            self.events.publish(protocol.TOPIC_NETWORK_CHECK_FAILED, container.id, name=record.name,
                                network=network_name, errors=errors)
        else:
            log.info("container %s: network %s check: %s", container.id, network_name, check["status"])
        return check

    async def _check_networks_on_restore(self) -> None:
        """Check the network of every running container on a CNI network, as the CNI specification intends."""
        for container in list(self.containers.values()):
            record = container.record
            if record.status != "running" or (record.network or {}).get("driver") != "cni":
                continue
            try:
                await self.check_network(container)
            except Exception as exc:
                log.error("container %s: network check after restore failed: %s", container.id, exc)

    async def _reconcile_networks(self) -> None:
        """Tear down what containers that no longer run left behind: namespaces, veths, rules, leases."""
        from netplugins import netns

        live = {c.id for c in self.containers.values() if c.record.status == "running" and c.record.shim_pid}
        folder = self.config.state / "netns"
        for state_file in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            if state_file.stem not in live:
                log.warning("container %s: removing its leftover network setup", state_file.stem)
                await self._network_down(state_file.stem)
        for path in list(folder.iterdir()) if folder.is_dir() else []:
            if path.suffix == "" and path.name not in live and not self._netns_state(path.name).exists():
                await asyncio.to_thread(netns.remove, path)
        for lease in await asyncio.to_thread(self.networks.db.leases):
            if lease["container_id"] not in live:
                log.warning("container %s: freeing its leftover address %s on network %s",
                            lease["container_id"], lease["address"], lease["network"])
                try:
                    network = await asyncio.to_thread(self.networks.resolve, lease["network"])
                except Exception as exc:
                    log.error("container %s: freeing its address on network %s failed: %s",
                              lease["container_id"], lease["network"], exc)
                    continue
                failed = await self.plugins.network_teardown(lease["container_id"], "", network)
                if failed:
                    log.error("container %s: freeing its address on network %s failed in plugin(s) %s",
                              lease["container_id"], lease["network"], ", ".join(failed))


    # -- records from the shim -------------------------------------------------

    def _on_records(self, container: Container, generation: int, records: list[dict]) -> None:
        if generation != container.record.task_gen or container.shim is None:
            return
        outputs = [r for r in records if r["kind"] == protocol.RECORD_OUTPUT and r.get("seq", 0) > container.record.acked_seq]
        self._deliver_output(container, generation, outputs)

        last_seq = max(r["seq"] for r in records)
        for record in records:
            if record["seq"] <= container.record.acked_seq and record["kind"] != protocol.RECORD_EXIT:
                continue
            self._on_event_record(container, record)
        container.record.acked_seq = max(container.record.acked_seq, last_seq)
        if container.shim is not None:
            container.shim.ack(last_seq)

    def _deliver_output(self, container: Container, generation: int, outputs: list[dict]) -> None:
        main = [r for r in outputs if not r.get("exec")]
        if main:
            self.plugins.output(container.id, generation, main)
            for queue in list(container.listeners):
                queue.put_nowait(("output", generation, main))
        for record in outputs:
            session = container.execs.get(record.get("exec") or "")
            if session is not None:
                session.queue.put_nowait(("output", record["stream"], record["data"]))

    def _on_event_record(self, container: Container, record: dict) -> None:
        kind = record["kind"]
        if kind == protocol.RECORD_EXIT:
            asyncio.get_running_loop().create_task(self._handle_exit(container, record))
        elif kind == protocol.RECORD_EXEC_EXIT:
            session = container.execs.get(record.get("exec") or "")
            if session is not None and session.interactive:
                container.execs.pop(session.exec_id, None)
            elif session is not None:
                session.queue.put_nowait(("exit", record["code"], record["signal"]))
            payload = {"exec_id": record.get("exec"), "exit_code": record["code"], "exited_at": record["at"]}
            if session is not None and not session.announced:
                session.held_exit_event = payload
            else:
                self.events.publish(protocol.TOPIC_TASK_EXEC_EXIT, container.id, **payload)
        elif kind == protocol.RECORD_OOM:
            # Saved with the record's sequence number, so a replay never counts it twice.
            # The shim numbers the kills of its task, so a record seen twice never raises the count.
            count = int(record.get("count") or container.record.oom_kills + 1)
            container.record.oom_kills = max(container.record.oom_kills, count)
            container.record.acked_seq = max(container.record.acked_seq, record["seq"])
            self.store.save(container.record)
            log.warning("container %s: the OOM killer ended a process in its cgroup (%d in this task)",
                        container.id, container.record.oom_kills)
            self.events.publish(protocol.TOPIC_TASK_OOM, container.id, name=container.record.name,
                                count=container.record.oom_kills)
        elif kind == protocol.RECORD_LOSS:
            # Saved with the record's sequence number, so a replay never counts it twice.
            container.record.lost_bytes += record["bytes"]
            container.record.acked_seq = max(container.record.acked_seq, record["seq"])
            self.store.save(container.record)
            log.error("container %s: the shim dropped %d bytes of output while its spool was full",
                      container.id, record["bytes"])
            self.events.publish(protocol.TOPIC_TASK_OUTPUT_LOSS, container.id, stream=record["stream"],
                                bytes=record["bytes"], total=container.record.lost_bytes)

    async def _handle_exit(self, container: Container, exit_record: dict) -> None:
        # The exit can arrive in the same batch as the reply that reports the start, so
        # _start_task records the start first.
        await container.start_gate.wait()
        record = container.record
        if record.status not in ("running", "created") or record.shim_pid == 0:
            return
        record.exit_code, record.exit_signal = exit_record["code"], exit_record["signal"]
        record.oom_killed = record.oom_kills > 0
        record.finished_at = exit_record["at"]
        record.pid = 0
        self._transition(container, "exited", protocol.TOPIC_TASK_EXIT, exit_code=record.exit_code,
                         signal=record.exit_signal, exited_at=record.finished_at)
        ran_for = record.finished_at - record.started_at
        if record.options.get("auto_remove") and not container.removing:
            await self._remove_exited(container)
            return
        await self._delete_task(container)
        for queue in list(container.listeners):
            queue.put_nowait(("exit", record.exit_code, record.exit_signal))
        container.exit_event.set()
        await self._after_exit(container, ran_for)

    async def _delete_task(self, container: Container) -> None:
        """Delete the current task once, however many callers race to do it, then its network."""
        async with container.task_lock:
            record = container.record
            if container.shim is None and not record.shim_pid:
                await self._network_down(container.id)
                return
            await self._delete_shim_task(container)
            await self._network_down(container.id)
            # Cleared last: clients (and restore) read "exited with no shim" as "nothing more to do".
            record.shim_pid = record.shim_start_time = 0
            self.store.save(record)

    async def _delete_shim_task(self, container: Container) -> None:
        shim, container.shim = container.shim, None
        if shim is not None and not self._shim_alive(container.record):
            log.warning("container %s: its shim %d is gone; deleting the task in the runtime directly",
                        container.id, container.record.shim_pid)
            shim.close()
            shim = None
            await asyncio.to_thread(self._force_delete_runtime, container.id)
        if shim is not None:
            try:
                await shim.call("delete", timeout=30, force=True)
            except MoorError as exc:
                log.error("container %s: deleting its task failed: %s", container.id, exc)
            shim.close()
        await asyncio.to_thread(self._clean_task_folders, container.id)

    def _clean_task_folders(self, container_id: str) -> None:
        shutil.rmtree(self.shim_folder(container_id), ignore_errors=True)
        shutil.rmtree(self.folder(container_id) / "spool", ignore_errors=True)
        try:
            self.images.unmount_rootfs(self.folder(container_id) / "rootfs")
        except OSError as exc:
            log.error("container %s: could not unmount its root: %s", container_id, exc)

    # -- restart policy -------------------------------------------------------

    async def _after_exit(self, container: Container, ran_for: float) -> None:
        record = container.record
        if record.options.get("auto_remove") and not container.removing:
            await self.remove(container, force=True, volumes=True)
            return
        policy = restart.parse_policy(record.restart_policy)
        if container.stopping or not restart.should_restart(policy, record.exit_code, record.restart_count,
                                                             record.manually_stopped):
            return
        if ran_for >= restart.STABLE_SECONDS:
            container.failures_in_a_row = 0
        delay = restart.backoff_delay(container.failures_in_a_row)
        container.failures_in_a_row += 1
        self._transition(container, "restarting")
        log.info("container %s exited with %d; restarting in %.1f s (policy %s)",
                 container.id, record.exit_code, delay, policy)
        loop = asyncio.get_running_loop()
        container.restart_handle = loop.call_later(delay, lambda: loop.create_task(self._restart(container)))

    async def _restart(self, container: Container) -> None:
        container.restart_handle = None
        async with container.lock:
            if container.record.status != "restarting":
                return
            container.record.restart_count += 1
            try:
                await self._start_task(container)
            except MoorError as exc:
                log.error("container %s: restart failed: %s", container.id, exc.message)
                return
        self.events.publish(protocol.TOPIC_TASK_RESTART, container.id, name=container.record.name,
                            restart_count=container.record.restart_count)

    def _cancel_restart(self, container: Container) -> None:
        if container.restart_handle is not None:
            container.restart_handle.cancel()
            container.restart_handle = None
        if container.record.status == "restarting":
            self._transition(container, "exited")

    # -- stop, kill, wait -----------------------------------------------------

    async def stop(self, container: Container, timeout: float | None = None) -> None:
        """Send the stop signal, then SIGKILL after ``timeout`` seconds; never undone by a policy."""
        record = container.record
        record.manually_stopped = True
        self.store.save(record)
        self._cancel_restart(container)
        if record.status != "running":
            return
        timeout = record.options.get("stop_timeout", 10) if timeout is None else timeout
        container.stopping = True
        try:
            await self._signal(container, parse_signal(record.options.get("stop_signal", "SIGTERM")))
            if not await self._wait_exit(container, timeout):
                log.warning("container %s did not stop within %g s; sending SIGKILL", container.id, timeout)
                await self._signal(container, signals.SIGKILL, all_processes=True)
                await self._wait_exit(container, 30)
        finally:
            container.stopping = False

    async def kill(self, container: Container, signal_number: int) -> None:
        record = container.record
        if record.status != "running":
            raise FailedPrecondition(f"container {record.name} is not running (it is {record.status})")
        record.manually_stopped = True
        self.store.save(record)
        await self._signal(container, signal_number)

    async def _signal(self, container: Container, signal_number: int, all_processes: bool = False) -> None:
        if container.shim is None:
            return
        try:
            await container.shim.call("kill", signal=int(signal_number), all=all_processes)
        except FailedPrecondition as exc:
            log.info("container %s: signal %d not delivered: %s", container.id, signal_number, exc)

    async def _wait_exit(self, container: Container, timeout: float) -> bool:
        """Wait until the task has exited and is deleted, so that no cgroup or mount is left."""
        if container.record.status != "running" and not container.record.shim_pid:
            return True
        try:
            await asyncio.wait_for(container.exit_event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def wait(self, container: Container) -> int:
        """Wait until the container is neither running nor restarting; return its exit code."""
        while container.record.status in ("running", "restarting"):
            await container.changed.wait()
        code = container.record.exit_code
        return 0 if code is None else code

    # -- remove ---------------------------------------------------------------

    async def remove(self, container: Container, force: bool = False, volumes: bool = False) -> None:
        """Remove the container; ``volumes`` also deletes its anonymous volumes (``moor rm -v``)."""
        record = container.record
        if record.status == "running":
            if not force:
                raise FailedPrecondition(
                    f"container {record.name} is running: stop it first (`moor stop {record.name}`) or use `moor rm -f`")
            container.stopping = container.removing = True
            record.manually_stopped = True
            await self._signal(container, signals.SIGKILL, all_processes=True)
            await self._wait_exit(container, 30)
        async with container.remove_lock:
            if container.id not in self.containers:
                return
            self._cancel_restart(container)
            self._transition(container, "removing")
            await self._delete_task(container)
            await self._forget(container)
            if volumes:
                await asyncio.to_thread(image_volumes.remove_volumes, record.options.get("anonymous_volumes", []),
                                        container.id)

    async def _remove_exited(self, container: Container) -> None:
        """Remove a ``--rm`` container whose task has just exited.

        The container disappears (its name is free, waiters are notified) before
        the runtime's state, the shim and the root are cleaned up, so that
        ``moor run --rm`` returns as soon as the exit is known.  A crash in
        between leaves a ``removals`` row that the next moord finishes.
        """
        async with container.remove_lock:
            if container.id not in self.containers:
                return
            container.removing = True
            self._cancel_restart(container)
            record = container.record
            self.store.retire(record)
            self.containers.pop(container.id, None)
            for queue in list(container.listeners):
                queue.put_nowait(("exit", record.exit_code, record.exit_signal))
                queue.put_nowait(("removed",))
            container.exit_event.set()
            container.changed.set()
            shim, container.shim = container.shim, None
            # TODO: a moord crash before this line leaves the volumes of a --rm container on disk.
            await asyncio.to_thread(image_volumes.remove_volumes, record.options.get("anonymous_volumes", []),
                                    container.id)
            await self._clear_remains(container.id, record.name, shim)

    async def _clear_remains(self, container_id: str, name: str, shim: ShimClient | None) -> None:
        """Delete what is left of a retired container: its task, shim, folders and logs."""
        if shim is not None:
            self.retiring[container_id] = shim
            try:
                await shim.call("delete", timeout=30, force=True)
            except MoorError as exc:
                log.error("container %s: deleting its task failed: %s", container_id, exc)
                await asyncio.to_thread(self._force_delete_runtime, container_id)
            finally:
                self.retiring.pop(container_id, None)
                shim.close()
        else:
            await asyncio.to_thread(self._force_delete_runtime, container_id)
        await self._network_down(container_id)
        await asyncio.to_thread(self._clean_task_folders, container_id)
        await asyncio.to_thread(self._remove_folder, container_id)
        self.store.removal_done(container_id)
        self.events.publish(protocol.TOPIC_CONTAINER_DELETE, container_id, name=name)
        log.info("container %s removed", container_id)

    async def _forget(self, container: Container) -> None:
        record = container.record
        await asyncio.to_thread(self._remove_folder, container.id)
        self.store.delete(container.id)
        self.containers.pop(container.id, None)
        container.changed.set()
        for queue in list(container.listeners):
            queue.put_nowait(("removed",))
        self.events.publish(protocol.TOPIC_CONTAINER_DELETE, container.id, name=record.name)
        log.info("container %s removed", container.id)

    # -- exec -----------------------------------------------------------------

    async def exec_start(self, container: Container, request: dict) -> ExecSession:
        record = container.record
        if record.status != "running" or container.shim is None:
            raise FailedPrecondition(f"container {record.name} is not running (it is {record.status})")
        process = self._exec_process(record.spec["process"], Path(record.spec["root"]["path"]), request)
        _apply_terminal(process, request)
        interactive = bool(request.get("tty") or request.get("open_stdin"))
        if interactive and protocol.FEATURE_SESSIONS not in container.shim_features:
            raise FailedPrecondition(
                f"the shim of container {record.name} is from an older release and cannot run exec -i or -t: "
                f"restart the container (`moor restart {record.name}`) to give it a current shim")
        session = ExecSession(exec_id=names.new_id()[:16], interactive=interactive)
        container.execs[session.exec_id] = session
        try:
            result = await container.shim.call("exec", timeout=60, exec=session.exec_id, process=process,
                                               stdin=bool(request.get("open_stdin")))
        except MoorError:
            container.execs.pop(session.exec_id, None)
            raise
        session.pid = result["pid"]
        self.events.publish(protocol.TOPIC_TASK_EXEC_STARTED, container.id, exec_id=session.exec_id, pid=session.pid)
        session.announced = True
        if session.held_exit_event is not None:
            self.events.publish(protocol.TOPIC_TASK_EXEC_EXIT, container.id, **session.held_exit_event)
        return session

    @staticmethod
    def _exec_process(base: dict, rootfs: Path, request: dict) -> dict:
        from supervisor import ocispec

        args = list(request.get("args") or [])
        if not args:
            raise InvalidArgument("no command given to exec: put the command after the container name")
        ocispec.RunOptions(args=tuple(args), env=tuple(request.get("env") or ()),
                           workdir=request.get("workdir"), user=request.get("user")).validate()
        process = dict(base, args=args, terminal=False)
        if request.get("env"):
            process["env"] = ocispec.merge_env(list(base.get("env", [])), list(request["env"]))
        if request.get("workdir"):
            process["cwd"] = request["workdir"]
        if request.get("user"):
            process["user"] = ocispec.resolve_user(rootfs, request["user"])
        return process

    # -- restore after a moord restart -------------------------------------------

    async def restore(self) -> None:
        """Load every container, reconnect to live shims and catch up on what was missed."""
        rebooted = self.store.setting("boot_id") not in ("", self.boot_id)
        self.store.set_setting("boot_id", self.boot_id)
        for record in self.store.all():
            self.containers[record.id] = Container(record)
            self._restore_log_config(self.containers[record.id])
        await asyncio.gather(*(self._restore_one(c, rebooted) for c in list(self.containers.values())),
                             *(self._finish_removal(row) for row in self.store.removals()))
        await self._reconcile_networks()
        await self._check_networks_on_restore()

    async def _finish_removal(self, row) -> None:
        """Finish the cleanup of a container that an earlier moord retired but did not clear."""
        container_id = row["id"]
        log.info("container %s: finishing its removal", container_id)
        shim = None
        if row["shim_pid"] and process_start_time(row["shim_pid"]) == row["shim_start_time"]:
            shim = ShimClient(self.context, container_id, self.shim_folder(container_id) / "shim.sock",
                              lambda records: None)
        await self._clear_remains(container_id, row["name"], shim)

    async def _restore_one(self, container: Container, rebooted: bool) -> None:
        record = container.record
        if record.status == "removing":
            await self.remove(container, force=True)
            return
        if record.shim_pid and self._shim_alive(record):
            await self._reconnect(container)
            return
        if not rebooted and self._adopt_unrecorded_shim(container):
            await self._reconnect(container)
            return
        if record.shim_pid or record.status in ("running", "restarting"):
            await self._mark_vanished(container, rebooted)
        elif rebooted and record.status == "exited":
            await self._start_after_boot(container)
        elif record.status == "created":
            # `moor run` keeps the new root mounted for its start; a moord that died in between left it so.
            await asyncio.to_thread(self.images.unmount_rootfs, self.folder(container.id) / "rootfs")

    def _adopt_unrecorded_shim(self, container: Container) -> bool:
        """Record a live shim that moord forked but died before recording; return whether there was one.

        Each start writes a fresh shim folder, so the pid file there belongs
        to the last shim forked for the container.
        """
        record = container.record
        try:
            pid = int((self.shim_folder(container.id) / "shim.pid").read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return False
        start_time = process_start_time(pid)
        if pid == record.shim_pid or not start_time or b"shim" not in cmdline:
            return False
        log.warning("container %s: found its shim %d, which the last moord forked but did not record; "
                    "adopting it", container.id, pid)
        record.shim_pid, record.shim_start_time = pid, start_time
        record.task_gen += 1
        record.acked_seq = 0
        self.store.save(record)
        return True

    def _shim_alive(self, record: ContainerRecord) -> bool:
        start_time = process_start_time(record.shim_pid)
        return start_time != 0 and start_time == record.shim_start_time

    async def _reconnect(self, container: Container) -> None:
        record = container.record
        position = self.plugins.hook.moorage_output_position(container_id=container.id)
        if position and position[0] == record.task_gen:
            record.acked_seq = max(record.acked_seq, position[1])
        self._connect(container, record.task_gen)
        container.start_gate.clear()
        try:
            try:
                state = await container.shim.call("subscribe", timeout=10, **{"from": record.acked_seq + 1})
                container.shim_features = frozenset(state.get("features") or ())
            except MoorError as exc:
                log.error("container %s: shim %d did not respond: %s", container.id, record.shim_pid, exc)
                container.start_gate.set()
                await self._mark_vanished(container, False)
                return
            log.info("container %s: reconnected to shim %d (%s, replaying from record %d)",
                     container.id, record.shim_pid, state["status"], record.acked_seq + 1)
            # The clients of running execs talk to the shim (interactive) or lost moord's stream, so moord
            # only lists them until they exit.
            for exec_id, process in (state.get("execs") or {}).items():
                if process.get("running"):
                    container.execs[exec_id] = ExecSession(exec_id=exec_id, pid=process["pid"], interactive=True,
                                                           announced=True)
            container.exit_event = asyncio.Event()
            started = state["status"] not in ("failed", "created")
            if (started and record.status in ("created", "restarting")
                    or state["status"] == "running" and record.status == "exited"):
                self._adopt_started_task(container, state)
        finally:
            container.start_gate.set()
        if state["status"] == "failed":
            await self._delete_task(container)
        elif state["status"] == "created":
            await self._delete_unstarted_task(container)

    def _adopt_started_task(self, container: Container, state: dict) -> None:
        """Record as running a task that its shim started after moord died while starting it."""
        record = container.record
        log.warning("container %s: moord stopped while starting it, and its shim went on to start it; "
                    "it is running with init pid %d", container.id, state["pid"])
        record.pid = state["pid"]
        record.started_at = time.time()
        record.exit_code = None
        self._transition(container, "running", protocol.TOPIC_TASK_START, pid=record.pid)

    async def _delete_unstarted_task(self, container: Container) -> None:
        """Delete a task that moord created but did not start before it died; reschedule a pending restart."""
        log.warning("container %s: its task was created but never started; deleting it", container.id)
        await self._delete_task(container)
        if container.record.status == "restarting":
            await self._after_exit(container, 0)

    async def _mark_vanished(self, container: Container, rebooted: bool) -> None:
        record = container.record
        reason = "the host rebooted" if rebooted else f"its shim (pid {record.shim_pid}) vanished"
        log.error("container %s: %s; marking it exited", container.id, reason)
        await asyncio.to_thread(self._force_delete_runtime, container.id)
        container.shim = None
        await self._delete_task(container)
        if record.status in ("running", "restarting", "created"):
            record.exit_code = record.exit_code if record.status == "restarting" else VANISHED_EXIT_CODE
            record.exit_reason = reason
            record.finished_at = record.finished_at or time.time()
            if record.status != "created":
                self._transition(container, "exited", protocol.TOPIC_TASK_EXIT, exit_code=record.exit_code,
                                 reason=reason)
            else:
                self.store.save(record)
        if rebooted:
            await self._start_after_boot(container)
        else:
            await self._after_exit(container, 0)

    async def _start_after_boot(self, container: Container) -> None:
        record = container.record
        policy = restart.parse_policy(record.restart_policy)
        wanted = policy.name == "always" or (policy.name == "unless-stopped" and not record.manually_stopped)
        if wanted or restart.should_restart(policy, record.exit_code or 0, record.restart_count, record.manually_stopped):
            log.info("container %s: starting after reboot (policy %s)", container.id, policy)
            try:
                await self.start(container, by_user=False)
            except MoorError as exc:
                log.error("container %s: start after reboot failed: %s", container.id, exc.message)

    def _force_delete_runtime(self, container_id: str) -> None:
        import subprocess
        subprocess.run([self.config.runtime, "--root", str(self.config.state / "runc"), "delete", "--force",
                        container_id], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self) -> None:
        for shim in list(self.retiring.values()):
            shim.close()
        for container in self.containers.values():
            if container.restart_handle is not None:
                container.restart_handle.cancel()
            if container.shim is not None:
                container.shim.close()


def _labels(image, request: dict) -> dict:
    """Return the image config's Labels, overridden by the labels of the request."""
    image_labels = image.config.get("Labels")
    if not isinstance(image_labels, dict):
        image_labels = {}
    return {**{str(k): str(v) for k, v in image_labels.items()}, **dict(request.get("labels") or {})}


def _plugin_cause(exc: StartFailed) -> str:
    """Return what the plugin that failed a network setup raised, or the plugin host's words for a timeout."""
    failure = exc.__cause__
    if not isinstance(failure, PluginFailure):
        return exc.message
    if failure.error is not None:
        return str(failure.error)
    return f"plugin {failure.plugin} {failure.message}"


def _with_exposed_ports(net: dict, image) -> dict:
    from netplugins import attach
    return dict(net, exposed_ports=attach.exposed_ports(image.config)) if net.get("publish_all") else net


def _reject_options_with_spec(options) -> None:
    """Refuse run options that a ``--spec`` file would silently override."""
    given = [name for name, value in (("command", options.args), ("-e", options.env), ("-w", options.workdir),
                                      ("-u", options.user), ("--hostname", options.hostname),
                                      ("--read-only", options.read_only), ("-v", options.volumes),
                                      ("--ulimit", options.ulimits), ("-m", options.memory),
                                      ("--init", options.init), ("--entrypoint", options.entrypoint))
             if value]
    if given:
        raise InvalidArgument(f"--spec cannot be combined with {', '.join(given)}: put the process, mounts "
                              "and limits in the spec file instead")


def _plugin_options(record: ContainerRecord) -> dict:
    """Return what ``moorage_adjust_spec`` receives as ``options``."""
    return dict(record.options, name=record.name, image=record.image, labels=dict(record.labels))


def _apply_terminal(process: dict, request: dict) -> None:
    """Give a process the terminal that ``-t`` requests, sized as the client's own terminal."""
    if not request.get("tty"):
        return
    process["terminal"] = True
    size = request.get("console_size")
    if size:
        from shim.console import check_size
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            raise InvalidArgument(f"invalid console_size {size!r}: give [rows, columns]")
        rows, columns = check_size(*size)
        process["consoleSize"] = {"height": rows, "width": columns}


def parse_signal(value) -> int:
    """Turn ``9``, ``KILL`` or ``SIGKILL`` into a signal number."""
    text = str(value).strip().upper()
    if text.isdigit():
        number = int(text)
    else:
        name = text if text.startswith("SIG") else f"SIG{text}"
        number = getattr(signals.Signals, name, None)
        if number is None:
            raise InvalidArgument(f"invalid signal {value!r}: use a name like TERM or KILL, or a number")
        number = int(number)
    if not 1 <= number <= 64:
        raise InvalidArgument(f"invalid signal {value!r}: signal numbers go from 1 to 64")
    return number
