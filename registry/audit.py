"""The audit trail: every mutating call writes one event in the same transaction as its change.

Who acts: on PostgreSQL the database role the connection authenticated as (``session_user``),
which a trigger writes over whatever the client sends (migrations 0003 and 0005), so nobody can
write as somebody else; ``CRX_ACTOR`` is only a display label there. On SQLite (one user's
file) it is ``CRX_ACTOR`` if set, else ``user@host``.

`acting_for` overrides both for the code it wraps, in this thread or task only (a context
variable): ``crx serve`` runs an HTTP write as the user its API token belongs to, and two
requests at once never see each other's user, as a process-wide environment variable would.
On PostgreSQL that is the label only, unless the server is connected as a gateway: then every
transaction runs as that person's role (`crx.registry.db.gateway`), which the triggers stamp.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from crx.registry.db.tables import SqlAuditEvent
from crx.registry.timeutil import as_utc, now
from crx.schemas.records import AuditEventRecord

ENV_ACTOR = "CRX_ACTOR"

_acting_for: ContextVar[str | None] = ContextVar("crx_acting_for", default=None)


@contextmanager
def acting_for(user: str) -> Iterator[None]:
    """Record ``user`` as the actor (and display label) of what runs inside, in this context
    only; the environment and other threads are untouched."""
    token = _acting_for.set(_storable(user))
    try:
        yield
    finally:
        _acting_for.reset(token)


def acting_user() -> str | None:
    """The `acting_for` user of this context, if any (never ``CRX_ACTOR``: a gateway acts as
    a person only for the server's own requests)."""
    return _acting_for.get()


def _explicit() -> str | None:
    return _acting_for.get() or os.environ.get(ENV_ACTOR) or None


def current_actor() -> str:
    """Who is acting: the `acting_for` user, else ``CRX_ACTOR`` if set, else ``user@host``
    (made storable: valid UTF-8, no NUL, at most the column's 200 characters)."""
    explicit = _explicit()
    if explicit:
        return _storable(explicit)
    try:
        user = getpass.getuser()
    except Exception:  # no login name (some containers)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def display_label() -> str | None:
    """The `acting_for` user or ``CRX_ACTOR``, recorded beside the actor as a display label
    (never instead of the role)."""
    explicit = _explicit()
    return _storable(explicit) if explicit else None


def acting_as(session: Session) -> str:
    """The identity the database will record for this session's changes (on PostgreSQL the
    acting role, migration 0005: a gateway's person; the gateway itself when it acts as
    nobody, which the database then refuses to let write)."""
    if session.get_bind().dialect.name == "postgresql":
        return str(session.scalar(text("SELECT COALESCE(crx_acting_role(), session_user)")))
    return current_actor()


def _storable(value: str, limit: int = 200) -> str:
    cleaned = value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
    return cleaned[:limit]


def record_event(
    session: Session,
    action: str,
    object_kind: str,
    object_id: int | None,
    object_ref: str,
    *,
    old: dict[str, Any] | None = None,
    new: dict[str, Any] | None = None,
    reason: str | None = None,
    model_id: int | None = None,
) -> None:
    """Add the event to ``session``'s transaction; ``model_id`` is the (target) model the
    event concerns, where there is one (what `crx audit --model` finds it by)."""
    session.add(
        SqlAuditEvent(
            at=now(),
            actor=current_actor(),
            action=action,
            object_kind=object_kind,
            object_id=object_id,
            object_ref=object_ref,
            old=old,
            new=new,
            label=display_label(),
            reason=reason,
            model_id=model_id,
        )
    )


def to_record(row: SqlAuditEvent) -> AuditEventRecord:
    return AuditEventRecord(
        id=row.id,
        at=as_utc(row.at),
        actor=row.actor,
        action=row.action,
        object_kind=row.object_kind,
        object_id=row.object_id,
        object_ref=row.object_ref,
        old=row.old,
        new=row.new,
        label=row.label,
        reason=row.reason,
        model_id=row.model_id,
    )
