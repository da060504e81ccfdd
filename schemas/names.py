"""The rules for user-chosen names and ``NAME@VERSION`` references, as plain functions.

They live here, beside the spec-file models that validate names, so that `crx.schemas` needs
nothing from the library; `crx.registry.names` raises crx's own errors from the same rules.
"""

from __future__ import annotations

import re
import unicodedata

MAX_NAME_LENGTH = 200
MAX_VERSION_DIGITS = 10  # versions are 32-bit integers in the database (2^31 - 1)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def text_problem(value: str, max_length: int | None = None) -> str | None:
    """Why ``value`` cannot be stored as text on every backend, or None if it can: lone
    surrogates (bytes that were not UTF-8, as a shell passes them), NUL (PostgreSQL refuses it)
    or more characters than the column holds (PostgreSQL refuses, SQLite would not)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid UTF-8 text"
    if "\x00" in value:
        return "it contains a NUL character"
    if max_length is not None and len(value) > max_length:
        return f"it is longer than {max_length} characters"
    return None


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a registry name, or None if it can.

    Names end up in file names, URLs, shells and ``NAME@V`` references, so ``/``, ``\\``,
    ``..``, ``@``, a leading ``-``, control, invisible and layout characters, surrounding
    whitespace and names not in Unicode NFC are refused.
    """
    if not name:
        return "it is empty"
    if text_problem(name) is not None:
        return text_problem(name)
    if len(name) > MAX_NAME_LENGTH:
        return f"it is longer than {MAX_NAME_LENGTH} characters"
    if _CONTROL.search(name):
        return "it contains a control character"
    if "/" in name or "\\" in name:
        return "it contains a path separator"
    if ".." in name:
        return "it contains '..'"
    if "@" in name:
        return "'@' separates a name from its version"
    if name != name.strip():
        return "it starts or ends with whitespace"
    if set(name) == {"."}:
        return "it is only dots"
    if name.startswith("-"):
        return "it starts with '-', which reads as an option"
    hidden = [c for c in name if unicodedata.category(c) in ("Cf", "Zl", "Zp", "Cs")]
    if hidden:
        # Bidi overrides and zero-width characters make two names look alike, or one look
        # like another; line separators break one-line output.
        return f"it contains the invisible or layout character U+{ord(hidden[0]):04X}"
    if unicodedata.normalize("NFC", name) != name:
        return "it is not in Unicode NFC form (the same letters would be two names)"
    return None


def invalid_name_message(kind: str, name: str, why: str) -> str:
    return f"invalid {kind} name {name!r}: {why}"


def split_versioned(ref: str) -> tuple[str, int | None]:
    """Split ``NAME`` or ``NAME@V`` into the name and the version (None = latest).

    Raises ``ValueError`` (with the message users see) for a version that is not a positive
    integer.
    """
    name, sep, version = ref.partition("@")
    if not sep:
        return name, None
    # More digits than any version can have is refused before int() (which has its own limit).
    if not version.isdigit() or len(version) > MAX_VERSION_DIGITS or int(version) < 1:
        shown = ref if len(ref) <= 60 else ref[:57] + "..."
        raise ValueError(
            f"invalid version in {shown!r}: expected NAME@N with N a positive integer"
            f" of at most {MAX_VERSION_DIGITS} digits"
        )
    return name, int(version)


def split_reference(ref: str) -> tuple[str, int | None, str | None]:
    """Split ``NAME``, ``NAME@V`` or ``NAME@ALIAS`` into (name, version, alias).

    What follows ``@`` is a version when it is all digits, else an alias name (which follows
    the name rules). Raises ``ValueError`` with the message users see.
    """
    name, sep, tail = ref.partition("@")
    # Anything that starts like a number (or nothing at all) was meant as a version.
    if not sep or not tail or tail[0].isdigit() or tail[0] in "+-":
        name, version = split_versioned(ref)
        return name, version, None
    why = name_problem(tail) if tail else "it is empty"
    if why is not None:
        shown = ref if len(ref) <= 60 else ref[:57] + "..."
        raise ValueError(
            f"invalid reference {shown!r}: expected NAME, NAME@VERSION or NAME@ALIAS ({why})"
        )
    return name, None, tail
