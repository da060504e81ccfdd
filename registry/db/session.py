"""`Database`: one registry database, and the only way the library opens a transaction on it.

It owns what every caller of the database needs and none should write again, as MLflow's
``SqlAlchemyStore`` does: the SQLAlchemy engine (created on first use), the schema guard (a
database at another revision refuses work with a message to upgrade; the embedded default
migrates itself on first use), read and write transactions (a write retries on a uniqueness
race, such as two writers taking the same next version number), and the translation of a lost
or unreachable server into `DatabaseUnavailable` with the URL's password redacted.

Layers below the `Registry` facade (workflows, the planner, spec apply) take a `Database`
instead of the facade.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Engine, text
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.orm import Session

from crx.registry.config import crx_home, redact, scrub
from crx.registry.db import migrate
from crx.registry.db.connection import (
    ENV_SQLITE_BUSY_TIMEOUT,
    make_engine,
    sqlite_busy_timeout_ms,
    transaction,
)
from crx.registry.errors import DatabaseRefused, DatabaseUnavailable, InvalidInput

T = TypeVar("T")

# A uniqueness race is retried this many times, with a short growing pause between tries.
WRITE_ATTEMPTS = 20
# The PostgreSQL advisory lock key of the blob lease ("crxblobs" in ASCII).
BLOB_LEASE_KEY = 0x6372_7862_6C6F_6273


def is_uniqueness_race(exc: IntegrityError) -> bool:
    """Whether ``exc`` is a unique-constraint violation (two writers taking the same version
    number, say: worth retrying), not a rule the database refuses on every try."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == "23505":  # PostgreSQL's unique_violation
        return True
    name = getattr(orig, "sqlite_errorname", "")
    return name in ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY")


def take_blob_lease(session: Session, *, exclusive: bool) -> None:
    """Hold the blob lease until this transaction ends.

    A writer puts its blobs before its transaction, then, inside it, checks they are still
    there (`ObjectStore.ensure_present`) before committing rows that point at them; gc deletes
    blobs only inside a transaction that holds the lease alone. So a blob gc deletes is either
    seen referenced (the writer committed first) or put back by the writer (gc went first).
    On PostgreSQL the lease is a transaction-scoped advisory lock, shared by writers; on
    SQLite every write transaction already holds the database's one write lock
    (``BEGIN IMMEDIATE``), which is the same exclusion.
    """
    if session.get_bind().dialect.name == "postgresql":
        lock = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        session.execute(text(f"SELECT {lock}(:key)"), {"key": BLOB_LEASE_KEY})
    else:
        # Take the write lock now. A session begins lazily, at its first statement: without
        # this, a writer's `ensure_present` ran before its BEGIN IMMEDIATE, outside the lease,
        # and a gc committing in between deleted a blob the writer's rows then pointed at
        # (found by tests/test_governance_concurrency.py).
        session.connection()


