"""``moor``: the command-line client, with docker's verbs and flags.

Exit codes: 0 on success; for ``run``, ``start -a`` and ``exec`` the
container's or process's own exit code, 125 when moord reports an error, 126
when the command cannot be run and 127 when it is not found, as docker does.
``attach`` exits with the container's exit code, and a session that the
user detaches from (ctrl-p ctrl-q) exits with 0.
Every other command exits with 1 for an internal error, 2 for invalid input,
3 when the container or image is not found, 4 when a name is already in use,
5 when the object is in the wrong state, 6 when moord is not running and
7 when moord did not answer in time.
"""

from __future__ import annotations

import argparse
import os
import _signal  # the C module: the signal module's enums cost each command 0.6 ms to import
import sys
import time

from shim import protocol
from shim.protocol import InvalidArgument, MoorError, StartFailed
from supervisor import cli_images
from supervisor.cli_images import cmd_login, cmd_pull, cmd_push, cmd_system, cmd_tag  # noqa: F401 (found by name in run())

VERSION = "0.1.0"
RUN_ERROR_EXIT = 125


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r}: use true or false")


def _add_interactive_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--interactive", action="store_true", help="keep stdin open and forward it")
    parser.add_argument("-t", "--tty", action="store_true", help="give the process a terminal")


def _add_session_options(parser: argparse.ArgumentParser, sig_proxy: bool = True) -> None:
    parser.add_argument("--detach-keys", default="ctrl-p,ctrl-q", metavar="KEYS",
                        help="key sequence that detaches, for example ctrl-a,x (default ctrl-p,ctrl-q)")
    if sig_proxy:
        parser.add_argument("--sig-proxy", type=_boolean, nargs="?", const=True, default=True, metavar="BOOL",
                            help="pass the signals moor receives to the process, without -t (default true)")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    _add_interactive_options(parser)
    parser.add_argument("--name", help="container name (default: a generated one)")
    parser.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VALUE]",
                        help="set an environment variable; a bare KEY takes moor's own value")
    parser.add_argument("-w", "--workdir", help="working folder inside the container")
    parser.add_argument("-u", "--user", help="USER[:GROUP], names or numbers from the image")
    parser.add_argument("--restart", default="no", help="no, on-failure[:max-retries], always or unless-stopped")
    parser.add_argument("--read-only", action="store_true", help="mount the container's root read-only")
    parser.add_argument("-v", "--volume", action="append", default=[], metavar="HOST:CONTAINER[:ro]",
                        help="bind-mount a host folder or file")
    parser.add_argument("--entrypoint", help="override the image's entrypoint ('' clears it)")
    parser.add_argument("--hostname", help="container host name (default: the first 12 characters of the id)")
    parser.add_argument("--ulimit", action="append", default=[], metavar="NAME=SOFT[:HARD]",
                        help="resource limit, for example nofile=1024:4096")
    parser.add_argument("--init", action="store_true",
                        help="run an init as PID 1 that forwards signals and reaps zombies (tini)")
    parser.add_argument("-m", "--memory", metavar="BYTES",
                        help="memory limit, a number with an optional unit b, k, m or g (for example 512m)")
    parser.add_argument("--stop-signal", help="signal that `moor stop` sends (default: the image's or SIGTERM)")
    parser.add_argument("--stop-timeout", type=int, help="seconds `moor stop` waits before SIGKILL (default 10)")
    parser.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VALUE", help="set a label")
    parser.add_argument("--health-cmd", help="command line run in the container (with /bin/sh -c) to check its "
                                             "health; exit 0 means healthy")
    parser.add_argument("--health-interval", help="time between checks, for example 30s or 1m (default 30s)")
    parser.add_argument("--health-timeout", help="time one check may take before it counts as failed (default 30s)")
    parser.add_argument("--health-retries", type=int, help="failures in a row that make it unhealthy (default 3)")
    parser.add_argument("--health-start-period", help="time after start in which failures do not count (default 0s)")
    parser.add_argument("--health-on-failure", choices=("none", "kill", "stop", "restart"),
                        help="what to do when the container becomes unhealthy (default none)")
    parser.add_argument("--no-healthcheck", action="store_true", help="disable the image's health check")
    parser.add_argument("--network", "--net", help="bridge (default), none, host, container:NAME, or a network name")
    parser.add_argument("--ip", help="IPv4 address on the network (default: the next free one)")
    parser.add_argument("--add-host", action="append", default=[], metavar="NAME:IP", help="add a line to /etc/hosts")
    parser.add_argument("--dns", action="append", default=[], metavar="IP",
                        help="name server for /etc/resolv.conf (default: the host's non-loopback ones)")
    parser.add_argument("-p", "--publish", action="append", default=[], metavar="[IP:]HOSTPORT:PORT[/PROTO]",
                        help="publish a container port on the host")
    parser.add_argument("-P", "--publish-all", action="store_true",
                        help="publish every port the image exposes on a free host port")
    parser.add_argument("--spec", help="use this OCI config.json instead of generating one (root.path is replaced)")
    parser.add_argument("--log-driver", help="where output goes: local, json-file, journald, syslog or none "
                                             "(default: moord's [logging] driver)")
    parser.add_argument("--log-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="logging driver option, for example max-size=10m or syslog-address=udp://HOST:PORT")
    parser.add_argument("image", help="image name, for example busybox")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="command and arguments (default: the image's)")


