"""moord's request API on its ROUTER socket.

A client sends one request per operation, and moord replies once or,
for streaming operations (``run`` attached, ``logs`` following, ``exec``),
with any number of ``{"rid", "out": {"s": stream, "d": bytes}}`` messages
followed by the final reply.  Errors are converted to the wire here and only
here; tracebacks stay in moord's log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import time
from collections import deque

import zmq
import zmq.asyncio

from shim import protocol
from shim.protocol import FailedPrecondition, InvalidArgument, MoorError
from supervisor import formats
from supervisor.containers import Container, Manager, parse_signal

log = logging.getLogger(__name__)

# Largest piece of a stored log line that one message carries (a rejoined line has no size limit).
OUTPUT_MESSAGE_BYTES = 256 * 1024


class Api:
    """Dispatches client requests to the container manager and the image store."""

    def __init__(self, manager: Manager, context: zmq.asyncio.Context, path, version: str):
        self.manager = manager
        self.version = version
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        self.socket.bind(f"ipc://{path}")
        os.chmod(path, 0o600)
        self.tasks: set[asyncio.Task] = set()
        self.started = time.time()

    async def serve(self) -> None:
        while True:
            frames = await self.socket.recv_multipart()
            if len(frames) != 2:
                continue
            task = asyncio.get_running_loop().create_task(self._handle(frames[0], frames[1]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _send(self, identity: bytes, message: dict) -> None:
        await self.socket.send_multipart([identity, protocol.pack(message)])

    async def _handle(self, identity: bytes, body: bytes) -> None:
        rid = None
        try:
            request = protocol.unpack(body)
            rid = request.get("rid")
            handler = getattr(self, "op_" + str(request.get("op", "")).replace("-", "_"), None)
            if handler is None:
                raise protocol.NotImplementedOp(f"unknown operation {request.get('op')!r}; is moor newer than moord?")
            result = handler(request, lambda message: self._send(identity, {"rid": rid, "out": message}))
            result = await result
        except MoorError as exc:
            await self._send(identity, protocol.error_reply(rid, exc))
            return
        except Exception as exc:
            log.exception("request %r failed", rid)
            await self._send(identity, protocol.error_reply(rid, MoorError(f"internal error in moord: {exc}")))
            return
        await self._send(identity, protocol.reply(rid, result))

    # -- daemon ---------------------------------------------------------------

    async def op_version(self, request, stream):
        return {"version": self.version, "protocol": protocol.VERSION, "min_protocol": protocol.MIN_VERSION}

    async def op_info(self, request, stream):
        containers = self.manager.containers.values()
        count = lambda status: sum(1 for c in containers if c.record.status == status)
        config = self.manager.config
        return {"version": self.version, "containers": len(self.manager.containers),
                "running": count("running"), "exited": count("exited"), "created": count("created"),
                "images": len(await asyncio.to_thread(self.manager.images.list)),
                "root": str(config.root), "state": str(config.state), "runtime": config.runtime,
                "kernel": platform.release(), "cgroup": formats.cgroup_version(),
                "pid": os.getpid(), "uptime": time.time() - self.started}

    async def op_plugin_ls(self, request, stream):
        return self.manager.plugins.list()

    # -- containers ------------------------------------------------------------

    async def op_create(self, request, stream):
        container = await self.manager.create(request)
        return {"id": container.id, "name": container.record.name}

    async def op_run(self, request, stream):
        """Create and start; with ``attach``, stream output and return the exit code."""
        container = await self.manager.create(request, starting=True)
        if not request.get("attach"):
            await self._start_cleaning_up(container, request)
            return {"id": container.id, "name": container.record.name}
        if request.get("tty") or request.get("open_stdin"):
            return await self._run_interactive(container, request, stream)

        queue: asyncio.Queue = asyncio.Queue()
        container.listeners.add(queue)
        await stream({"id": container.id, "name": container.record.name})
        try:
            await self._start_cleaning_up(container, request)
            code = await self._forward_until_exit(container, queue, stream)
        finally:
            container.listeners.discard(queue)
        if request.get("rm"):
            await self._wait_removed(container)
        return {"id": container.id, "exit_code": code}

    async def _run_interactive(self, container: Container, request: dict, stream) -> dict:
        """Start once the client has attached to the shim, then reply when the container is gone or exited.

        The client reads output from the shim and writes stdin to it, so this
        request only carries the shim's address and the final exit code.
        """
        queue: asyncio.Queue = asyncio.Queue()
        container.listeners.add(queue)
        await stream({"id": container.id, "name": container.record.name,
                      "attach": str(self.manager.shim_folder(container.id) / "shim.sock")})
        try:
            await self._start_cleaning_up(container, request, wait_attach=True)
            code = await self._forward_until_exit(container, queue, None)
        finally:
            container.listeners.discard(queue)
        if request.get("rm"):
            await self._wait_removed(container)
        return {"id": container.id, "exit_code": code}

    async def op_attach(self, request, stream):
        """Return the shim's socket of a running container and whether it has stdin and a terminal."""
        container = self.manager.get(request["id"])
        record = container.record
        if record.status != "running" or not record.shim_pid:
            raise FailedPrecondition(f"cannot attach to container {record.name}: it is {record.status}, "
                                     f"not running (start it with `moor start {record.name}`)")
        return {"id": container.id, "name": record.name, "tty": bool(record.options.get("tty")),
                "open_stdin": bool(record.options.get("open_stdin")),
                "attach": str(self.manager.shim_folder(container.id) / "shim.sock")}

    async def _start_cleaning_up(self, container: Container, request: dict, wait_attach: bool = False) -> None:
        try:
            await self.manager.start(container, wait_attach=wait_attach)
        except Exception:
            if request.get("rm"):
                await self.manager.remove(container, force=True, volumes=True)
            raise

    async def _forward_until_exit(self, container: Container, queue: asyncio.Queue, stream) -> int:
        while True:
            item = await queue.get()
            if item[0] == "output":
                for record in item[2] if stream is not None else ():
                    await stream({"s": record["stream"], "d": record["data"]})
            elif item[0] in ("exit", "removed"):
                if container.record.status == "restarting":
                    continue
                return container.record.exit_code or 0

    async def _wait_removed(self, container: Container) -> None:
        while container.id in self.manager.containers:
            await container.changed.wait()

    async def op_start(self, request, stream):
        container = self.manager.get(request["id"])
        pid = await self.manager.start(container)
        return {"id": container.id, "pid": pid}

    async def op_stop(self, request, stream):
        container = self.manager.get(request["id"])
        await self.manager.stop(container, request.get("timeout"))
        return {"id": container.id}

    async def op_restart(self, request, stream):
        container = self.manager.get(request["id"])
        await self.manager.stop(container, request.get("timeout"))
        await self.manager.start(container)
        return {"id": container.id}

    async def op_kill(self, request, stream):
        container = self.manager.get(request["id"])
        await self.manager.kill(container, parse_signal(request.get("signal", "KILL")))
        return {"id": container.id}

    async def op_rm(self, request, stream):
        container = self.manager.get(request["id"])
        await self.manager.remove(container, force=bool(request.get("force")), volumes=bool(request.get("volumes")))
        return {"id": container.id}

    async def op_wait(self, request, stream):
        container = self.manager.get(request["id"])
        return {"exit_code": await self.manager.wait(container)}

    async def op_ps(self, request, stream):
        containers = self.manager.containers.values()
        if not request.get("all"):
            containers = [c for c in containers if c.record.status in ("running", "restarting")]
        return [formats.summary(c) for c in containers]

    async def op_inspect(self, request, stream):
        return formats.inspect(self.manager.get(request["id"]), self.manager)

    async def op_exec(self, request, stream):
        container = self.manager.get(request["id"])
        session = await self.manager.exec_start(container, request)
        if session.interactive:
            return {"exec_id": session.exec_id, "pid": session.pid,
                    "attach": str(self.manager.shim_folder(container.id) / "shim.sock")}
        try:
            while True:
                item = await session.queue.get()
                if item[0] == "output":
                    await stream({"s": item[1], "d": item[2]})
                else:
                    return {"exit_code": item[1], "signal": item[2]}
        finally:
            container.execs.pop(session.exec_id, None)

    async def op_logs(self, request, stream):
        container = self.manager.get(request["id"])
        follow = (bool(request.get("follow")) and container.record.status in ("running", "restarting")
                  and not request.get("until"))
        queue: asyncio.Queue = asyncio.Queue()
        if follow:
            container.listeners.add(queue)
        try:
            last = await self._send_stored_logs(container, request, stream)
            if follow:
                await self._follow(container, queue, request, stream, last)
        finally:
            container.listeners.discard(queue)
        return {"id": container.id}

    async def _send_stored_logs(self, container: Container, request: dict, stream) -> tuple[int, int]:
        lines = self.manager.plugins.hook.moorage_read_logs(container_id=container.id)
        if lines is None:
            raise FailedPrecondition("no logging plugin stores output; `moor logs` needs the file logger")
        tail = request.get("tail")
        since = formats.since_timestamp(request.get("since"))
        until = formats.since_timestamp(request.get("until"), "--until")
        selected = await asyncio.to_thread(_select_lines, lines, tail, since, until)
        last = (0, 0)
        for ts, stream_number, line, generation, seq in selected:
            # A rejoined line can exceed the message size limit, so it goes out in pieces.
            for start in range(0, max(1, len(line)), OUTPUT_MESSAGE_BYTES):
                message = {"s": stream_number, "d": line[start:start + OUTPUT_MESSAGE_BYTES]}
                if start == 0:
                    message["t"] = ts
                await stream(message)
            last = (generation, seq)
        if selected:
            last = selected[-1][3], selected[-1][4]
        return last

    async def _follow(self, container: Container, queue: asyncio.Queue, request, stream, last) -> None:
        from plugins.filelog import format_time
        while True:
            item = await queue.get()
            if item[0] != "output":
                if container.record.status == "restarting":
                    continue
                return
            generation = item[1]
            for record in item[2]:
                if (generation, record["seq"]) <= last:
                    continue
                await stream({"s": record["stream"], "d": record["data"], "t": format_time(record["ts"])})

    async def op_stats(self, request, stream):
        """Return one metrics sample per container: running ones, every one with ``all``, or those in ``ids``."""
        from plugins.metrics import collect_all, host_memory_bytes, online_cpus
        from plugins.prometheus import metric_targets

        targets = metric_targets(self.manager, include_stopped=True)
        if request.get("ids"):
            requested = {self.manager.get(ref).id for ref in request["ids"]}
            targets = [target for target in targets if target["id"] in requested]
        elif not request.get("all"):
            targets = [target for target in targets if target["status"] == "running"]
        results = await asyncio.to_thread(collect_all, self.manager.plugins, targets)
        return {"ts": time.monotonic(), "host_memory_bytes": host_memory_bytes(), "cpus": online_cpus(),
                "containers": results}

    # -- networks --------------------------------------------------------------

    async def op_network_create(self, request, stream):
        networks = self.manager.networks
        return await asyncio.to_thread(networks.create, request.get("name"), request.get("subnet"),
                                       request.get("gateway"), request.get("mtu") or 1500,
                                       bool(request.get("internal")), request.get("bridge"),
                                       request.get("driver") or "bridge")

    async def op_network_ls(self, request, stream):
        return await asyncio.to_thread(self.manager.networks.list)

    async def op_network_inspect(self, request, stream):
        network = await asyncio.to_thread(self.manager.networks.inspect, request["name"])
        names = {c.id: c.record.name for c in self.manager.containers.values()}
        for lease in network.get("leases", []):
            lease["container_name"] = names.get(lease["container_id"], "")
        return network

    async def op_network_rm(self, request, stream):
        await asyncio.to_thread(self.manager.networks.remove, request["name"])
        return {"name": request["name"]}

    async def op_network_check(self, request, stream):
        return await self.manager.check_network(self.manager.get(request["container"]))

    # -- images ----------------------------------------------------------------

    async def op_image_import_rootfs(self, request, stream):
        image = await asyncio.to_thread(self.manager.images.import_rootfs, request["name"],
                                        _path(request, "dir"))
        self.manager.events.publish(protocol.TOPIC_IMAGE_IMPORT, None, name=image.name, image_id=image.id)
        return formats.image(image)

    async def op_image_import(self, request, stream):
        images = await asyncio.to_thread(self.manager.images.import_archive, _path(request, "file"),
                                         request.get("name"), request.get("platform"))
        for image in images:
            self.manager.events.publish(protocol.TOPIC_IMAGE_IMPORT, None, name=image.name, image_id=image.id)
        return [formats.image(image) for image in images]

    async def op_image_default(self, request, stream):
        image = await asyncio.to_thread(self.manager.images.ensure_busybox)
        return formats.image(image)

    async def op_image_ls(self, request, stream):
        return [formats.image(image) for image in await asyncio.to_thread(self.manager.images.list)]

    async def op_image_rm(self, request, stream):
        used = {c.record.image_id for c in self.manager.containers.values()}
        image = await asyncio.to_thread(self.manager.images.get, request["ref"])
        if image.id in used and not request.get("force"):
            users = [c.record.name for c in self.manager.containers.values() if c.record.image_id == image.id]
            raise FailedPrecondition(
                f"image {request['ref']} is used by container(s) {', '.join(users)}: remove them first (`moor rm`)")
        removed = await asyncio.to_thread(self.manager.images.remove, request["ref"])
        self.manager.events.publish(protocol.TOPIC_IMAGE_DELETE, None, ref=request["ref"])
        return {"removed": removed}

    async def op_image_save(self, request, stream):
        names = await asyncio.to_thread(self.manager.images.save, list(request["refs"]),
                                        _path(request, "file"))
        return {"names": names}

    async def op_image_pull(self, request, stream):
        progress = _ProgressForwarder(asyncio.get_running_loop(), stream)
        image = await asyncio.to_thread(
            self.manager.images.pull, request["ref"], request.get("platform"),
            bool(request.get("insecure")), _optional_path(request, "ca_file"), progress)
        await progress.flush()
        self.manager.events.publish(protocol.TOPIC_IMAGE_IMPORT, None, name=image.name, image_id=image.id)
        return formats.image(image)

    async def op_image_push(self, request, stream):
        progress = _ProgressForwarder(asyncio.get_running_loop(), stream)
        digest = await asyncio.to_thread(
            self.manager.images.push, request["ref"], bool(request.get("insecure")),
            _optional_path(request, "ca_file"), progress)
        await progress.flush()
        return {"digest": digest}

    async def op_image_tag(self, request, stream):
        image = await asyncio.to_thread(self.manager.images.tag, request["source"], request["target"])
        return formats.image(image)

    async def op_login(self, request, stream):
        from supervisor.images.registry import store_credentials
        await asyncio.to_thread(store_credentials, self.manager.images.auth_file, request["registry"],
                                request["user"], request["password"])
        return {"registry": request["registry"]}

    async def op_image_prune(self, request, stream):
        used = {c.record.image_id for c in self.manager.containers.values()}
        return await asyncio.to_thread(self.manager.images.prune, bool(request.get("all")), used)

    async def op_system_df(self, request, stream):
        usage = await asyncio.to_thread(self.manager.images.disk_usage)
        usage["containers"] = len(self.manager.containers)
        return usage


