"""The per-vector lock that promotion, approval and deprecation of one vector share.

On PostgreSQL it is the transaction-scoped advisory lock the database's own triggers take
(migration 0003, key ``0x63727876`` plus the vector id), so a promotion's checks and its move
see every approval, rejection and deprecation committed before it, and none commits between
them. On SQLite every write transaction already holds the database's one write lock.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

VECTOR_LOCK = 0x63727876  # must equal the key in migrations/versions/0003_governance.py


def lock_vector(session: Session, vector_id: int) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(CAST(:key AS integer), CAST(:id AS integer))"),
            {"key": VECTOR_LOCK, "id": vector_id},
        )
