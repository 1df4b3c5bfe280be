"""Hook specifications that plugins implement, grouped by lifecycle phase.

Plugins are plain objects or modules with functions marked by
``supervisor.hookspecs.hookimpl``.  moord calls every hook from its event loop
thread, so an implementation must return quickly and must not block; file
writes of a few kilobytes are fine, network calls are not.
"""

from __future__ import annotations

from collections.abc import Iterator

import pluggy

PROJECT = "moorage"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- moord start-up and shutdown -------------------------------------------

@hookspec
def moorage_startup(config) -> None:
    """Called once after moord has opened its state, before it serves requests.

    ``config`` is the daemon's frozen ``DaemonConfig``.  Raising here stops
    moord's start-up with the error.
    """


@hookspec
def moorage_shutdown() -> None:
    """Called once when moord exits; containers keep running.  Errors are logged."""


# -- container output ------------------------------------------------------

@hookspec
def moorage_container_output(container_id: str, generation: int, records: list[dict]) -> None:
    """Called after moord receives output records from a shim, before it acknowledges them.

    ``records`` are in sequence order; each has ``seq``, ``stream`` (1 stdout,
    2 stderr), ``data`` (bytes, any length, not split at newlines) and ``ts``.
    ``generation`` counts the container's tasks: it grows at every start, and
    sequence numbers start at 1 again with each generation.  When the hook
    returns, moord may acknowledge the records and the shim may drop them, so
    an implementation that stores output must have written it by then.
    """


@hookspec(firstresult=True)
def moorage_output_position(container_id: str) -> tuple[int, int] | None:
    """Return ``(generation, seq)`` of the last record stored for a container.

    moord calls this when it reconnects to a shim, and resumes the shim's
    output after that record, so output is neither lost nor stored twice.
    The first plugin that returns a value wins.
    """


@hookspec(firstresult=True)
def moorage_read_logs(container_id: str) -> Iterator[tuple[str, int, bytes, int, int]] | None:
    """Return an iterator over a container's stored output, oldest first.

    Each item is ``(timestamp, stream, line, generation, seq)``, where
    ``timestamp`` is RFC 3339 in UTC with nanoseconds and ``line`` is one
    whole line with its newline (the last line may lack it).  The first
    plugin that returns a value wins.
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


# -- metrics -----------------------------------------------------------------

@hookspec
def moorage_collect_metrics(container_id: str, cgroup_path: str, pid: int) -> dict:
    """Return metrics of one running container as a flat dict of numbers; called after each collection request.

    ``cgroup_path`` is the container's cgroup relative to each hierarchy root
    (``/moorage/<id>``), ``pid`` is its init process.  moord merges the dicts
    of every plugin, later keys winning.  moord calls this from a worker
    thread, so an implementation may read files but must not touch moord's
    state.
    """


# -- container lifecycle ---------------------------------------------------

@hookspec
def moorage_container_removed(container_id: str) -> None:
    """Called after a container is removed; drop anything kept for it.  Errors are logged."""
