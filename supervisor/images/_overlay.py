"""Container roots as overlayfs mounts on the image's shared snapshot.

The image's layer snapshots are the read-only lower folders, topmost first;
each container has its own upper and work folders beside its root, so starting
a container costs one mount instead of a copy of the image.  The lower folders
are written next to the root, one a line, so that a root unmounted while its
container had no task, or lost at reboot, can be mounted again before the
container starts.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


# The kernel takes at most one page of mount options.
_MAX_OPTIONS = 4000


def _mount(options: str, target: Path) -> None:
    if _libc.mount(b"overlay", str(target).encode(), b"overlay", 0, options.encode()) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"mounting overlay on {target} failed: {os.strerror(code)}")


def unmount(target: Path) -> None:
    """Unmount ``target``; a busy mount is detached lazily, with a warning."""
    if _libc.umount2(str(target).encode(), 0) == 0:
        return
    code = ctypes.get_errno()
    if code == errno.EBUSY:
        log.warning("container root %s is busy; detaching it lazily", target)
        if _libc.umount2(str(target).encode(), MNT_DETACH) == 0:
            return
        code = ctypes.get_errno()
    if code not in (errno.EINVAL, errno.ENOENT):
        raise OSError(code, f"unmounting {target} failed: {os.strerror(code)}")


def supported(work_folder: Path) -> bool:
    """Return whether an overlay can be mounted on the filesystem of ``work_folder``."""
    work_folder.mkdir(parents=True, exist_ok=True)
    probe = Path(tempfile.mkdtemp(prefix=".overlay-probe-", dir=work_folder))
    try:
        for name in ("lower", "upper", "work", "merged"):
            (probe / name).mkdir()
        mount_overlay(probe / "lower", probe / "upper", probe / "work", probe / "merged")
        unmount(probe / "merged")
        return True
    except OSError as exc:
        log.warning("overlayfs is not usable under %s (%s); container roots will be copies", work_folder, exc)
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def mount_overlay(lower: Path | list[Path], upper: Path, work: Path, target: Path) -> None:
    lowers = lower if isinstance(lower, list) else [lower]
    for path in (*lowers, upper, work):
        if "," in str(path) or ":" in str(path):
            raise OSError(errno.EINVAL, f"overlay paths cannot contain ',' or ':': {path}")
    options = f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}"
    if len(options) <= _MAX_OPTIONS:
        _mount(options, target)
        return
    _mount_relative(lowers, upper, work, target)


def _mount_relative(lowers: list[Path], upper: Path, work: Path, target: Path) -> None:
    """Mount an overlay with many lower folders through short links beside ``target``.

    The folder ``ROOT.layers`` gets one link per lower folder, named 0, 1, 2...; the
    kernel resolves relative lower names from the caller's working folder, which a
    threaded daemon cannot change, so mount(8) runs in a child started in that folder.
    """
    links = target.with_name(target.name + ".layers")
    shutil.rmtree(links, ignore_errors=True)
    links.mkdir(mode=0o700)
    for index, lower in enumerate(lowers):
        os.symlink(lower, links / str(index))
    relative = ":".join(str(index) for index in range(len(lowers)))
    options = f"lowerdir={relative},upperdir={upper},workdir={work}"
    if len(options) > _MAX_OPTIONS:
        raise OSError(errno.E2BIG, f"the image has too many layers ({len(lowers)}) to mount")
    result = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(target)],
                            cwd=links, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise OSError(errno.EIO, f"mounting overlay on {target} failed: {result.stderr.strip()}")


def sidecars(dest: Path) -> tuple[Path, Path, Path]:
    """Return the upper folder, work folder and lower-path file of a container root."""
    return (dest.with_name(dest.name + ".upper"), dest.with_name(dest.name + ".work"),
            dest.with_name(dest.name + ".lower"))


def prepare(lowers: list[Path], dest: Path) -> None:
    """Make the folders of an overlay container root and mount it; lowers are topmost first."""
    upper, work, lower_file = sidecars(dest)
    for folder in (dest, upper, work):
        folder.mkdir(mode=0o755)
    # The merged root folder takes its owner and mode from the upper folder.
    st = os.stat(lowers[0])
    os.chown(upper, st.st_uid, st.st_gid)
    os.chmod(upper, st.st_mode & 0o7777)
    lower_file.write_text("".join(f"{path}\n" for path in lowers))
    mount_overlay(lowers, upper, work, dest)


def lower_folders(dest: Path) -> list[Path]:
    """Return the lower folders of an overlay container root, or [] for a copied root."""
    _, _, lower_file = sidecars(dest)
    try:
        return [Path(line) for line in lower_file.read_text().splitlines() if line]
    except FileNotFoundError:
        return []


def ensure_mounted(dest: Path) -> None:
    """Mount a container root again if it is an overlay root that is not mounted."""
    upper, work, lower_file = sidecars(dest)
    if not lower_file.exists() or os.path.ismount(dest):
        return
    log.info("mounting container root %s again", dest)
    mount_overlay(lower_folders(dest), upper, work, dest)


def ensure_unmounted(dest: Path) -> None:
    """Unmount an overlay container root; the upper folder keeps the container's changes."""
    if sidecars(dest)[2].exists() and os.path.ismount(dest):
        unmount(dest)


def remove(dest: Path) -> None:
    upper, work, lower_file = sidecars(dest)
    if os.path.ismount(dest):
        unmount(dest)
    for folder in (upper, work, dest.with_name(dest.name + ".layers")):
        shutil.rmtree(folder, ignore_errors=True)
    lower_file.unlink(missing_ok=True)
