"""Hook specifications that plugins implement, grouped by lifecycle phase.

A plugin is a module, a class or an object with functions marked by
``supervisor.hookspecs.hookimpl``; docs/plugins.md shows how to write,
install and configure one.  Every hook below states four things:

* **when** moord calls it, before or after the action;
* whether it can **veto** the action (only the hooks marked *required* can:
  they veto by raising);
* its **timeout**: moord calls the hooks marked *blocking* in a thread of
  their own and gives up waiting after ``plugin_timeout`` seconds (default
  10).  The thread of a hook that timed out keeps running, because Python
  cannot stop a thread, so moord skips that plugin's later calls of the same
  hook until it returns.  Hooks marked *inline* run on moord's event loop
  thread and must return within milliseconds;
* the **order**: moord calls the implementations one plugin at a time, in
  pluggy's order: the plugin registered last runs first, except that
  ``tryfirst=True`` implementations run before and ``trylast=True`` after
  all others.  Built-in plugins are registered first, then installed ones
  in the order of their names, so an installed plugin runs before a
  built-in one unless it is marked ``trylast``.

Isolation (the host is ``supervisor.pluginhost``): an exception in any hook
is logged with the container id and published as a ``plugin.error`` event.
It fails the action only for a required hook.  Observer hooks run on a
queue per plugin, after the action, so a slow observer delays neither the
action nor other plugins; each plugin still sees the events of one
container in their order.
"""

from __future__ import annotations

from collections.abc import Iterator

import pluggy

PROJECT = "moorage"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- configuration, moord start-up and shutdown -------------------------------------

@hookspec
def moorage_configure(options: dict) -> None:
    """Receive the plugin's own options, once, before any other hook.  Blocking.

    ``options`` is the plugin's ``[plugins.NAME]`` table of
    ``/etc/moorage/config.toml`` without its ``enabled`` key (an empty dict
    when the table is missing).  Raising marks the plugin *failed*: moord
    unregisters it, logs the error and starts without it.
    """


@hookspec
def moorage_startup(config) -> None:
    """Called once after moord has opened its state, before it serves requests.  Blocking.

    ``config`` is the daemon's frozen ``DaemonConfig``.  A plugin that raises
    or times out is marked *failed* and unregistered; moord starts anyway.
    """


@hookspec
def moorage_shutdown() -> None:
    """Called once when moord exits; containers keep running.  Blocking, errors are logged."""


# -- before a task starts: required hooks ---------------------------------------

@hookspec
def moorage_adjust_spec(container_id: str, spec: dict, options: dict) -> None:
    """Edit a container's OCI runtime spec in place before ``runc create``.  Blocking, required.

    Called at every start of the container (also restarts), on a fresh copy
    of the spec stored at ``moor create``, so edits never accumulate.  A
    plugin may change mounts, ``process.env``, ``linux.devices``,
    ``linux.resources``, ``annotations`` and ``hooks``; it must not change
    ``root.path`` nor ``linux.cgroupsPath``.  ``options`` is a read-only copy
    of the container's run options (``env``, ``volumes``, ``health`` and the
    others stored at create) plus ``name``, ``image`` and ``labels``.

    Raising vetoes the start: moord calls ``moorage_release_spec`` of every
    plugin whose ``moorage_adjust_spec`` already returned, in reverse order,
    and the start fails with the plugin's name and message.
    """


@hookspec
def moorage_release_spec(container_id: str) -> None:
    """Undo the side effects of ``moorage_adjust_spec``.  Blocking, errors are logged.

    Called when a start fails after the plugin's ``moorage_adjust_spec``
    returned: a later plugin vetoed, or the runtime failed to create the
    task.  Not called when the task exits; use ``moorage_task_exited``.
    """


@hookspec
def moorage_network_setup(container_id: str, netns: str, network: dict, options: dict) -> dict:
    """Configure a container's network; called before ``runc create``.

    ``netns`` is the path of the network namespace that moord made and
    pinned for the container ("" for ``--network host``).  ``network``
    describes the network.  Its ``driver`` names the plugin that serves it, and
    an implementation returns None for networks it does not serve.  ``options``
    holds the container's ``name``, ``hostname``, ``ip``, ``ports``,
    ``publish_all``, ``exposed_ports``, ``add_hosts``, ``dns`` and
    ``files_dir``, the folder of the hosts, hostname and resolv.conf files
    that moord bind-mounts into the container.  Return what ``moor inspect``
    shows (interfaces, addresses, ports).  Raising vetoes the start: moord
    then calls ``moorage_network_teardown`` to undo what was done.
    """


@hookspec
def moorage_network_teardown(container_id: str, netns: str, network: dict) -> None:
    """Undo a container's network setup; called on exit, on removal and by moord's start-up reconcile.

    It may run after a setup that failed half-way, or more than once, so it
    must be idempotent and must not assume that anything exists.  ``netns``
    may already be gone.
    """


