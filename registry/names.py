"""Validation of user-chosen names and parsing of ``NAME@VERSION`` references.

The rules are `crx.schemas.names` (shared with spec-file validation); this module raises crx's
errors from them.
"""

from __future__ import annotations

from crx.registry.errors import InvalidInput, InvalidName
from crx.schemas.names import (
    MAX_NAME_LENGTH,
    name_problem,
    split_reference,
    split_versioned,
    text_problem,
)

__all__ = ["MAX_NAME_LENGTH", "check_name", "check_text", "parse_versioned"]


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it is usable as a registry name, else raise `InvalidName`."""
    why = name_problem(name)
    if why is not None:
        raise InvalidName(kind, name, why)
    return name


def check_text(what: str, value: str | None, max_length: int | None = None) -> None:
    """Refuse a text the database could not store the same on every backend."""
    if value is None:
        return
    why = text_problem(value, max_length)
    if why is not None:
        raise InvalidInput(f"invalid {what} {value[:60]!a}: {why}")


def parse_reference(ref: str) -> tuple[str, int | None, str | None]:
    """Split ``NAME``, ``NAME@V`` or ``NAME@ALIAS`` into (name, version, alias)."""
    try:
        return split_reference(ref)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def parse_versioned(ref: str) -> tuple[str, int | None]:
    """Split ``NAME`` or ``NAME@V`` into the name and the version (None = latest)."""
    try:
        return split_versioned(ref)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
