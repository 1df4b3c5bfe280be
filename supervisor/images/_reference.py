"""Image names in the docker reference grammar: ``[REGISTRY/]REPOSITORY[:TAG]``."""

from __future__ import annotations

import re

from shim.protocol import InvalidArgument

DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"

_REFERENCE_RE = re.compile(rf"(?P<repository>{_REPOSITORY})(?::(?P<tag>{_TAG}))?", re.ASCII)
_TAG_RE = re.compile(_TAG, re.ASCII)
_SYNTAX_HELP = ("expected [REGISTRY/]REPOSITORY[:TAG] with a lowercase repository "
                "(letters, digits and the separators . _ -), e.g. busybox:latest")


def parse_reference(ref: str) -> tuple[str, str | None]:
    """Split an image name into (repository, tag or None), or raise InvalidArgument."""
    if "@" in ref:
        raise InvalidArgument(
            f"invalid image name {ref!r}: digest references cannot name an image; use a tag")

    match = _REFERENCE_RE.fullmatch(ref)
    if match is None:
        raise InvalidArgument(f"invalid image name {ref!r}: {_SYNTAX_HELP}")

    repository = match.group("repository")
    if len(repository) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"invalid image name {ref!r}: the repository is longer than "
            f"{MAX_NAME_LENGTH} characters")
    return repository, match.group("tag")


def normalize_name(ref: str) -> str:
    """Return ``repository:tag`` for an image name, adding the default tag ``latest``."""
    repository, tag = parse_reference(ref)
    return f"{repository}:{tag or DEFAULT_TAG}"


def is_tag(value: str) -> bool:
    """Tell whether a value is a bare tag, as OCI layouts store in ref.name annotations."""
    return _TAG_RE.fullmatch(value) is not None
