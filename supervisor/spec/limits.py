"""Resource limits (rlimits) and capability names that an OCI config may use on Linux."""

from __future__ import annotations

from shim.protocol import InvalidArgument

# RLIM_INFINITY as the OCI runtime spec encodes it (a uint64 with every bit set).
RLIM_INFINITY = 2**64 - 1

NR_OPEN_PATH = "/proc/sys/fs/nr_open"

# docker's --ulimit names and the rlimit type each one sets.
ULIMIT_TYPES = {
    "core": "RLIMIT_CORE",
    "cpu": "RLIMIT_CPU",
    "data": "RLIMIT_DATA",
    "fsize": "RLIMIT_FSIZE",
    "locks": "RLIMIT_LOCKS",
    "memlock": "RLIMIT_MEMLOCK",
    "msgqueue": "RLIMIT_MSGQUEUE",
    "nice": "RLIMIT_NICE",
    "nofile": "RLIMIT_NOFILE",
    "nproc": "RLIMIT_NPROC",
    "rss": "RLIMIT_RSS",
    "rtprio": "RLIMIT_RTPRIO",
    "rttime": "RLIMIT_RTTIME",
    "sigpending": "RLIMIT_SIGPENDING",
    "stack": "RLIMIT_STACK",
}

# Every rlimit type that Linux defines, including RLIMIT_AS, which has no docker --ulimit name.
RLIMIT_TYPES = frozenset(ULIMIT_TYPES.values()) | {"RLIMIT_AS"}

# Linux capabilities up to CAP_CHECKPOINT_RESTORE (Linux 5.9), in kernel order.
CAPABILITIES = frozenset(f"CAP_{name}" for name in (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
    "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
    "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
    "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
    "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE"))


def format_limit(value: int) -> str:
    """Render an rlimit value for a message, with RLIM_INFINITY as "unlimited"."""
    return "unlimited" if value == RLIM_INFINITY else str(value)


def read_nr_open() -> int | None:
    """Return the kernel's maximum for RLIMIT_NOFILE, or None if it cannot be read."""
    try:
        with open(NR_OPEN_PATH, encoding="ascii") as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return None


def check_rlimit(rlimit_type: str, soft: int, hard: int, where: str) -> None:
    """Reject a soft limit above its hard limit, and an open-files limit above nr_open.

    ``where`` names the option or config field in the message.
    """
    if soft > hard:
        raise InvalidArgument(
            f"invalid {where}: the soft limit {format_limit(soft)} is above the hard limit "
            f"{format_limit(hard)}. Lower the soft limit or raise the hard limit")

    if rlimit_type != "RLIMIT_NOFILE":
        return
    nr_open = read_nr_open()
    if nr_open is not None and hard > nr_open:
        raise InvalidArgument(
            f"invalid {where}: the open-files limit {format_limit(hard)} is above the kernel "
            f"maximum {nr_open} ({NR_OPEN_PATH}), so the container could not start. "
            f"Use at most {nr_open}")