class _ProgressForwarder:
    """Sends pull and push progress from a worker thread to the client, a few times a second."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stream):
        self._loop = loop
        self._stream = stream
        self._last: dict[str, tuple[float, str]] = {}
        self._pending: list = []

    def __call__(self, digest: str, done: int, total: int, status: str) -> None:
        now = time.monotonic()
        last_time, last_status = self._last.get(digest, (0.0, ""))
        if status == last_status and done < total and now - last_time < 0.2:
            return
        self._last[digest] = (now, status)
        message = {"layer": digest, "done": done, "total": total, "status": status}
        self._pending.append(asyncio.run_coroutine_threadsafe(self._stream(message), self._loop))

    async def flush(self) -> None:
        for future in self._pending:
            await asyncio.wrap_future(future)


def _optional_path(request: dict, key: str):
    return _path(request, key) if request.get(key) else None


def _path(request: dict, key: str):
    from pathlib import Path
    value = request.get(key)
    if not isinstance(value, str) or not value.startswith("/"):
        raise InvalidArgument(f"{key} must be an absolute path, got {value!r}")
    return Path(value)


def _select_lines(lines, tail, since, until=None) -> list:
    if since is not None:
        lines = (line for line in lines if line[0] >= since)
    if until is not None:
        lines = (line for line in lines if line[0] < until)
    if tail is not None and int(tail) >= 0:
        return list(deque(lines, maxlen=int(tail)))
    return list(lines)
