"""API tokens of ``crx serve``: created and revoked by the registry's owner, one per user.

A token's secret is ``crx_`` and 32 random bytes (`secrets.token_urlsafe`); only its SHA-256
is stored (the secret is high-entropy, so a plain hash cannot be searched back) and the secret
is returned once, by `create`. Tokens are never deleted: revoking stamps ``revoked_at``.
Creating and revoking are audited; authenticating stamps ``last_used_at`` and is not (it is
not a change of the catalogue). On PostgreSQL only an owner (`session_is_owner`) creates or
revokes; a SQLite registry is one user's file, whose user is its owner.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from crx.registry.audit import acting_as, record_event
from crx.registry.db.session import session_is_owner
from crx.registry.db.tables import SqlApiToken
from crx.registry.errors import InvalidInput, NotFound, NotPermitted
from crx.registry.names import check_name
from crx.registry.timeutil import as_utc, now
from crx.schemas.governance import CreatedToken, TokenRecord

PREFIX = "crx_"
SECRET_BYTES = 32
# Longer than any secret `create` makes: a bigger header is refused before it is hashed.
MAX_SECRET_CHARS = 200


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def to_record(row: SqlApiToken) -> TokenRecord:
    return TokenRecord(
        id=row.id,
        user=row.user,
        created_at=as_utc(row.created_at),
        created_by=row.created_by,
        revoked_at=as_utc(row.revoked_at) if row.revoked_at is not None else None,
        last_used_at=as_utc(row.last_used_at) if row.last_used_at is not None else None,
    )


def _require_owner(session: Session, what: str) -> None:
    if not session_is_owner(session):
        raise NotPermitted(acting_as(session), what, "only the registry's owner (crx_owner) may")


def create(session: Session, user: str) -> CreatedToken:
    check_name("user", user)
    _require_owner(session, "create API tokens")
    secret = PREFIX + secrets.token_urlsafe(SECRET_BYTES)
    row = SqlApiToken(
        user=user, token_sha256=digest(secret), created_at=now(), created_by=acting_as(session)
    )
    session.add(row)
    session.flush()
    record_event(
        session,
        "token.create",
        "api_token",
        row.id,
        f"token {row.id} of {user}",
        new={"user": user},
    )
    return CreatedToken(token=to_record(row), secret=secret)


def listing(session: Session) -> list[TokenRecord]:
    return [to_record(r) for r in session.scalars(select(SqlApiToken).order_by(SqlApiToken.id))]


def revoke(session: Session, token_id: int) -> TokenRecord:
    _require_owner(session, "revoke API tokens")
    row = session.get(SqlApiToken, token_id)
    if row is None:
        raise NotFound(f"no API token {token_id} (see `crx token list`)")
    if row.revoked_at is not None:
        raise InvalidInput(f"API token {token_id} of {row.user} is already revoked")
    row.revoked_at = now()
    session.flush()
    record_event(
        session,
        "token.revoke",
        "api_token",
        row.id,
        f"token {row.id} of {row.user}",
        old={"revoked": False},
        new={"revoked": True},
    )
    return to_record(row)


def any_active(session: Session) -> bool:
    """Whether any token is not revoked (without one, ``crx serve`` is read-only)."""
    found = session.scalar(select(SqlApiToken.id).where(SqlApiToken.revoked_at.is_(None)).limit(1))
    return found is not None


def authenticate(session: Session, secret: str) -> str | None:
    """The user of the live token whose secret this is (stamping its use), else None."""
    if not secret.startswith(PREFIX) or len(secret) > MAX_SECRET_CHARS:
        return None
    wanted = digest(secret)
    row = session.scalar(select(SqlApiToken).where(SqlApiToken.token_sha256 == wanted))
    # The lookup is by an index on the hash; the constant-time compare is belt and braces.
    if (
        row is None
        or row.revoked_at is not None
        or not hmac.compare_digest(row.token_sha256, wanted)
    ):
        return None
    session.execute(update(SqlApiToken).where(SqlApiToken.id == row.id).values(last_used_at=now()))
    return row.user
