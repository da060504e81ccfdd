"""Engines and transactions for SQLite and PostgreSQL.

SQLite needs care to be safe under several processes: WAL journal (readers never block the
writer), a busy timeout (writers wait instead of failing), and ``BEGIN IMMEDIATE`` for write
transactions, so a transaction that reads then writes takes the write lock up front instead of
failing with "database is locked" when it tries to upgrade its lock (pysqlite's default
deferred ``BEGIN`` cannot wait for that). SQLAlchemy's documented recipe: turn pysqlite's own
transaction handling off and emit ``BEGIN`` ourselves.

On PostgreSQL a connection that authenticated as a gateway sets its acting person's role at
the start of each transaction (`crx.registry.db.gateway`).

The busy timeout is ``CRX_SQLITE_BUSY_TIMEOUT_MS`` (default 60 000): a writer that waits longer
for another process's write lock fails with `DatabaseUnavailable` naming the lock.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session

from crx.registry.config import redact, scrub, secrets_of
from crx.registry.db import gateway
from crx.registry.errors import DatabaseUnavailable, InvalidInput

SQLITE_BUSY_TIMEOUT_MS = 60_000
ENV_SQLITE_BUSY_TIMEOUT = "CRX_SQLITE_BUSY_TIMEOUT_MS"


def sqlite_busy_timeout_ms() -> int:
    """How long a SQLite writer waits for another's write lock: ``CRX_SQLITE_BUSY_TIMEOUT_MS``,
    else `SQLITE_BUSY_TIMEOUT_MS`."""
    value = os.environ.get(ENV_SQLITE_BUSY_TIMEOUT, "").strip()
    if not value:
        return SQLITE_BUSY_TIMEOUT_MS
    # At most a day: a larger number is a typo, and SQLite's own limit is a 32-bit int.
    if not value.isdigit() or len(value) > 10 or int(value) > 86_400_000:
        raise InvalidInput(
            f"{ENV_SQLITE_BUSY_TIMEOUT} must be a whole number of milliseconds from 0 to "
            f"86400000, not {value!r}"
        )
    return int(value)


def _normalise(url: str) -> str:
    # Users type postgresql://; SQLAlchemy would pick psycopg2, which crx does not depend on.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    """Create an engine for ``url`` with crx's connection settings (nothing is connected yet)."""
    url = _normalise(url)
    if any("@" in secret for secret in secrets_of(url)):
        # SQLAlchemy would split the password at its first @ and send the rest as the host,
        # which the driver then echoes back in its error.
        raise DatabaseUnavailable(
            redact(url), "the password contains '@': percent-encode it as %40 in the URL"
        )
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise DatabaseUnavailable(redact(url), scrub(f"not a database URL ({exc})", url)) from None
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            folder = Path(database).expanduser().parent
            if not folder.is_dir():
                raise DatabaseUnavailable(redact(url), f"folder {folder} does not exist")
            _create_private(Path(database).expanduser())
        kwargs["connect_args"] = {"timeout": sqlite_busy_timeout_ms() / 1000}
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(url, **kwargs)
    except (NoSuchModuleError, ImportError) as exc:
        raise DatabaseUnavailable(
            redact(url), scrub(f"no driver for this URL ({exc})", url)
        ) from None
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    elif engine.dialect.name == "postgresql":
        gateway.install(engine)
    return engine


def _create_private(path: Path) -> None:
    """Create a new SQLite file readable by its owner only (SQLite gives its journal files the
    same mode); an existing file is left as it is."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return
    except OSError as exc:
        raise DatabaseUnavailable(str(path), f"cannot create it: {exc.strerror or exc}") from None


def _configure_sqlite(engine: Engine) -> None:
    busy_timeout = sqlite_busy_timeout_ms()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_timeout}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("crx_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextmanager
def transaction(engine: Engine, *, write: bool) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on any exception."""
    bind = engine.execution_options(crx_write=True) if write else engine
    with Session(bind, expire_on_commit=False) as session, session.begin():
        yield session
