"""The plugin host: loads plugins and calls their hooks so that none can crash moord.

Plugins come from two places: the built-ins below and the ``moorage.plugins``
entry-point group of installed Python packages.  ``[plugins.NAME]`` tables
of the config file enable or disable each one and give it options.

Calls go through one of four paths, chosen by the hook (its docstring in
``supervisor.hookspecs`` names the kind):

* ``run_required``: blocking hooks that may veto an action; on the first
  failure the matching undo hook runs for the plugins that already ran.
* ``notify``: observers, queued per plugin and run in order after the action.
* ``call_each``: other blocking hooks (start-up, metrics), each isolated.
* ``output``: the inline output hook, isolated but not timed.

Every blocking call runs in a daemon thread of its own and is awaited with
``asyncio.wait_for``.  A timed-out thread cannot be stopped, so the pair
(plugin, hook) stays busy, and later calls of that pair are skipped and
reported, until the thread returns.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from shim import protocol
from shim.protocol import StartFailed
from supervisor import hookspecs

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "moorage.plugins"
OBSERVER_QUEUE_LIMIT = 1000
REPORT_INTERVAL = 10.0  # seconds between two reports of the same failure

# Event topics whose in-process delivery calls an observer hook, and the payload keys it takes.
_OBSERVED_TOPICS = {
    protocol.TOPIC_CONTAINER_CREATE: ("moorage_container_created", ("name", "image")),
    protocol.TOPIC_TASK_START: ("moorage_task_started", ("name", "pid")),
    protocol.TOPIC_TASK_EXIT: ("moorage_task_exited", ("name", "exit_code", "signal")),
    protocol.TOPIC_TASK_OOM: ("moorage_task_oom", ("name",)),
    protocol.TOPIC_CONTAINER_DELETE: ("moorage_container_removed", ()),
}


def _logging(config):
    from plugins.logdrivers import LogRouter
    return LogRouter(config.root, config.log_driver, config.log_opts, config.log_max_size, config.log_max_files)


def _metrics(config):
    from plugins.metrics import CgroupMetrics
    return CgroupMetrics()


# Built-in plugins by name: a factory that takes the DaemonConfig.
BUILTINS = {"logging": _logging, "metrics": _metrics}


def _serving(network: dict):
    """Return a test of whether a network hook implementation serves ``network``.

    A plugin may name the drivers it serves in a ``network_drivers``
    attribute. moord then calls its network hooks only for those networks, so
    a start makes no worker-thread trip for plugins that do not serve it. A
    plugin without the attribute gets every network.
    """
    driver = network.get("driver")

    def serves(impl) -> bool:
        drivers = getattr(impl.plugin, "network_drivers", None)
        return drivers is None or driver in drivers
    return serves


class PluginFailure(Exception):
    """A hook implementation raised, timed out or was skipped."""

    def __init__(self, plugin: str, hook: str, message: str, error: Exception | None = None):
        super().__init__(f"plugin {plugin}: {hook} {message}")
        self.plugin = plugin
        self.hook = hook
        self.message = message
        self.error = error   # what the hook raised; None for a timeout or a skipped call


@dataclass
class PluginInfo:
    """A loaded, disabled or failed plugin, as ``moor plugin ls`` lists it."""

    name: str
    version: str
    source: str
    state: str = "enabled"          # enabled, disabled or failed
    error: str = ""
    errors: int = 0                 # hook failures since moord started
    hooks: list[str] = field(default_factory=list)

    def to_wire(self) -> dict:
        return {"name": self.name, "version": self.version, "source": self.source, "state": self.state,
                "error": self.error, "errors": self.errors, "hooks": self.hooks}


class PluginHost:
    """Owns the pluggy plugin manager of one moord and every call into a plugin."""

    def __init__(self, config, events=None, version: str = ""):
        self.config = config
        self.version = version
        self.events = events
        self.timeout = config.plugin_timeout
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.busy: set[tuple] = set()   # (plugin, hook) or (plugin, hook, container id)
        self.queues: dict[str, asyncio.Queue] = {}
        self.workers: dict[str, asyncio.Task] = {}
        self.last_report: dict[tuple[str, str, str], tuple[float, int]] = {}
        if events is not None:
            events.listeners.append(self._on_event)

    @property
    def hook(self):
        return self.manager.hook

    # -- loading -------------------------------------------------------------

    async def load(self, net_plugins: list = ()) -> None:
        """Register the enabled built-ins, then installed plugins by name, and configure each.

        ``net_plugins`` are the built-in network plugins of ``netplugins.build``.
        """
        for name, factory in BUILTINS.items():
            info = PluginInfo(name, self.version, "builtin")
            await self.add(info, lambda factory=factory: factory(self.config))
        for plugin in net_plugins:
            info = PluginInfo(f"net-{type(plugin).__name__}", self.version, "builtin")
            await self.add(info, lambda plugin=plugin: plugin)

        for entry_point in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if entry_point.name in self.infos:
                log.error("plugin %s from %s ignored: a plugin of that name is already loaded",
                          entry_point.name, entry_point.value)
                continue
            dist = entry_point.dist
            info = PluginInfo(entry_point.name, dist.version if dist else "", f"entry point {entry_point.value}")
            await self.add(info, lambda entry_point=entry_point: _instantiate(entry_point.load()))

        for name in sorted(set(self.config.plugins) - set(self.infos)):
            log.warning("config has [plugins.%s] but no such plugin is installed", name)

    async def add(self, info: PluginInfo, make) -> None:
        """Register the plugin that ``make()`` returns, unless the config disables it, and configure it."""
        self.infos[info.name] = info
        settings = dict(self.config.plugins.get(info.name, {}))
        if not settings.pop("enabled", True):
            info.state = "disabled"
            log.info("plugin %s is disabled in the config", info.name)
            return
        try:
            plugin = make()
            self.manager.register(plugin, name=info.name)
        except Exception as exc:
            self._fail(info, f"could not be loaded: {exc!r}")
            return
        unknown = [caller.name for caller in self.manager.get_hookcallers(plugin) if caller.spec is None]
        info.hooks = sorted(caller.name for caller in self.manager.get_hookcallers(plugin))
        if unknown:
            self._fail(info, f"implements unknown hook(s) {', '.join(unknown)}; see supervisor/hookspecs.py")
            return
        try:
            await self._call_plugin(info.name, "moorage_configure", {"options": settings}, None)
        except PluginFailure as failure:
            self._fail(info, failure.message)
            return
        log.info("plugin %s %s loaded (%s)", info.name, info.version, info.source)

    def _fail(self, info: PluginInfo, message: str) -> None:
        info.state = "failed"
        info.error = message
        plugin = self.manager.get_plugin(info.name)
        if plugin is not None:
            self.manager.unregister(plugin)
        log.error("plugin %s disabled: %s", info.name, message)
        self._publish(info.name, "load", None, message)

    def list(self) -> list[dict]:
        return [info.to_wire() for info in self.infos.values()]

    # -- moord start-up and shutdown ---------------------------------------------

    async def startup(self, config) -> None:
        """Call ``moorage_startup``; a plugin that fails it is disabled, moord goes on."""
        for impl in self._ordered("moorage_startup"):
            try:
                await self._call(impl, "moorage_startup", {"config": config}, None)
            except PluginFailure as failure:
                self._fail(self.infos[impl.plugin_name], failure.message)

    async def shutdown(self) -> None:
        for worker in self.workers.values():
            worker.cancel()
        await self.call_each("moorage_shutdown", None)

    # -- calling hooks ------------------------------------------------------------

    def _ordered(self, hook: str) -> list:
        """Return the implementations of a hook in the order pluggy would call them."""
        return list(reversed(getattr(self.manager.hook, hook).get_hookimpls()))

    async def call_each(self, hook: str, container_id: str | None, **kwargs) -> list[tuple[str, object]]:
        """Call a blocking hook on every plugin; return ``(plugin, result)`` of those that succeeded."""
        results = []
        for impl in self._ordered(hook):
            try:
                results.append((impl.plugin_name, await self._call(impl, hook, kwargs, container_id)))
            except PluginFailure:
                continue
        return results

    async def run_required(self, hook: str, undo: str, container_id: str, per_container: bool = False,
                           only=None, **kwargs) -> list[tuple[str, object]]:
        """Call a hook that can veto an action; on a failure undo the plugins that ran and raise.

        Returns ``(plugin, result)`` pairs in call order.  The exception is
        ``StartFailed`` naming the plugin, so the start fails with status 125.
        ``only``, if given, picks the implementations to call.
        """
        done: list[tuple[str, object]] = []
        for impl in self._ordered(hook):
            if only is not None and not only(impl):
                continue
            try:
                done.append((impl.plugin_name, await self._call(impl, hook, kwargs, container_id, per_container)))
            except PluginFailure as failure:
                await self.undo(undo, [name for name, _ in done], container_id, per_container, **kwargs)
                raise StartFailed(f"failed to start container {container_id}: plugin {failure.plugin} "
                                  f"rejected it in {hook}: {failure.message}") from failure
        return done

    async def undo(self, hook: str, plugin_names: list[str], container_id: str, per_container: bool = False,
                   **kwargs) -> list[str]:
        """Call an undo hook on the named plugins in reverse order; failures are only reported and returned."""
        failed = []
        for name in reversed(plugin_names):
            try:
                await self._call_plugin(name, hook, kwargs, container_id, per_container)
            except PluginFailure:
                failed.append(name)
        return failed

    async def adjust_spec(self, container_id: str, spec: dict, options: dict) -> tuple[dict, list[str]]:
        """Return a copy of ``spec`` edited by every plugin, and the plugins that edited it."""
        adjusted = copy.deepcopy(spec)
        # Keyed by container, like the network calls: containers that start together adjust side by side.
        done = await self.run_required("moorage_adjust_spec", "moorage_release_spec", container_id,
                                       per_container=True, spec=adjusted, options=copy.deepcopy(options))
        if adjusted.get("root") != spec.get("root") or \
                adjusted.get("linux", {}).get("cgroupsPath") != spec.get("linux", {}).get("cgroupsPath"):
            names = [name for name, _ in done]
            await self.undo("moorage_release_spec", names, container_id, True)
            raise StartFailed(f"failed to start container {container_id}: a plugin ({', '.join(names)}) "
                              "changed root.path or linux.cgroupsPath, which moord owns")
        return adjusted, [name for name, _ in done]

    async def network_setup(self, container_id: str, netns: str, network: dict,
                            options: dict) -> list[tuple[str, object]]:
        """Set up the network through every plugin; on a failure tear down those that ran and raise StartFailed.

        The ``PluginFailure`` is the StartFailed's ``__cause__``.  Network calls
        are keyed by container too, so containers that start together set up
        side by side.
        """
        return await self.run_required("moorage_network_setup", "moorage_network_teardown", container_id,
                                       per_container=True, only=_serving(network), netns=netns, network=network,
                                       options=options)

    async def network_teardown(self, container_id: str, netns: str, network: dict) -> list[str]:
        """Tear down the network through every plugin, in reverse call order; return the plugins that failed.

        Failures are reported like every plugin failure and never raised.
        """
        serves = _serving(network)
        names = [impl.plugin_name for impl in self._ordered("moorage_network_teardown") if serves(impl)]
        return await self.undo("moorage_network_teardown", names, container_id, True, netns=netns, network=network)

    async def network_check(self, container_id: str, netns: str, network: dict) -> list[tuple[str, object, str]]:
        """Check the network through every plugin; return ``(plugin, result, error)`` for each that serves it."""
        answers = []
        serves = _serving(network)
        for impl in self._ordered("moorage_network_check"):
            if not serves(impl):
                continue
            try:
                result = await self._call(impl, "moorage_network_check", {"netns": netns, "network": network},
                                          container_id, per_container=True)
            except PluginFailure as failure:
                answers.append((impl.plugin_name, None, failure.message))
                continue
            if result is not None:
                answers.append((impl.plugin_name, result, ""))
        return answers

    async def collect_metrics(self, container_id: str, cgroup_path: str, pid: int) -> dict:
        """Merge the metrics of every plugin; later plugins in call order override earlier ones."""
        merged: dict = {}
        for _, result in await self.call_each("moorage_collect_metrics", container_id,
                                              cgroup_path=cgroup_path, pid=pid):
            if isinstance(result, dict):
                merged.update(result)
        return merged

    async def _call_plugin(self, name: str, hook: str, kwargs: dict, container_id: str | None,
                           per_container: bool = False):
        for impl in getattr(self.manager.hook, hook).get_hookimpls():
            if impl.plugin_name == name:
                return await self._call(impl, hook, kwargs, container_id, per_container)
        return None

    async def _call(self, impl, hook: str, kwargs: dict, container_id: str | None, per_container: bool = False):
        """Run one implementation in a daemon thread, at most ``plugin_timeout`` seconds.

        With ``per_container`` a call that has not returned keeps only that
        container's later calls of the hook from running, not other containers'.
        """
        key = (impl.plugin_name, hook) + ((container_id,) if per_container else ())
        if key in self.busy:
            self.report(impl.plugin_name, hook, container_id, "skipped: its previous call has not returned")
            raise PluginFailure(impl.plugin_name, hook, "skipped: its previous call has not returned")
        kwargs = {"container_id": container_id, **kwargs}
        arguments = {name: kwargs[name] for name in impl.argnames if name in kwargs}
        future = self._start_thread(key, impl.function, arguments)
        error = None
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except asyncio.TimeoutError:
            message = f"timed out after {self.timeout:g} s"
        except Exception as exc:
            log.debug("plugin %s: %s raised", impl.plugin_name, hook, exc_info=exc)
            message = f"raised {exc!r}"
            error = exc
        self.report(impl.plugin_name, hook, container_id, message)
        raise PluginFailure(impl.plugin_name, hook, message, error)

    def _start_thread(self, key: tuple, function, arguments: dict) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.busy.add(key)

        def settle(result, error) -> None:
            self.busy.discard(key)
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        def run() -> None:
            result, error = None, None
            try:
                result = function(**arguments)
            except BaseException as exc:
                error = exc
            try:
                loop.call_soon_threadsafe(settle, result, error)
            except RuntimeError:
                pass  # moord's loop closed while the hook ran
        threading.Thread(target=run, name=f"plugin-{key[0]}-{key[1]}", daemon=True).start()
        return future

    # -- observers -----------------------------------------------------------

    def notify(self, hook: str, container_id: str | None, **kwargs) -> None:
        """Queue an observer call for each plugin; each plugin's queue runs in order."""
        for impl in self._ordered(hook):
            queue = self._queue(impl.plugin_name)
            if queue.qsize() >= OBSERVER_QUEUE_LIMIT:
                self.report(impl.plugin_name, hook, container_id,
                            f"dropped: {OBSERVER_QUEUE_LIMIT} calls are already waiting for this plugin")
                continue
            queue.put_nowait((impl, hook, kwargs, container_id))

    def _queue(self, name: str) -> asyncio.Queue:
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = asyncio.Queue()
            self.workers[name] = asyncio.get_running_loop().create_task(self._drain(queue))
        return queue

    async def _drain(self, queue: asyncio.Queue) -> None:
        while True:
            impl, hook, kwargs, container_id = await queue.get()
            try:
                await self._call(impl, hook, kwargs, container_id)
            except PluginFailure:
                pass  # already reported

    def _on_event(self, envelope: dict) -> None:
        """Turn a published lifecycle event into observer calls; never raise into the publisher."""
        observed = _OBSERVED_TOPICS.get(envelope["topic"])
        if observed is None:
            return
        hook, keys = observed
        payload = envelope.get("payload", {})
        defaults = {"name": "", "image": "", "pid": 0, "exit_code": 0, "signal": 0}
        try:
            self.notify(hook, envelope["id"], **{key: payload.get(key, defaults[key]) for key in keys})
        except Exception:
            log.exception("container %s: could not queue %s for plugins", envelope["id"], hook)

    # -- inline output ------------------------------------------------------------

    def output(self, container_id: str, generation: int, records: list[dict]) -> None:
        """Call the inline output hook on every plugin; an exception is reported, never raised."""
        for impl in self._ordered("moorage_container_output"):
            try:
                impl.function(**{name: value for name, value in
                                 (("container_id", container_id), ("generation", generation), ("records", records))
                                 if name in impl.argnames})
            except Exception as exc:
                self.report(impl.plugin_name, "moorage_container_output", container_id, f"raised {exc!r}")

    # -- reporting ---------------------------------------------------------------

    def report(self, plugin: str, hook: str, container_id: str | None, message: str) -> None:
        """Log a plugin failure and publish a ``plugin.error`` event.

        The same failure (plugin, hook and message) is reported at most once
        per ``REPORT_INTERVAL``; the next report counts the ones left out.
        """
        info = self.infos.get(plugin)
        if info is not None:
            info.errors += 1
        key = (plugin, hook, message)
        now = time.monotonic()
        last, suppressed = self.last_report.get(key, (0.0, 0))
        if last and now - last < REPORT_INTERVAL:
            self.last_report[key] = (last, suppressed + 1)
            return
        self.last_report[key] = (now, 0)
        more = f" ({suppressed} more failures of this hook not reported)" if suppressed else ""
        log.error("plugin %s: %s failed for container %s: %s%s", plugin, hook, container_id or "-", message, more)
        self._publish(plugin, hook, container_id, message, suppressed)

    def _publish(self, plugin: str, hook: str, container_id: str | None, message: str, suppressed: int = 0) -> None:
        if self.events is not None:
            self.events.publish(protocol.TOPIC_PLUGIN_ERROR, container_id, plugin=plugin, hook=hook,
                                error=message, suppressed=suppressed)


def _instantiate(loaded):
    """Turn an entry point's object into a plugin: a class is instantiated without arguments."""
    return loaded() if isinstance(loaded, type) else loaded
