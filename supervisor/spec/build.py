"""Generation of a container's OCI runtime config from its image config and run options."""

from __future__ import annotations

import logging
import os
import resource
from dataclasses import dataclass
from pathlib import Path

from shim.protocol import FailedPrecondition, InvalidArgument

from . import defaults
from .environ import merge_env
from .limits import RLIM_INFINITY
from .options import (RunOptions, check_hostname, clean_absolute_path, parse_memory, parse_ulimits,
                      parse_volumes)
from .rootfs import resolve_in_root, resolve_user
from .validate import validate_spec

logger = logging.getLogger(__name__)

# Keys of a complete image config document.  A mapping without any of them
# is taken to be the inner "config" object.
_IMAGE_DOCUMENT_KEYS = ("architecture", "os", "rootfs", "config", "history")


@dataclass(frozen=True)
class ImageSettings:
    """The fields of an image config that shape a container's process."""

    env: list[str] | None
    entrypoint: list[str]
    cmd: list[str]
    workdir: str
    user: str | None


INIT_PATH_IN_CONTAINER = "/sbin/moor-init"


def build_spec(image_config: dict, opts: RunOptions, *, rootfs: str, container_id: str,
               hostname: str, cgroups_path: str,
               nofile_limits: tuple[int, int] | None = None, init_path: str | None = None) -> dict:
    """Generate the OCI config.json content for one container and validate it.

    ``image_config`` is an OCI image config, either the whole document or its
    inner ``config`` object.  ``hostname`` applies unless ``opts.hostname`` is
    set.  ``nofile_limits`` is the (soft, hard) open-files limit the container
    gets when ``--ulimit nofile`` is not given.  None takes this process's
    current limit, so a supervisor that raises its own limit must pass the
    limit it was started with.

    The network namespace is new and runc does not bring its loopback
    interface up, so the caller must set ``lo`` up before the process needs it.
    With ``opts.init``, ``init_path`` (a static init such as tini-static on
    the host) is bind-mounted read-only at /sbin/moor-init and runs as PID 1
    with the command as its child, as docker's ``--init`` does.
    """
    opts.validate()
    _check_arguments(rootfs, container_id, cgroups_path)
    image = read_image_settings(image_config)
    hostname = opts.hostname if opts.hostname is not None else hostname
    check_hostname(hostname, "hostname")

    volumes = parse_volumes(opts.volumes)
    cwd = working_dir(image, opts)
    check_cwd_in_rootfs(Path(rootfs), cwd, volumes)

    process = _process(image, opts, Path(rootfs), cwd, hostname, container_id)
    process["rlimits"] = container_rlimits(opts.ulimits, nofile_limits)

    mounts = container_mounts(volumes)
    if opts.init:
        if not init_path:
            raise FailedPrecondition("--init needs an init program on the host: install tini "
                                     "(`apt-get install tini`) or set init_path in moord's config")
        mounts.append({"destination": INIT_PATH_IN_CONTAINER, "type": "bind", "source": init_path,
                       "options": ["rbind", "ro", "nosuid", "nodev"]})
        process["args"] = [INIT_PATH_IN_CONTAINER, "--", *process["args"]]
    spec = {
        "ociVersion": defaults.OCI_VERSION,
        "process": process,
        "root": {"path": rootfs, "readonly": opts.read_only},
        "hostname": hostname,
        "mounts": mounts,
        "linux": _linux(cgroups_path, opts.memory),
        "annotations": {defaults.CONTAINER_ID_ANNOTATION: container_id},
    }
    validate_spec(spec)
    logger.debug("generated OCI config for container %s", container_id)
    return spec


def _check_arguments(rootfs: str, container_id: str, cgroups_path: str) -> None:
    if not isinstance(container_id, str) or not container_id:
        raise InvalidArgument(f"invalid container id {container_id!r}: expected a non-empty string")
    if not isinstance(rootfs, str) or not os.path.isabs(rootfs) or not os.path.isdir(rootfs):
        raise InvalidArgument(
            f"invalid root filesystem {rootfs!r} for container {container_id}: expected the "
            f"absolute path of an existing directory")
    if not isinstance(cgroups_path, str) or not cgroups_path or ".." in cgroups_path.split("/"):
        raise InvalidArgument(
            f"invalid cgroups path {cgroups_path!r} for container {container_id}: expected a "
            f"non-empty path without '..', such as /moorage/{container_id}")


def read_image_settings(image_config: dict) -> ImageSettings:
    """Read and type-check Env, Entrypoint, Cmd, WorkingDir and User of an image config."""
    if not isinstance(image_config, dict):
        raise InvalidArgument(
            f"invalid image config: expected a JSON object, got {type(image_config).__name__}")
    config = image_config
    if any(key in image_config for key in _IMAGE_DOCUMENT_KEYS):
        config = image_config.get("config")
        config = {} if config is None else config
    if not isinstance(config, dict):
        raise InvalidArgument("invalid image config: \"config\" is not a JSON object. Import the image again")

    return ImageSettings(
        env=_image_list(config, "Env"),
        entrypoint=_image_list(config, "Entrypoint") or [],
        cmd=_image_list(config, "Cmd") or [],
        workdir=_image_string(config, "WorkingDir") or "",
        user=_image_string(config, "User") or None,
    )


