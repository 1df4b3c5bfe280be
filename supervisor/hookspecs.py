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


# -- container lifecycle ---------------------------------------------------

@hookspec
def moorage_container_removed(container_id: str) -> None:
    """Called after a container is removed; drop anything kept for it.  Errors are logged."""


# -- container networking --------------------------------------------------

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
