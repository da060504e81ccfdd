"""Where the registry lives: the database URL and the store URL, from arguments or environment.

Precedence: an explicit argument, then ``CRX_DATABASE_URL`` / ``CRX_STORE_URL``, then the
embedded default under ``CRX_HOME`` (``~/.crx``): ``registry.db`` (SQLite) and ``store/``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

ENV_HOME = "CRX_HOME"
ENV_DATABASE_URL = "CRX_DATABASE_URL"
ENV_STORE_URL = "CRX_STORE_URL"


def crx_home() -> Path:
    """The folder for the embedded default registry and caches (not created here)."""
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".crx").expanduser()


@dataclass(frozen=True)
class Location:
    """A resolved pair of URLs, and whether they are the embedded defaults."""

    database_url: str
    store_url: str
    database_is_default: bool


def resolve(database_url: str | None = None, store_url: str | None = None) -> Location:
    """Resolve the database and store URLs by precedence (argument, environment, default)."""
    home = crx_home()
    db = database_url or os.environ.get(ENV_DATABASE_URL)
    store = store_url or os.environ.get(ENV_STORE_URL)
    return Location(
        database_url=db or f"sqlite:///{home / 'registry.db'}",
        store_url=store or str(home / "store"),
        database_is_default=not db,
    )


_PASSWORD = re.compile(r"(?P<head>://[^:/@]+:)[^@]*(?P<tail>@)")


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``, safe to show in messages."""
    return _PASSWORD.sub(r"\g<head>***\g<tail>", url)