class _Unused:
    """Stands in for the parser of a command that this run does not use; accepts and ignores every call."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: self


class _StubbingChoices(dict):
    def __missing__(self, name):
        return _Unused()


class _Formatter(argparse.HelpFormatter):
    """Help formatter that reads the terminal's width only when it formats help.

    argparse makes a formatter for each option it adds, and the default one
    imports shutil to read the terminal size: a few milliseconds per command.
    """

    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
        if width is None:
            try:
                width = os.get_terminal_size(sys.stdout.fileno()).columns - 2
            except (OSError, ValueError):
                width = 78
        super().__init__(prog, indent_increment, max_help_position, width)


class _OneCommandSubParsers(argparse._SubParsersAction):
    """Subcommand action that builds only the parser of the command named on the command line.

    Building every subcommand's parser took about 10 ms of each short
    ``moor`` command, more than parsing itself.  ``wanted`` None builds them all.
    """

    wanted: str | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._name_parser_map = self.choices = _StubbingChoices()

    def add_parser(self, name, **kwargs):
        if self.wanted is not None and self.wanted != name and self.wanted not in kwargs.get("aliases", ()):
            return _Unused()
        kwargs.setdefault("formatter_class", _Formatter)
        return super().add_parser(name, **kwargs)


def _command_word(argv: list[str]) -> str | None:
    """Return the first word of ``argv`` that is not an option or the value of ``--state``."""
    words = iter(argv)
    for word in words:
        if word == "--state":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Return the parser; given ``argv``, with only the subcommand parser that it names."""
    wanted = _command_word(argv) if argv is not None else None
    parser = argparse.ArgumentParser(prog="moor", description="Run and manage containers under moord.",
                                     formatter_class=_Formatter)
    parser.register("action", "parsers", _OneCommandSubParsers)
    parser.add_argument("--state", help="moord's state folder (default $MOORAGE_STATE or /run/moorage)")
    sub = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")
    sub.wanted = wanted

    run = sub.add_parser("run", help="create and start a container")
    run.add_argument("-d", "--detach", action="store_true", help="run in the background and print the id")
    run.add_argument("--rm", action="store_true", help="remove the container when it exits")
    _add_session_options(run)
    _add_run_options(run)
    create = sub.add_parser("create", help="create a container without starting it")
    _add_run_options(create)

    for verb, text in (("start", "start stopped containers"), ("rm", "remove containers"),
                       ("stop", "stop running containers"), ("restart", "restart containers"),
                       ("kill", "send a signal to containers"), ("wait", "wait for containers to exit"),
                       ("inspect", "show containers as JSON")):
        command = sub.add_parser(verb, help=text)
        command.add_argument("containers", nargs="+", metavar="CONTAINER")
    sub.choices["start"].add_argument("-a", "--attach", action="store_true", help="stream output, exit with its code")
    sub.choices["rm"].add_argument("-f", "--force", action="store_true", help="kill running containers first")
    sub.choices["rm"].add_argument("-v", "--volumes", action="store_true",
                                   help="also remove the anonymous volumes of the image's Volumes paths")
    for verb in ("stop", "restart"):
        sub.choices[verb].add_argument("-t", "--time", type=int, help="seconds to wait before SIGKILL")
    sub.choices["kill"].add_argument("-s", "--signal", default="KILL", help="signal name or number (default KILL)")
    sub.choices["inspect"].add_argument("-f", "--format", metavar="TEMPLATE",
                                        help="print each container through a template such as '{{.State.Pid}}' "
                                             "or '{{json .Config}}' (docker's field paths)")

    ps = sub.add_parser("ps", help="list containers")
    ps.add_argument("-a", "--all", action="store_true", help="include stopped containers")
    ps.add_argument("-q", "--quiet", action="store_true", help="print ids only")
    ps.add_argument("--no-trunc", action="store_true", help="print full ids and commands")

    logs = sub.add_parser("logs", help="print a container's output")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the container exits")
    logs.add_argument("--tail", default="all", help="number of lines from the end (default all)")
    logs.add_argument("--since", help="only lines since a time (RFC 3339, unix seconds, or 10m)")
    logs.add_argument("--until", help="only lines before a time (RFC 3339, unix seconds, or 10m for 10 minutes ago)")
    logs.add_argument("-t", "--timestamps", action="store_true", help="prefix each line with its time")
    logs.add_argument("container")

    exec_ = sub.add_parser("exec", help="run a command in a running container")
    _add_interactive_options(exec_)
    _add_session_options(exec_, sig_proxy=False)
    exec_.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VALUE]")
    exec_.add_argument("-w", "--workdir")
    exec_.add_argument("-u", "--user")
    exec_.add_argument("container")
    exec_.add_argument("command", nargs=argparse.REMAINDER)

    attach = sub.add_parser("attach", help="attach to a running container's output, stdin and terminal")
    attach.add_argument("--no-stdin", action="store_true", help="do not forward stdin")
    _add_session_options(attach)
    attach.add_argument("container")

    events = sub.add_parser("events", help="print lifecycle events as they happen")
    events.add_argument("--filter", action="append", default=[], metavar="container=ID|topic=PREFIX")
    events.add_argument("--format", choices=("text", "json"), default="text")

    image = sub.add_parser("image", help="manage images")
    image_sub = image.add_subparsers(dest="image_command", required=True, metavar="COMMAND")
    rootfs = image_sub.add_parser("import-rootfs", help="make a one-layer image from a folder")
    rootfs.add_argument("name")
    rootfs.add_argument("folder")
    archive = image_sub.add_parser("import", help="load an OCI archive or folder, or a `docker save` archive")
    archive.add_argument("file")
    archive.add_argument("--name", help="repository for entries tagged with a bare tag")
    archive.add_argument("--platform", help="OS/ARCH[/VARIANT] to import (default: the host's)")
    image_sub.add_parser("default", help="make the built-in busybox image from the host's busybox-static")
    image_ls = image_sub.add_parser("ls", help="list images")
    image_ls.add_argument("-q", "--quiet", action="store_true")
    image_rm = image_sub.add_parser("rm", help="remove images")
    image_rm.add_argument("-f", "--force", action="store_true")
    image_rm.add_argument("images", nargs="+", metavar="IMAGE")
    sub.add_parser("images", help="list images (same as `image ls`)")
    cli_images.add_image_commands(image_sub, sub)

    plugin = sub.add_parser("plugin", help="manage moord's plugins")
    plugin_sub = plugin.add_subparsers(dest="plugin_command", required=True, metavar="COMMAND")
    plugin_ls = plugin_sub.add_parser("ls", help="list plugins with their version, state and hooks")
    plugin_ls.add_argument("--format", choices=("table", "json"), default="table")

    from supervisor.cli_stats import add_stats_parser
    add_stats_parser(sub)

    network = sub.add_parser("network", help="manage networks")
    network_sub = network.add_subparsers(dest="network_command", required=True, metavar="COMMAND")
    network_create = network_sub.add_parser("create", help="create a bridge network")
    network_create.add_argument("--subnet", required=True, help="IPv4 CIDR, for example 10.231.5.0/24")
    network_create.add_argument("--gateway", help="the bridge's address (default: the first in the subnet)")
    network_create.add_argument("--mtu", type=int, default=1500, help="MTU of the bridge and the veths")
    network_create.add_argument("--internal", action="store_true", help="no default route, no masquerade")
    network_create.add_argument("--bridge", help="bridge interface name (default mb-NAME)")
    network_create.add_argument("--driver", default="bridge", help="bridge, or the driver of a network plugin")
    network_create.add_argument("name")
    network_sub.add_parser("ls", help="list networks")
    network_inspect = network_sub.add_parser("inspect", help="show networks as JSON")
    network_inspect.add_argument("names", nargs="+", metavar="NETWORK")
    network_rm = network_sub.add_parser("rm", help="remove networks")
    network_rm.add_argument("names", nargs="+", metavar="NETWORK")
    network_check = network_sub.add_parser("check", help="check that running containers' networks are intact")
    network_check.add_argument("containers", nargs="+", metavar="CONTAINER")

    sub.add_parser("version", help="print client and moord versions")
    sub.add_parser("info", help="print moord's settings and counts")
    if wanted is not None and wanted not in sub._name_parser_map:
        return _parser()  # an unknown command: the full parser lists the valid ones in its error
    return parser