@hookspec
def moorage_network_check(container_id: str, netns: str, network: dict) -> dict:
    """Check that a running container's network is still as setup left it; blocking.

    moord calls it for ``moor network check`` and, when it starts, for each
    running container on a CNI network.  Return None for networks the plugin
    does not serve, or a dict of details (it may be empty).  Raise with a
    message that names what is wrong when the check fails.
    """


# -- container lifecycle observers: after the action, never veto ---------------------

@hookspec
def moorage_container_created(container_id: str, name: str, image: str) -> None:
    """Called after a container is recorded (``moor create`` or ``run``).  Observer."""


@hookspec
def moorage_task_started(container_id: str, name: str, pid: int) -> None:
    """Called after the container's process started; ``pid`` is on the host.  Observer."""


@hookspec
def moorage_task_exited(container_id: str, name: str, exit_code: int, signal: int) -> None:
    """Called after the container's process exited.  Observer.

    ``exit_code`` is 128 + the signal number when a signal killed it.
    """


@hookspec
def moorage_task_oom(container_id: str, name: str) -> None:
    """Called after the kernel's OOM killer acted in the container's cgroup.  Observer."""


@hookspec
def moorage_container_removed(container_id: str) -> None:
    """Called after a container is removed; drop anything kept for it.  Observer."""


@hookspec
def moorage_health_result(container_id: str, status: str, exit_code: int, output: str,
                          failing_streak: int) -> None:
    """Called after each health check of a container.  Observer.

    ``status`` is the health status after this check (``starting``,
    ``healthy`` or ``unhealthy``), ``exit_code`` the check's exit code (-1
    when it timed out or could not run) and ``output`` its first 4096 bytes
    of output, decoded as UTF-8 with replacement characters.
    """


# -- container output: inline -----------------------------------------------

@hookspec
def moorage_container_output(container_id: str, generation: int, records: list[dict]) -> None:
    """Called after moord receives output records from a shim, before it acknowledges them.  Inline.

    ``records`` are in sequence order; each has ``seq``, ``stream`` (1 stdout,
    2 stderr), ``data`` (bytes, any length, not split at newlines) and ``ts``.
    ``generation`` counts the container's tasks: it grows at every start, and
    sequence numbers start at 1 again with each generation.  When the hook
    returns, moord may acknowledge the records and the shim may drop them, so
    an implementation that stores output must have written it by then.  It
    runs on the event loop, so a sink that can block (a socket, a journal)
    must hand the records to its own thread or queue.  An exception is
    logged and reported; the records are acknowledged anyway.
    """


@hookspec(firstresult=True)
def moorage_output_position(container_id: str) -> tuple[int, int] | None:
    """Return ``(generation, seq)`` of the last record stored for a container.  Inline.

    moord calls this when it reconnects to a shim, and resumes the shim's
    output after that record, so output is neither lost nor stored twice.
    The first plugin that returns a value wins.
    """


@hookspec(firstresult=True)
def moorage_read_logs(container_id: str) -> Iterator[tuple[str, int, bytes, int, int]] | None:
    """Return an iterator over a container's stored output, oldest first.  Inline.

    Each item is ``(timestamp, stream, line, generation, seq)``, where
    ``timestamp`` is RFC 3339 in UTC with nanoseconds and ``line`` is one
    whole line with its newline (the last line may lack it).  The first
    plugin that returns a value wins.  moord iterates in a worker thread.
    """


@hookspec
def moorage_log_config(container_id: str, container_name: str, driver: str, opts: dict) -> None:
    """Called before a container's first output is delivered: when moord creates it and when it restores it.

    ``driver`` and ``opts`` are the container's logging driver and options,
    from ``moor run --log-driver/--log-opt`` or moord's ``[logging]`` config.
    A plugin that routes output keeps them.  At create, raising
    ``InvalidArgument`` or ``FailedPrecondition`` rejects the container with
    that message; at restore the error is logged and output goes to the
    ``local`` driver.
    """


@hookspec(firstresult=True)
def moorage_log_status(container_id: str) -> dict | None:
    """Return ``{"Name": driver, "Dropped": messages not delivered, "Path": file or ""}`` for inspect.

    The first plugin that returns a value wins.
    """


# -- metrics ------------------------------------------------------------------

@hookspec
def moorage_collect_metrics(container_id: str, cgroup_path: str, pid: int) -> dict | None:
    """Return metrics of one running container as a flat dict of numbers.  Blocking.

    ``cgroup_path`` is the container's cgroup relative to each hierarchy's
    mount point (``/moorage/ID``) and ``pid`` its init's pid on the host.
    moord merges the dicts of every plugin, and later plugins in call order
    override earlier ones.  A plugin that raises or times out is left out of
    that sample.
    """
