"""The audit trail: every mutating call writes one event in the same transaction as its change."""

from __future__ import annotations

import getpass
import os
import socket
from typing import Any

from sqlalchemy.orm import Session

from crx.registry.db.tables import SqlAuditEvent
from crx.registry.timeutil import now

ENV_ACTOR = "CRX_ACTOR"


def current_actor() -> str:
    """Who is acting: ``CRX_ACTOR`` if set, else ``user@host`` (made storable: valid UTF-8,
    no NUL, at most the column's 200 characters)."""
    explicit = os.environ.get(ENV_ACTOR)
    if explicit:
        return _storable(explicit)
    try:
        user = getpass.getuser()
    except Exception:  # no login name (some containers)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def _storable(text: str, limit: int = 200) -> str:
    cleaned = text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
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
) -> None:
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
        )
    )