def _image_list(config: dict, key: str) -> list[str] | None:
    value = config.get(key)
    is_string_list = isinstance(value, list) and all(isinstance(item, str) for item in value)
    if value is not None and not is_string_list:
        raise InvalidArgument(
            f"invalid image config: {key} is {value!r}, not a list of strings. "
            f"Fix the image and import it again")
    return value


def _image_string(config: dict, key: str) -> str | None:
    value = config.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidArgument(
            f"invalid image config: {key} is {value!r}, not a string. Fix the image and import it again")
    return value


def process_args(image: ImageSettings, opts: RunOptions) -> list[str]:
    """Combine entrypoint and command as docker does.

    A non-empty ``--entrypoint`` replaces the image's Entrypoint and drops its
    Cmd.  An empty one (``--entrypoint ""``) drops only the Entrypoint.
    """
    if opts.entrypoint:
        args = list(opts.entrypoint) + list(opts.args)
    elif opts.entrypoint is not None:
        args = list(opts.args) or list(image.cmd)
    else:
        args = list(image.entrypoint) + (list(opts.args) or list(image.cmd))

    if not args:
        raise InvalidArgument(
            "no command specified: give a command after the image name or set Cmd in the image")
    return args


def working_dir(image: ImageSettings, opts: RunOptions) -> str:
    """Choose the process cwd from ``-w``, the image's WorkingDir or '/', with '..' stopped at '/'."""
    if opts.workdir is not None:
        return clean_absolute_path(opts.workdir, "working directory (-w)")
    if image.workdir:
        return clean_absolute_path(image.workdir, "working directory (image WorkingDir)")
    return "/"


def check_cwd_in_rootfs(rootfs: Path, cwd: str, volumes: list[dict]) -> None:
    """Reject a cwd that exists in the image but is not a directory.

    runc creates a missing cwd itself.  A cwd inside a volume is not checked,
    because the volume hides what the image has there.
    """
    for volume in volumes:
        destination = volume["destination"]
        if cwd == destination or cwd.startswith(destination + "/"):
            return

    resolved = resolve_in_root(rootfs, cwd)
    if resolved.exists() and not resolved.is_dir():
        raise InvalidArgument(
            f"invalid working directory {cwd}: it exists in the image but is not a directory. "
            f"Choose a directory with -w")


def _process(image: ImageSettings, opts: RunOptions, rootfs: Path, cwd: str,
             hostname: str, container_id: str) -> dict:
    image_env = image.env if image.env is not None else [f"PATH={defaults.DEFAULT_PATH}"]
    env = merge_env(image_env, list(opts.env), container_id=container_id)
    base_env = [f"PATH={defaults.DEFAULT_PATH}", f"HOSTNAME={hostname}"]
    capabilities = list(defaults.DEFAULT_CAPABILITIES)

    process = {
        "terminal": False,
        "user": resolve_user(rootfs, opts.user if opts.user is not None else image.user),
        "args": process_args(image, opts),
        "env": merge_env(base_env, env, container_id=container_id),
        "cwd": cwd,
        "capabilities": {
            "bounding": capabilities,
            "effective": list(capabilities),
            "permitted": list(capabilities),
        },
        "noNewPrivileges": True,
    }
    return process


def container_rlimits(ulimits: tuple[str, ...], nofile_limits: tuple[int, int] | None) -> list[dict]:
    """List the ``--ulimit`` rlimits, plus RLIMIT_NOFILE from ``nofile_limits`` if none sets it.

    Other limits are left out so the container inherits them from the
    runtime.  RLIMIT_NOFILE is always explicit, because runc 1.1.5 built with
    Go 1.19 (Debian 12) starts the container with the soft limit that the Go
    runtime raised to the hard limit for itself.
    """
    rlimits = parse_ulimits(ulimits)
    if any(rlimit["type"] == "RLIMIT_NOFILE" for rlimit in rlimits):
        return rlimits

    if nofile_limits is None:
        nofile_limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = [RLIM_INFINITY if value == resource.RLIM_INFINITY else value for value in nofile_limits]
    return rlimits + [{"type": "RLIMIT_NOFILE", "soft": soft, "hard": hard}]


def container_mounts(volumes: list[dict]) -> list[dict]:
    """List the default mounts, then the volumes, shallowest destination first.

    A volume replaces any default mount at or below its destination, as with
    docker's ``-v /host/dev:/dev``.
    """
    def covered(mount: dict) -> bool:
        destination = mount["destination"]
        return any(destination == v["destination"] or destination.startswith(v["destination"] + "/")
                   for v in volumes)

    mounts = [mount for mount in defaults.default_mounts() if not covered(mount)]
    ordered = sorted(volumes, key=lambda volume: volume["destination"].count("/"))
    return mounts + ordered


def _linux(cgroups_path: str, memory: str | None) -> dict:
    # TODO: add a default seccomp profile here as "seccomp". Until then every system call is allowed.
    resources: dict = {"devices": [dict(rule) for rule in defaults.DEVICE_RULES]}
    if memory is not None:
        resources["memory"] = {"limit": parse_memory(memory)}
    return {
        "namespaces": [{"type": name} for name in defaults.NAMESPACES],
        "cgroupsPath": cgroups_path,
        "maskedPaths": list(defaults.MASKED_PATHS),
        "readonlyPaths": list(defaults.READONLY_PATHS),
        "resources": resources,
    }
