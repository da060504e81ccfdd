"""Validation of user-chosen names and parsing of ``NAME@VERSION`` references."""

from __future__ import annotations

import re

from crx.registry.errors import InvalidInput, InvalidName

MAX_NAME_LENGTH = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it is usable as a registry name, else raise `InvalidName`.

    Names end up in file names, URLs and ``NAME@V`` references, so ``/``, ``\\``, ``..``, ``@``,
    control characters and surrounding whitespace are refused.
    """
    if not name:
        raise InvalidName(kind, name, "it is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(kind, name, f"it is longer than {MAX_NAME_LENGTH} characters")
    if _CONTROL.search(name):
        raise InvalidName(kind, name, "it contains a control character")
    if "/" in name or "\\" in name:
        raise InvalidName(kind, name, "it contains a path separator")
    if ".." in name:
        raise InvalidName(kind, name, "it contains '..'")
    if "@" in name:
        raise InvalidName(kind, name, "'@' separates a name from its version")
    if name != name.strip():
        raise InvalidName(kind, name, "it starts or ends with whitespace")
    return name


def parse_versioned(ref: str) -> tuple[str, int | None]:
    """Split ``NAME`` or ``NAME@V`` into the name and the version (None = latest)."""
    name, sep, version = ref.partition("@")
    if not sep:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise InvalidInput(f"invalid version in {ref!r}: expected NAME@N with N a positive integer")
    return name, int(version)