# -- helpers ---------------------------------------------------------------

def _resolve_env(entries: list[str]) -> list[str]:
    resolved = []
    for entry in entries:
        if "=" in entry:
            resolved.append(entry)
        elif entry in os.environ:
            resolved.append(f"{entry}={os.environ[entry]}")
    return resolved


def key_values(entries: list[str], flag: str) -> dict:
    """Parse repeated KEY=VALUE options such as --log-opt into a dict."""
    values = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not key or not sep:
            raise InvalidArgument(f"invalid {flag} {entry!r}: use KEY=VALUE")
        values[key] = value
    return values


def _run_request(args) -> dict:
    labels = {}
    for label in args.label:
        key, sep, value = label.partition("=")
        if not key:
            raise InvalidArgument(f"invalid label {label!r}: use KEY=VALUE")
        labels[key] = value
    options = {"args": list(args.command), "env": _resolve_env(args.env), "workdir": args.workdir,
               "user": args.user, "hostname": args.hostname, "read_only": args.read_only,
               "volumes": list(args.volume), "ulimits": list(args.ulimit)}
    if args.memory is not None:
        options["memory"] = args.memory
    if args.init:
        options["init"] = True  # sent only when given, so an older moord still takes the request
    if args.entrypoint is not None:
        options["entrypoint"] = [args.entrypoint] if args.entrypoint else []
    request = {"image": args.image, "name": args.name, "restart": args.restart, "options": options,
               "labels": labels, "stop_signal": args.stop_signal,
               "network": {"mode": args.network, "ip": args.ip, "add_hosts": args.add_host, "dns": args.dns,
                           "ports": args.publish, "publish_all": args.publish_all}}
    if args.log_driver or args.log_opt:
        request["log_driver"] = args.log_driver
        request["log_opts"] = key_values(args.log_opt, "--log-opt")
    if args.interactive or args.tty:
        from supervisor import attach
        request.update(attach.interactive_request(args, attached=args.command_name == "run" and not args.detach))
    if args.stop_timeout is not None:
        request["stop_timeout"] = args.stop_timeout
    health = {"cmd": args.health_cmd, "interval": args.health_interval, "timeout": args.health_timeout,
              "retries": args.health_retries, "start_period": args.health_start_period,
              "on_failure": args.health_on_failure, "disabled": args.no_healthcheck}
    request["health"] = {key: value for key, value in health.items() if value not in (None, False)}
    if args.spec:
        from supervisor.ocispec import load_spec_file
        from pathlib import Path
        request["spec"] = load_spec_file(Path(args.spec))
    return request