def session_is_owner(session: Session) -> bool:
    """Whether this session may do the registry owner's work (always, on SQLite: one user's
    file). On PostgreSQL: a superuser, the tables' owner, or a member of ``crx_owner``
    (``crx_is_owner()``, migration 0003)."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(session.scalar(text("SELECT crx_is_owner()")))


class Database:
    """The database at ``url``; ``embedded`` marks crx's default SQLite file under CRX_HOME.

    Nothing is connected until first use. ``display_url`` is the URL with its password
    replaced, safe for messages, reports and plan documents. ``on_create`` runs once after the
    schema guard migrated an empty embedded database (the facade creates its store there).
    """

    def __init__(
        self, url: str, *, embedded: bool = False, on_create: Callable[[], None] | None = None
    ) -> None:
        self._url = url
        self.embedded = embedded
        self._on_create = on_create
        self.display_url = redact(url)
        self._sql_engine: Engine | None = None
        self._schema_checked = False

    def __repr__(self) -> str:
        return f"Database({self.display_url!r})"

    @property
    def sql_engine(self) -> Engine:
        """SQLAlchemy's engine for this database (created on first use)."""
        if self._sql_engine is None:
            if self.embedded:
                crx_home().mkdir(mode=0o700, parents=True, exist_ok=True)
            self._sql_engine = make_engine(self._url)
        return self._sql_engine

    def close(self) -> None:
        if self._sql_engine is not None:
            self._sql_engine.dispose()
            self._sql_engine = None

    @contextmanager
    def connected(self) -> Iterator[None]:
        """Turn every database error into a `CrxError` (uniqueness races excepted: `write`
        retries them): lost or unreachable → `DatabaseUnavailable`, a value the database's
        column types refuse → `InvalidInput`, anything else it refuses (a permission, say) →
        `DatabaseRefused`."""
        try:
            yield
        except IntegrityError as exc:
            if is_uniqueness_race(exc):
                raise
            # A foreign key, a check, or a rule a trigger enforces (migration 0003).
            raise DatabaseRefused(self.display_url, self._reason(exc)) from None
        except (OperationalError, InterfaceError) as exc:
            reason = self._reason(exc)
            if reason in ("database is locked", "database table is locked"):
                # SQLite's busy timeout ran out: say whose lock and what to change.
                reason += (
                    f": another process held its write lock longer than the busy timeout "
                    f"({sqlite_busy_timeout_ms()} ms; set {ENV_SQLITE_BUSY_TIMEOUT} to wait "
                    "longer)"
                )
            raise DatabaseUnavailable(self.display_url, reason) from None
        except DataError as exc:
            raise InvalidInput(f"the database refused a value: {self._reason(exc)}") from None
        except DBAPIError as exc:
            raise DatabaseRefused(self.display_url, self._reason(exc)) from None
        except OverflowError:
            raise InvalidInput(
                "a number is too large for the database (ids and versions are at most 2^63 - 1)"
            ) from None

    def _reason(self, exc: DBAPIError) -> str:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        return scrub(reason, self._url)

    # -- schema ---------------------------------------------------------------------------

    def current_revision(self) -> str | None:
        with self.connected():
            return migrate.current_revision(self.sql_engine)

    def upgrade(self, *, only_if_behind: bool = False) -> str | None:
        """Migrate to the newest schema; returns the revision the database was at before."""
        with self.connected():
            before = migrate.current_revision(self.sql_engine)
            if not (only_if_behind and before == migrate.HEAD_REVISION):
                migrate.upgrade(self.sql_engine)
        self._schema_checked = True
        return before

    def ensure_schema(self) -> None:
        """Check the schema once per object; an empty embedded database is migrated first."""
        if self._schema_checked:
            return
        with self.connected():
            if self.embedded and not migrate.has_any_table(self.sql_engine):
                migrate.upgrade(self.sql_engine)
                if self._on_create is not None:
                    self._on_create()
            migrate.check_schema(self.sql_engine)
        self._schema_checked = True

    # -- transactions -----------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (a consistent snapshot on PostgreSQL and SQLite WAL)."""
        self.ensure_schema()
        with self.connected(), transaction(self.sql_engine, write=False) as session:
            yield session

    def check_writable(self) -> None:
        """Refuse (`DatabaseRefused`) a role that may not record anything here, before work
        whose results it could not record: on PostgreSQL, a role without INSERT on
        ``audit_events`` (every write records an event). SQLite: the file's owner writes."""
        if self.sql_engine.dialect.name != "postgresql":
            return
        with self.read() as session:
            may = session.scalar(text("SELECT has_table_privilege('audit_events', 'INSERT')"))
            role = session.scalar(text("SELECT current_user"))
        if not may:
            raise DatabaseRefused(
                self.display_url,
                f"role {role} may not write to this registry (it has no INSERT on audit_events;"
                " the owner grants crx_writer with `crx db user NAME --role writer`)",
            )

    def write(self, operation: Callable[[Session], T], *, deletes_blobs: bool = False) -> T:
        """Run ``operation`` in one write transaction, again from the start on a uniqueness race.

        ``operation`` may run more than once, so it must not keep state from a rolled-back try.
        Every write transaction holds the blob lease (`take_blob_lease`); ``deletes_blobs``
        (``crx store gc``) holds it alone, so no writer commits while gc deletes.
        """
        self.ensure_schema()
        for attempt in range(WRITE_ATTEMPTS):
            try:
                with self.connected(), transaction(self.sql_engine, write=True) as session:
                    take_blob_lease(session, exclusive=deletes_blobs)
                    return operation(session)
            except IntegrityError as exc:
                if attempt == WRITE_ATTEMPTS - 1 or not is_uniqueness_race(exc):
                    raise
                time.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")
