"""Files crx writes for the user (exports, ``-o`` documents): never over something by surprise.

A target that exists is replaced only when the caller says so (``--force``), and never when
it is not a regular file (a link, a device, a folder, a FIFO): the data goes to a temporary
file beside the target, then is renamed onto it, so a reader never sees half a file and a
failed write leaves the old one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crx.registry.errors import InvalidInput


@contextmanager
def atomic_output(path: str | Path, *, force: bool = False) -> Iterator[Path]:
    """A temporary path to write; renamed onto ``path`` when the block ends without error."""
    target = Path(path)
    if not target.parent.is_dir():
        raise InvalidInput(f"folder {target.parent} does not exist")
    if os.path.lexists(target):
        if target.is_symlink() or not target.is_file():
            raise InvalidInput(f"{target} exists and is not a regular file: refusing to replace it")
        if not force:
            raise InvalidInput(f"{target} exists: pass --force to replace it")
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise InvalidInput(f"cannot write {target}: {exc.strerror or exc}") from None
    temp = Path(name)
    try:
        yield temp
        os.replace(temp, target)
    except OSError as exc:
        raise InvalidInput(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        temp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, *, force: bool = False) -> Path:
    """Write ``text`` to ``path`` through `atomic_output`."""
    with atomic_output(path, force=force) as temp:
        temp.write_text(text, encoding="utf-8")
    return Path(path)
