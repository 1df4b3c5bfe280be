"""Anonymous volumes for the paths in an image config's ``Volumes``.

As with docker, each such path gets a new folder under ``ROOT/volumes/<id>``
that is bind-mounted at that path, unless a ``-v`` of the user mounts something
there already.  The new volume starts with a copy of what the image has at that
path.  A volume is removed with its container only by ``moor rm -v`` or after
``--rm``; otherwise it stays on disk.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import stat
import subprocess
from pathlib import Path

from shim.protocol import InvalidArgument, MoorError

log = logging.getLogger(__name__)


def image_volume_paths(image_config: dict) -> list[str]:
    """Return the image's volume paths, cleaned and sorted, rejecting relative paths and ``..``."""
    volumes = image_config.get("Volumes") or {}
    if not isinstance(volumes, dict):
        raise InvalidArgument(f"invalid image config: Volumes is a {type(volumes).__name__}, "
                              "expected an object of paths; rebuild the image")
    paths = set()
    for path in volumes:
        if not isinstance(path, str) or not path.startswith("/") or ".." in path.split("/") or "\0" in path:
            raise InvalidArgument(f"invalid image volume path {path!r}: expected an absolute path without '..'; "
                                  "rebuild the image")
        cleaned = os.path.normpath(path)
        if cleaned == "/":
            raise InvalidArgument("invalid image volume path '/': a volume cannot replace the root filesystem; "
                                  "rebuild the image")
        paths.add(cleaned)
    return sorted(paths)


def create_volumes(volumes_root: Path, image_config: dict, rootfs: Path, bind_destinations: set[str],
                   container_id: str) -> list[dict]:
    """Make one volume per image volume path that ``bind_destinations`` does not cover, filled from ``rootfs``.

    Returns ``{"id", "source", "destination"}`` per volume.  If a copy fails,
    the volumes created so far are removed before the error is raised.
    """
    created: list[dict] = []
    try:
        for destination in image_volume_paths(image_config):
            if destination in bind_destinations:
                continue
            volume_id = secrets.token_hex(32)
            source = volumes_root / volume_id
            volumes_root.mkdir(mode=0o700, parents=True, exist_ok=True)
            source.mkdir(mode=0o755)
            created.append({"id": volume_id, "source": str(source), "destination": destination})
            _copy_image_content(rootfs, destination, source, container_id)
            log.info("container %s: volume %s created for %s", container_id, volume_id[:12], destination)
    except BaseException:
        remove_volumes(created, container_id)
        raise
    return created


def _copy_image_content(rootfs: Path, destination: str, volume: Path, container_id: str) -> None:
    """Copy the image's folder at ``destination`` into ``volume`` with owners, modes and links kept.

    The path is walked one component at a time without following symbolic links. When a
    component is a link, nothing is copied, and runc resolves the mount point inside the root.
    """
    current = rootfs
    for part in destination.strip("/").split("/"):
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(info.st_mode):
            log.warning("container %s: image volume path %s passes through the symbolic link %s; "
                        "the volume starts empty", container_id, destination, current)
            return
    if not stat.S_ISDIR(info.st_mode):
        raise InvalidArgument(f"image volume path {destination} is not a folder in the image; a volume "
                              "can only be mounted on a folder. Mount a file with -v HOST:CONTAINER instead")

    os.chown(volume, info.st_uid, info.st_gid)
    os.chmod(volume, stat.S_IMODE(info.st_mode))
    if not any(os.scandir(current)):
        return
    copied = subprocess.run(["cp", "-a", "--reflink=auto", "--", f"{current}/.", str(volume)],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    if copied.returncode != 0:
        raise MoorError(f"cannot copy the image's content at {destination} into its volume: "
                        f"{copied.stderr.strip()}")


def remove_volumes(volumes: list[dict], container_id: str) -> None:
    """Delete the folders of ``volumes``; a failure is logged and the others are still removed."""
    for volume in volumes:
        try:
            shutil.rmtree(volume["source"])
            log.info("container %s: volume %s removed", container_id, volume["id"][:12])
        except FileNotFoundError:
            pass
        except OSError as error:
            log.error("container %s: cannot remove volume %s: %s", container_id, volume["source"], error)