def _write_output(message: dict, timestamps: bool = False) -> None:
    if "d" not in message:
        return
    out = sys.stdout.buffer if message.get("s", 1) == 1 else sys.stderr.buffer
    data = message["d"]
    if timestamps and "t" in message:
        data = message["t"].encode() + b" " + data
    out.write(data)
    out.flush()


def _ago(ts: float) -> str:
    seconds = max(0, time.time() - ts)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count > 1 else ''}"
    return f"{int(seconds)} second{'s' if int(seconds) != 1 else ''}"


def _status_text(item: dict) -> str:
    status = item["status"]
    if status == "running":
        health = item.get("health")
        if health == "starting":
            return f"Up {_ago(item['started_at'])} (health: starting)"
        return f"Up {_ago(item['started_at'])}" + (f" ({health})" if health else "")
    if status == "exited":
        return f"Exited ({item['exit_code']}) {_ago(item['finished_at'])} ago"
    if status == "restarting":
        return f"Restarting ({item['exit_code']}) {_ago(item['finished_at'])} ago"
    return status.capitalize()


# -- commands --------------------------------------------------------------

def cmd_run(client, args) -> int:
    request = _run_request(args)
    request["rm"] = args.rm
    if args.detach:
        result = client.call("run", **request)
        print(result["id"])
        return 0
    request["attach"] = True
    if args.interactive or args.tty:
        from supervisor import attach
        return attach.run_interactive(client, request, args)
    rid = client.send("run", **request)
    target: dict = {}
    _forward_signals(client, target)

    def on_output(message: dict) -> None:
        if "id" in message:
            target["id"] = message["id"]
        _write_output(message)
    result = client.wait(rid, on_output=on_output)
    return int(result["exit_code"])


