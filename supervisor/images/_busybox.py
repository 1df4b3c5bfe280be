"""The embedded default image: a root filesystem made from the host's static busybox."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

from shim.protocol import FailedPrecondition, NotFound

BUSYBOX_CONFIG = {
    "Cmd": ["sh"],
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
}

_PT_INTERP = 3
_APPLET_RE = re.compile(r"[A-Za-z0-9_.+\[\]-]+", re.ASCII)
_INSTALL_HINT = "install the package busybox-static (apt-get install busybox-static)"

_FILES = {
    "etc/passwd": ("root:x:0:0:root:/root:/bin/sh\n"
                   "user:x:1000:1000:user:/home/user:/bin/sh\n"
                   "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
    "etc/group": "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n",
    "etc/hostname": "localhost\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
}
# Folders and their modes; the owner is root except for home/user.
_FOLDERS = {
    "bin": 0o755, "dev": 0o755, "etc": 0o755, "home": 0o755, "home/user": 0o755,
    "proc": 0o555, "root": 0o700, "sys": 0o555, "tmp": 0o1777, "usr": 0o755,
    "usr/bin": 0o755, "var": 0o755, "var/tmp": 0o1777,
}


def check_static(busybox: Path) -> None:
    """Raise FailedPrecondition unless ``busybox`` is a statically linked ELF executable.

    A dynamic executable has a PT_INTERP program header naming its loader, which an
    image that holds only busybox does not contain.
    """
    try:
        with open(busybox, "rb") as elf:
            program_types = _program_header_types(elf.read(), busybox)
    except FileNotFoundError:
        raise NotFound(f"{busybox} not found; {_INSTALL_HINT}") from None

    if _PT_INTERP in program_types:
        raise FailedPrecondition(
            f"{busybox} is dynamically linked, so it cannot run in an image without its "
            f"libraries; {_INSTALL_HINT}, which installs a static /bin/busybox")


def _program_header_types(data: bytes, path: Path) -> list[int]:
    """Return the p_type of every program header of an ELF file."""
    if data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        raise FailedPrecondition(f"{path} is not an ELF executable; {_INSTALL_HINT}")

    order = "<" if data[5] == 1 else ">"
    if data[4] == 2:
        (offset,) = struct.unpack_from(order + "Q", data, 32)
        entry_size, count = struct.unpack_from(order + "HH", data, 54)
    else:
        (offset,) = struct.unpack_from(order + "I", data, 28)
        entry_size, count = struct.unpack_from(order + "HH", data, 42)

    if offset + entry_size * count > len(data) or entry_size < 4:
        raise FailedPrecondition(f"{path} has truncated ELF program headers; {_INSTALL_HINT}")
    return [struct.unpack_from(order + "I", data, offset + i * entry_size)[0]
            for i in range(count)]


def list_applets(busybox: Path) -> list[str]:
    """Return the applet names that ``busybox --list`` prints, each checked as a file name."""
    result = subprocess.run([str(busybox), "--list"], capture_output=True, text=True,
                            timeout=30, check=False)
    if result.returncode != 0:
        raise FailedPrecondition(
            f"`{busybox} --list` failed with status {result.returncode}: {result.stderr.strip()}; "
            f"{_INSTALL_HINT}")

    applets = result.stdout.split()
    return [name for name in applets
            if _APPLET_RE.fullmatch(name) and name not in (".", "..", "busybox")]


def build_busybox_root(root: Path, busybox: Path, applets: list[str]) -> None:
    """Fill an empty folder with bin/busybox, one symlink per applet and a minimal /etc."""
    for folder, mode in _FOLDERS.items():
        (root / folder).mkdir()
        os.chmod(root / folder, mode)
    os.chown(root / "home/user", 1000, 1000)

    shutil.copyfile(busybox, root / "bin/busybox")
    os.chmod(root / "bin/busybox", 0o755)
    for applet in applets:
        os.symlink("busybox", root / "bin" / applet)
    # Scripts often start with #!/usr/bin/env, and busybox picks the applet from argv[0].
    os.symlink("../../bin/busybox", root / "usr/bin/env")

    for name, text in _FILES.items():
        (root / name).write_text(text)
        os.chmod(root / name, 0o644)
