"""``crx db roles`` and ``crx db user``: the team's PostgreSQL roles and their grants.

Four group roles (NOLOGIN), each including the one before:

- ``crx_reader``: reads everything;
- ``crx_writer``: registers, extracts, fits, transplants, evaluates, deprecates, and moves
  aliases that are not protected;
- ``crx_approver``: also approves and rejects (the only role that may insert approvals);
- ``crx_owner``: also policies, deletions (prune) and ``crx store gc``, and deleting a
  protected alias. Migrations stay with the role that owns the tables (the one that ran
  ``crx init``).

Nobody, the owner's group included, may change or delete audit, history, approval or
deprecation rows: a trigger refuses it (migration 0003). Everything is idempotent. A login
role's password is sent as a SCRAM-SHA-256 verifier computed here, so the cleartext never
reaches the server, its logs or an error message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from sqlalchemy import text
from sqlalchemy.orm import Session

from crx.registry.errors import InvalidInput, NotPermitted
from crx.registry.names import check_name
from crx.schemas.governance import RoleReport

GROUPS = {
    "reader": "crx_reader",
    "writer": "crx_writer",
    "approver": "crx_approver",
    "owner": "crx_owner",
}
ALL_TABLES = (
    "models",
    "concepts",
    "concept_versions",
    "affine_maps",
    "vectors",
    "evaluations",
    "aliases",
    "alias_history",
    "approvals",
    "policies",
    "deprecations",
    "audit_events",
    "api_tokens",
    "alembic_version",
)
# What each group may do beyond the one it includes.
GRANTS: dict[str, list[str]] = {
    "crx_reader": [
        f"SELECT ON {', '.join(ALL_TABLES)}",
        # The server authenticating a request stamps when a token was last used.
        "UPDATE (last_used_at) ON api_tokens",
    ],
    "crx_writer": [
        "INSERT, UPDATE ON models, concepts, concept_versions, affine_maps, vectors, evaluations",
        "INSERT ON audit_events, deprecations",
        "INSERT, UPDATE, DELETE ON aliases",
    ],
    "crx_approver": ["INSERT ON approvals"],
    "crx_owner": [
        "INSERT, UPDATE, DELETE ON policies",
        "INSERT, UPDATE ON api_tokens",
        "DELETE ON models, concepts, concept_versions, affine_maps, vectors, evaluations",
    ],
}
INCLUDES = {"crx_writer": "crx_reader", "crx_approver": "crx_writer", "crx_owner": "crx_approver"}
SCRAM_ITERATIONS = 4096


def _require_postgres(session: Session) -> None:
    if session.get_bind().dialect.name != "postgresql":
        raise InvalidInput(
            "roles are PostgreSQL's: a SQLite registry is one user's file (its actor is the OS "
            "user or CRX_ACTOR)"
        )


def _exists(session: Session, role: str) -> bool:
    return bool(session.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}))


def _quote(session: Session, name: str) -> str:
    return str(session.scalar(text("SELECT quote_ident(:n)"), {"n": name}))


def ensure_roles(session: Session) -> RoleReport:
    """Create the group roles that are missing and (re)grant every privilege."""
    _require_postgres(session)
    created, granted = [], []
    schema = _quote(session, str(session.scalar(text("SELECT current_schema()"))))
    for role in GROUPS.values():
        if not _exists(session, role):
            session.execute(text(f"CREATE ROLE {role} NOLOGIN"))
            created.append(role)
        session.execute(text(f"GRANT USAGE ON SCHEMA {schema} TO {role}"))
        for grant in GRANTS[role]:
            session.execute(text(f"GRANT {grant} TO {role}"))
            granted.append(f"{role}: {grant}")
        if role in INCLUDES:
            session.execute(text(f"GRANT {INCLUDES[role]} TO {role}"))
    # Sequences back the id columns: inserting needs them.
    session.execute(text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO crx_writer"))
    return RoleReport(roles=list(GROUPS.values()), created=created, granted=granted)


def scram_verifier(password: str, *, salt: bytes | None = None) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password (RFC 5802 / 7677)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def add_user(session: Session, name: str, role: str, password: str | None) -> RoleReport:
    """Make ``name`` a login role in group ``role`` (creating it; a password sets or replaces
    its password). The group roles must exist (`ensure_roles`)."""
    _require_postgres(session)
    check_name("user", name)
    if role not in GROUPS:
        raise InvalidInput(f"role must be one of {', '.join(GROUPS)}, not {role!r}")
    group = GROUPS[role]
    if not _exists(session, group):
        raise NotPermitted(name, f"join {group}", "it does not exist yet: run `crx db roles`")
    quoted = _quote(session, name)
    created = []
    if not _exists(session, name):
        session.execute(text(f"CREATE ROLE {quoted} LOGIN"))
        created.append(name)
    if password is not None:
        if not password:
            raise InvalidInput("the password is empty")
        verifier = scram_verifier(password)
        # A verifier has only base64, digits, '$' and ':' (never a quote): safe as a literal.
        # Sent as the driver's own text: the verifier's ':' must not read as a bind parameter.
        session.connection().exec_driver_sql(f"ALTER ROLE {quoted} LOGIN PASSWORD '{verifier}'")
    for other in GROUPS.values():
        if other != group and _exists(session, other):
            session.execute(text(f"REVOKE {other} FROM {quoted}"))
    session.execute(text(f"GRANT {group} TO {quoted}"))
    return RoleReport(
        roles=[group], created=created, granted=[f"{name}: member of {group}"], users=[name]
    )