def _forward_signals(client, target: dict) -> None:
    """Pass SIGINT and SIGTERM to the container of a foreground run, as docker's sig-proxy does."""
    def forward(signum, frame):
        if "id" in target:
            client.send("kill", id=target["id"], signal=signum)
    for signum in (_signal.SIGINT, _signal.SIGTERM):
        _signal.signal(signum, forward)


def cmd_attach(client, args) -> int:
    from supervisor import attach

    return attach.attach_container(client, args)


def cmd_create(client, args) -> int:
    print(client.call("create", **_run_request(args))["id"])
    return 0


def _each(client, args, op: str, **extra) -> int:
    status = 0
    for ref in args.containers:
        try:
            # send() puts every argument into the request, so the "timeout" of stop and
            # restart reaches moord instead of becoming the client's reply timeout.
            client.wait(client.send(op, id=ref, **extra))
            print(ref)
        except MoorError as exc:
            print(f"moor: {exc.message}", file=sys.stderr)
            status = exc.exit_code
    return status


def cmd_start(client, args) -> int:
    if args.attach:
        if len(args.containers) != 1:
            raise InvalidArgument("start -a takes exactly one container")
        client.call("start", id=args.containers[0])
        client.call("logs", id=args.containers[0], follow=True, on_output=_write_output)
        return int(client.call("wait", id=args.containers[0])["exit_code"])
    return _each(client, args, "start")


def cmd_stop(client, args) -> int:
    return _each(client, args, "stop", timeout=args.time)


def cmd_restart(client, args) -> int:
    return _each(client, args, "restart", timeout=args.time)


def cmd_kill(client, args) -> int:
    return _each(client, args, "kill", signal=args.signal)


def cmd_rm(client, args) -> int:
    return _each(client, args, "rm", force=args.force, volumes=args.volumes)


def cmd_wait(client, args) -> int:
    for ref in args.containers:
        print(client.call("wait", id=ref)["exit_code"])
    return 0


def cmd_inspect(client, args) -> int:
    items = [client.call("inspect", id=ref) for ref in args.containers]
    import json

    if args.format is None:
        print(json.dumps(items, indent=2))
        return 0
    for item in items:
        print(render_template(args.format, item))
    return 0


