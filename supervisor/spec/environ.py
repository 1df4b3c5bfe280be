"""Merging of the image's environment with the run-time environment."""

from __future__ import annotations

import logging

from shim.protocol import InvalidArgument

from .options import parse_env_entry

logger = logging.getLogger(__name__)


def merge_env(image_env: list[str], run_env: list[str], *, container_id: str | None = None) -> list[str]:
    """Merge run-time ``KEY=VALUE`` entries over the image's, by key and in order.

    Each entry is split on its first '=' only, so values may contain '='.  A
    key keeps the position of its first appearance and takes its last value,
    so no key appears twice.  An image entry without '=' (or with an empty
    name) is dropped with a warning, while such a run-time entry raises
    InvalidArgument, because the client must resolve a bare KEY itself.
    """
    merged: dict[str, str] = {}
    for index, entry in enumerate(image_env):
        pair = _split_image_entry(entry, index, container_id)
        if pair is not None:
            merged[pair[0]] = pair[1]

    for entry in run_env:
        if not isinstance(entry, str):
            raise InvalidArgument(f"invalid environment entry {entry!r}: expected a KEY=VALUE string")
        key, value = parse_env_entry(entry, "environment")
        merged[key] = value

    return [f"{key}={value}" for key, value in merged.items()]


def _split_image_entry(entry, index: int, container_id: str | None) -> tuple[str, str] | None:
    if not isinstance(entry, str):
        raise InvalidArgument(
            f"invalid image config: Env[{index}] is {entry!r}, not a KEY=VALUE string. "
            f"Fix the image's Env and import it again")

    key, sep, value = entry.partition("=")
    if not sep or not key:
        logger.warning(
            "dropping image environment entry %r for container %s: it is not KEY=VALUE",
            entry, container_id)
        return None
    return key, value
