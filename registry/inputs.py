"""Files a user hands crx (pairs, vectors, spec files, corpora, datasets): read with bounds.

Only regular files are read (a device such as ``/dev/zero``, a FIFO or a folder is refused
before it is opened), and never more than a limit of bytes actually read, so a file that lies
about its size (``st_size`` is 0 for devices) cannot exhaust memory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from crx.registry.errors import InvalidInput

MIB = 1024 * 1024


def read_bytes(path: str | Path, *, limit: int, what: str = "file") -> bytes:
    """The bytes of the regular file ``path``, at most ``limit``; else `InvalidInput`."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise InvalidInput(f"cannot read {what} {path}: it is {kind}")
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise InvalidInput(f"{what} {path} is larger than {limit // MIB} MiB")
    return data


def regular_file(path: str | Path, *, limit: int, what: str = "file") -> Path:
    """``path``, checked to be a regular file of at most ``limit`` bytes, for a reader that
    opens it itself (gguf's reader maps the file); else `InvalidInput`."""
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise InvalidInput(f"cannot read {what} {path}: it is {kind}")
    if info.st_size > limit:
        raise InvalidInput(f"{what} {path} is larger than {limit // MIB} MiB")
    return path


def read_text(path: str | Path, *, limit: int, what: str = "file", encoding: str = "utf-8") -> str:
    """`read_bytes`, decoded; a file that is not text is `InvalidInput`."""
    data = read_bytes(path, limit=limit, what=what)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