def render_template(template: str, item: dict) -> str:
    """Fill ``{{.Path.To.Field}}`` and ``{{json .Path}}`` in ``template`` from ``item``.

    This is the part of Go's text/template that scripts use with docker
    inspect -f; anything else in braces is an error that names it.
    """
    import json
    import re

    def value(match) -> str:
        func, path = match.group(1), match.group(2)
        found = item
        for key in filter(None, path.split(".")):
            if not isinstance(found, dict) or key not in found:
                raise InvalidArgument(f"invalid --format: no field {path!r} in the inspect output "
                                      "(see `moor inspect` for the field names)")
            found = found[key]
        if func == "json":
            return json.dumps(found)
        if isinstance(found, bool):
            return "true" if found else "false"
        if found is None:
            return "<no value>"
        return json.dumps(found) if isinstance(found, (dict, list)) else str(found)

    pattern = re.compile(r"\{\{\s*(?:(json)\s+)?(\.[A-Za-z0-9_.]*)\s*\}\}")
    text = pattern.sub(value, template)
    leftover = re.search(r"\{\{.*?\}\}", text)
    if leftover:
        raise InvalidArgument(f"invalid --format: {leftover.group(0)!r} is not supported; use {{{{.Field.Path}}}} "
                              "or {{json .Field}}")
    return text


