"""Container ids and names: generation and validation."""

from __future__ import annotations

import re
import secrets

from shim.protocol import InvalidArgument

NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
ID_PATTERN = re.compile(r"^[0-9a-f]{64}$")
REF_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")

_ADJECTIVES = ("brave", "calm", "eager", "fond", "gentle", "happy", "keen", "lucid", "merry", "nifty",
               "proud", "quiet", "sharp", "steady", "swift", "tidy", "vivid", "warm", "wise", "zen")
_NOUNS = ("anchor", "bay", "buoy", "cove", "dock", "ferry", "harbor", "jetty", "keel", "mast",
          "pier", "quay", "rudder", "sail", "skiff", "tide", "wharf", "yawl", "hull", "helm")


def new_id() -> str:
    return secrets.token_hex(32)


def new_name(taken) -> str:
    """Return an unused name such as ``steady_harbor`` (with a number if needed)."""
    for attempt in range(1000):
        name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NOUNS)}"
        if attempt > 20:
            name += f"_{secrets.randbelow(10000)}"
        if name not in taken:
            return name
    raise RuntimeError("could not find a free container name")


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise InvalidArgument(
            f"invalid container name {name!r}: use 1 to 128 characters from [a-zA-Z0-9_.-], "
            "starting with a letter or digit")
    return name


def check_ref(ref: str) -> str:
    """Check a container reference (id, id prefix or name) before any lookup."""
    if not isinstance(ref, str) or not REF_PATTERN.match(ref):
        raise InvalidArgument(
            f"invalid container id or name {ref!r}: ids are hexadecimal, names use [a-zA-Z0-9_.-]")
    return ref
