"""Where the registry lives: the database URL and the store URL, from arguments or environment.

Precedence: an explicit argument, then ``CRX_DATABASE_URL`` / ``CRX_STORE_URL``, then the
embedded default under ``CRX_HOME`` (``~/.crx``): ``registry.db`` (SQLite) and ``store/``.
"""

from __future__ import annotations

import os
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


# Query parameters that carry a credential in database and store URLs (libpq, boto, fsspec).
_SECRET_KEYS = ("password", "passwd", "pwd", "secret", "token", "key", "sslpassword")
# A secret this short is replaced only where it sits in a URL, not everywhere in a message.
_MIN_SCRUBBED = 4


def _is_secret_key(key: str) -> bool:
    return any(k in key.lower() for k in _SECRET_KEYS)


def _split(url: str) -> tuple[str, str, str, str, str] | None:
    """(scheme://, userinfo, host and path, ?, query) of a URL with a userinfo or a query."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    head, qmark, query = rest.partition("?")
    netloc, slash, path = head.partition("/")
    # The *last* @ ends the userinfo: a password may itself contain @ (u:SEC@RET@host).
    userinfo, at, host = netloc.rpartition("@")
    return scheme + sep, userinfo if at else "", host + slash + path, qmark, query


def secrets_of(url: str) -> list[str]:
    """The credentials written in ``url``: its userinfo's password and credential queries."""
    parts = _split(url)
    if parts is None:
        return []
    _, userinfo, _, _, query = parts
    found = [userinfo.split(":", 1)[1]] if ":" in userinfo else []
    for item in query.split("&"):
        key, eq, value = item.partition("=")
        if eq and _is_secret_key(key):
            found.append(value)
    return [f for f in found if f]


def redact(url: str) -> str:
    """The URL with every credential it carries replaced by ``***``, safe to show."""
    parts = _split(url)
    if parts is None:
        return url
    scheme, userinfo, rest, qmark, query = parts
    user = userinfo.split(":", 1)[0] + (":***" if ":" in userinfo else "")
    items = []
    for item in query.split("&") if query else []:
        key, eq, value = item.partition("=")
        items.append(f"{key}=***" if eq and value and _is_secret_key(key) else item)
    return scheme + (user + "@" if userinfo else "") + rest + qmark + "&".join(items)


def scrub(text: str, *urls: str) -> str:
    """``text`` (a message, perhaps from a lower library) with the credentials of ``urls``
    replaced by ``***``: what a driver or botocore echoes back never reaches the user."""
    for url in urls:
        text = text.replace(url, redact(url))
        # Longest first, so a secret that contains another is replaced whole.
        for secret in sorted(secrets_of(url), key=len, reverse=True):
            if len(secret) >= _MIN_SCRUBBED:
                text = text.replace(secret, "***")
    return text
