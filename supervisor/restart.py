"""Restart policies: parsing and the pure decision of whether and when to restart."""

from __future__ import annotations

from dataclasses import dataclass

from shim.protocol import InvalidArgument

BACKOFF_BASE_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 60.0
# A run that stays up this long resets the backoff delay to its base.
STABLE_SECONDS = 10.0
POLICIES = ("no", "on-failure", "always", "unless-stopped")


@dataclass(frozen=True)
class RestartPolicy:
    """A parsed ``--restart`` value."""

    name: str = "no"
    max_retries: int = 0

    def __str__(self) -> str:
        if self.name == "on-failure" and self.max_retries:
            return f"on-failure:{self.max_retries}"
        return self.name


def parse_policy(text: str) -> RestartPolicy:
    name, _, retries = (text or "no").partition(":")
    if name not in POLICIES:
        raise InvalidArgument(
            f"invalid restart policy {text!r}: use one of no, on-failure[:max-retries], always, unless-stopped")
    if not retries:
        return RestartPolicy(name)
    if name != "on-failure":
        raise InvalidArgument(f"invalid restart policy {text!r}: only on-failure takes a maximum retry count")
    if not retries.isdigit() or int(retries) < 0:
        raise InvalidArgument(f"invalid restart policy {text!r}: the maximum retry count must be a whole number")
    return RestartPolicy(name, int(retries))


def should_restart(policy: RestartPolicy, exit_code: int, restart_count: int, manually_stopped: bool) -> bool:
    """Decide whether a container that exited on its own is started again."""
    if manually_stopped or policy.name == "no":
        return False
    if policy.name == "on-failure":
        if exit_code == 0:
            return False
        return policy.max_retries == 0 or restart_count < policy.max_retries
    return True


def backoff_delay(failures_in_a_row: int) -> float:
    """Return the delay before the next restart: doubling from 100 ms up to 60 s."""
    return min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * (2 ** max(0, failures_in_a_row)))