def cmd_ps(client, args) -> int:
    items = client.call("ps", all=args.all)
    if args.quiet:
        for item in items:
            print(item["id"] if args.no_trunc else item["id"][:12])
        return 0
    rows = [("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES")]
    for item in items:
        command = " ".join(item["command"])
        if not args.no_trunc and len(command) > 20:
            command = command[:19] + "…"
        rows.append((item["id"] if args.no_trunc else item["id"][:12], item["image"], f'"{command}"',
                     f"{_ago(item['created'])} ago", _status_text(item), item["name"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def cmd_logs(client, args) -> int:
    tail = None if args.tail == "all" else args.tail
    if tail is not None and (not tail.isdigit()):
        raise InvalidArgument(f"invalid --tail {args.tail!r}: give a number of lines or 'all'")
    client.call("logs", id=args.container, follow=args.follow, tail=None if tail is None else int(tail),
                since=args.since, until=args.until, on_output=lambda message: _write_output(message, args.timestamps))
    return 0


def cmd_exec(client, args) -> int:
    if not args.command:
        raise InvalidArgument("no command given: moor exec CONTAINER COMMAND [ARG...]")
    if args.interactive or args.tty:
        from supervisor import attach
        return attach.exec_interactive(client, args, _resolve_env(args.env))
    result = client.call("exec", id=args.container, args=list(args.command), env=_resolve_env(args.env),
                         workdir=args.workdir, user=args.user, on_output=_write_output)
    return int(result["exit_code"])


def cmd_events(client, args) -> int:
    from supervisor.client import subscribe_events
    container, topics = None, []
    for item in args.filter:
        key, _, value = item.partition("=")
        if key == "container":
            container = value
        elif key == "topic":
            topics.append(value)
        else:
            raise InvalidArgument(f"invalid --filter {item!r}: use container=ID or topic=PREFIX")
    sub = subscribe_events(args.state, tuple(topics) or ("",))
    while True:
        _, body = sub.recv_multipart()
        event = protocol.unpack(body)
        cid = event.get("id") or ""
        if container and not (cid.startswith(container) or event.get("payload", {}).get("name") == container):
            continue
        if args.format == "json":
            import json

            print(json.dumps(event), flush=True)
        else:
            details = " ".join(f"{k}={v}" for k, v in sorted(event.get("payload", {}).items()))
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(event["ts"]))
            print(f"{stamp} {event['topic']} {cid[:12]} {details}".rstrip(), flush=True)


def cmd_image(client, args) -> int:
    command = args.image_command
    if command in cli_images.IMAGE_COMMANDS:
        return cli_images.cmd_image_more(client, args)
    if command == "import-rootfs":
        image = client.call("image_import_rootfs", name=args.name, dir=os.path.abspath(args.folder))
        print(image["id"])
    elif command == "import":
        for image in client.call("image_import", file=os.path.abspath(args.file), name=args.name,
                                 platform=args.platform):
            print(f"{image['name']} {image['id']}")
    elif command == "default":
        image = client.call("image_default")
        print(f"{image['name']} {image['id']}")
    elif command == "ls":
        return _image_ls(client, args.quiet)
    elif command == "rm":
        status = 0
        for ref in args.images:
            try:
                client.call("image_rm", ref=ref, force=args.force)
                print(f"Untagged: {ref}")
            except MoorError as exc:
                print(f"moor: {exc.message}", file=sys.stderr)
                status = exc.exit_code
        return status
    return 0


def _image_ls(client, quiet: bool) -> int:
    images = client.call("image_ls")
    if quiet:
        for image in images:
            print(image["id"].split(":")[-1][:12])
        return 0
    rows = [("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE")]
    for image in images:
        repository, _, tag = image["name"].rpartition(":")
        rows.append((repository, tag, image["id"].split(":")[-1][:12], f"{_ago(image['created'])} ago",
                     f"{image['size'] / 1e6:.1f}MB"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def cmd_stats(client, args) -> int:
    from supervisor.cli_stats import run_stats
    return run_stats(client, args)


def cmd_network(client, args) -> int:
    command = args.network_command
    if command == "create":
        network = client.call("network_create", name=args.name, subnet=args.subnet, gateway=args.gateway,
                              mtu=args.mtu, internal=args.internal, bridge=args.bridge, driver=args.driver)
        print(network["name"])
    elif command == "ls":
        rows = [("NAME", "DRIVER", "SUBNET", "BRIDGE", "CONTAINERS")]
        for item in client.call("network_ls"):
            rows.append((item["name"], item["driver"], item.get("subnet", ""), item.get("bridge", ""),
                         str(item.get("containers", ""))))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("   ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    elif command == "inspect":
        import json

        print(json.dumps([client.call("network_inspect", name=name) for name in args.names], indent=2))
    elif command == "check":
        status = 0
        for ref in args.containers:
            try:
                check = client.call("network_check", container=ref)
            except MoorError as exc:
                print(f"moor: {exc.message}", file=sys.stderr)
                status = exc.exit_code
                continue
            print(f"{ref}: {check['status']}")
            for error in check["errors"]:
                print(f"moor: {ref}: {error}", file=sys.stderr)
                status = 1
        return status
    elif command == "rm":
        status = 0
        for name in args.names:
            try:
                client.call("network_rm", name=name)
                print(name)
            except MoorError as exc:
                print(f"moor: {exc.message}", file=sys.stderr)
                status = exc.exit_code
        return status
    return 0


def cmd_images(client, args) -> int:
    return _image_ls(client, False)


def cmd_plugin(client, args) -> int:
    plugins = client.call("plugin_ls", timeout=10)
    if args.format == "json":
        import json

        print(json.dumps(plugins, indent=2))
        return 0
    rows = [("NAME", "VERSION", "STATE", "ERRORS", "SOURCE", "HOOKS")]
    for item in plugins:
        hooks = ",".join(hook.removeprefix("moorage_") for hook in item["hooks"])
        rows.append((item["name"], item["version"] or "-", item["state"], str(item["errors"]), item["source"],
                     hooks or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    for item in plugins:
        if item["error"]:
            print(f"{item['name']}: {item['error']}", file=sys.stderr)
    return 0


def cmd_version(client, args) -> int:
    print(f"Client: moor {VERSION} (protocol {protocol.VERSION})")
    server = client.call("version", timeout=10)
    print(f"Server: moord {server['version']} (protocol {server['min_protocol']}-{server['protocol']})")
    return 0


def cmd_info(client, args) -> int:
    for key, value in client.call("info", timeout=10).items():
        print(f"{key}: {value}")
    return 0


_RUN_LIKE = {"run", "exec"}


def main(argv: list[str] | None = None) -> int:
    """Run one command, then end the process at once with its exit code.

    ``os._exit`` skips the interpreter's teardown, about 10 ms of a short
    command; there is nothing to clean up once the output is flushed.
    """
    code = run(argv)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        pass
    os._exit(code)


def run(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser(argv).parse_args(argv)
    name = args.command_name
    handler = globals()[f"cmd_{name}"]
    try:
        from supervisor.client import Client
        client = Client(args.state)
        return handler(client, args)
    except StartFailed as exc:
        print(f"moor: {exc.message}", file=sys.stderr)
        return exc.status if name in _RUN_LIKE or name == "start" else exc.exit_code
    except MoorError as exc:
        print(f"moor: {exc.message}", file=sys.stderr)
        return RUN_ERROR_EXIT if name in _RUN_LIKE else exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
