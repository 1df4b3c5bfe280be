"""Container roots as overlayfs mounts on the image's shared snapshot.

The snapshot is the read-only lower layer; each container has its own upper
and work folders beside its root, so starting a container costs one mount
instead of a copy of the image.  The snapshot path is written next to the
root, so that a root lost at reboot (mounts do not survive one) can be
mounted again before the container starts.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


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


def mount_overlay(lower: Path, upper: Path, work: Path, target: Path) -> None:
    for path in (lower, upper, work):
        if "," in str(path) or ":" in str(path):
            raise OSError(errno.EINVAL, f"overlay paths cannot contain ',' or ':': {path}")
    _mount(f"lowerdir={lower},upperdir={upper},workdir={work}", target)


def sidecars(dest: Path) -> tuple[Path, Path, Path]:
    """Return the upper folder, work folder and lower-path file of a container root."""
    return (dest.with_name(dest.name + ".upper"), dest.with_name(dest.name + ".work"),
            dest.with_name(dest.name + ".lower"))


def prepare(snapshot: Path, dest: Path) -> None:
    upper, work, lower_file = sidecars(dest)
    for folder in (dest, upper, work):
        folder.mkdir(mode=0o755)
    lower_file.write_text(str(snapshot))
    mount_overlay(snapshot, upper, work, dest)


def ensure_mounted(dest: Path) -> None:
    """Mount a container root again if it is an overlay root that is not mounted."""
    upper, work, lower_file = sidecars(dest)
    if not lower_file.exists() or os.path.ismount(dest):
        return
    log.info("mounting container root %s again", dest)
    mount_overlay(Path(lower_file.read_text()), upper, work, dest)


def ensure_unmounted(dest: Path) -> None:
    """Unmount an overlay container root; the upper folder keeps the container's changes."""
    if sidecars(dest)[2].exists() and os.path.ismount(dest):
        unmount(dest)


def remove(dest: Path) -> None:
    upper, work, lower_file = sidecars(dest)
    if os.path.ismount(dest):
        unmount(dest)
    for folder in (upper, work):
        shutil.rmtree(folder, ignore_errors=True)
    lower_file.unlink(missing_ok=True)
