"""``crx db roles``, ``crx db user`` and ``crx db gateway``: the team's PostgreSQL roles.

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

A gateway (``crx serve``'s login on PostgreSQL, `crx.registry.db.gateway`) is a login role of
the NOLOGIN group ``crx_gateway``, NOINHERIT (no privileges but by ``SET ROLE``), granted
``crx_reader`` (to read as nobody) and every person: every login role of a crx group when it
is made, and each person ``add_user`` makes later. A superuser is never granted to a gateway
(it could become one), and a gateway is never a person, nor a person a gateway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from sqlalchemy import text
from sqlalchemy.orm import Session

from crx.registry.db.gateway import GATEWAY_GROUP, READER_ROLE
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
    "map_anchors",
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
        "INSERT, UPDATE ON models, concepts, concept_versions, affine_maps, map_anchors, vectors, "
        "evaluations",
        "INSERT ON audit_events, deprecations",
        "INSERT, UPDATE, DELETE ON aliases",
    ],
    "crx_approver": ["INSERT ON approvals"],
    "crx_owner": [
        "INSERT, UPDATE, DELETE ON policies",
        "INSERT, UPDATE ON api_tokens",
        "DELETE ON models, concepts, concept_versions, affine_maps, map_anchors, vectors, "
        "evaluations",
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


def _is_superuser(session: Session, role: str) -> bool:
    return bool(
        session.scalar(text("SELECT rolsuper FROM pg_roles WHERE rolname = :r"), {"r": role})
    )


def _holds_tables(session: Session, role: str) -> bool:
    """Whether ``role`` owns a table of this schema or holds a privilege granted to it on one
    (not through a group)."""
    found = session.scalar(
        text(
            "SELECT 1 FROM pg_class c JOIN pg_roles r ON r.rolname = :r "
            "WHERE c.relnamespace = current_schema()::regnamespace AND (c.relowner = r.oid "
            "OR EXISTS (SELECT 1 FROM aclexplode(c.relacl) a WHERE a.grantee = r.oid)) LIMIT 1"
        ),
        {"r": role},
    )
    return bool(found)


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


def _set_password(session: Session, quoted: str, password: str | None) -> None:
    if password is None:
        return
    if not password:
        raise InvalidInput("the password is empty")
    verifier = scram_verifier(password)
    # A verifier has only base64, digits, '$' and ':' (never a quote): safe as a literal.
    # Sent as the driver's own text: the verifier's ':' must not read as a bind parameter.
    session.connection().exec_driver_sql(f"ALTER ROLE {quoted} LOGIN PASSWORD '{verifier}'")


def _members(session: Session, groups: list[str]) -> list[str]:
    """The login roles (not superusers) that are direct members of any of ``groups``."""
    rows = session.scalars(
        text(
            "SELECT DISTINCT m.rolname FROM pg_auth_members am "
            "JOIN pg_roles g ON g.oid = am.roleid JOIN pg_roles m ON m.oid = am.member "
            "WHERE g.rolname = ANY(:groups) AND m.rolcanlogin AND NOT m.rolsuper "
            "ORDER BY m.rolname"
        ),
        {"groups": groups},
    )
    return list(rows)


def _require_groups(session: Session, name: str, group: str) -> None:
    if not _exists(session, group):
        raise NotPermitted(name, f"join {group}", "it does not exist yet: run `crx db roles`")


def add_user(session: Session, name: str, role: str, password: str | None) -> RoleReport:
    """Make ``name`` a login role in group ``role`` (creating it; a password sets or replaces
    its password), and a person every gateway may act as. The group roles must exist
    (`ensure_roles`)."""
    _require_postgres(session)
    check_name("user", name)
    if role not in GROUPS:
        raise InvalidInput(f"role must be one of {', '.join(GROUPS)}, not {role!r}")
    group = GROUPS[role]
    _require_groups(session, name, group)
    if name in _members(session, [GATEWAY_GROUP]):
        raise InvalidInput(f"{name} is a gateway (`crx db gateway`): it cannot be a person too")
    quoted = _quote(session, name)
    created = []
    if not _exists(session, name):
        session.execute(text(f"CREATE ROLE {quoted} LOGIN"))
        created.append(name)
    _set_password(session, quoted, password)
    for other in GROUPS.values():
        if other != group and _exists(session, other):
            session.execute(text(f"REVOKE {other} FROM {quoted}"))
    session.execute(text(f"GRANT {group} TO {quoted}"))
    granted = [f"{name}: member of {group}"]
    # A gateway that may SET ROLE to a superuser would be one.
    for gateway in [] if _is_superuser(session, name) else _members(session, [GATEWAY_GROUP]):
        session.execute(text(f"GRANT {quoted} TO {_quote(session, gateway)}"))
        granted.append(f"{gateway}: may act as {name}")
    return RoleReport(roles=[group], created=created, granted=granted, users=[name])


def add_gateway(session: Session, name: str, password: str | None) -> RoleReport:
    """Make ``name`` a gateway: a NOINHERIT login role of ``crx_gateway`` (created if
    missing) that may act as ``crx_reader`` and as every person of the crx groups."""
    _require_postgres(session)
    check_name("gateway", name)
    _require_groups(session, name, READER_ROLE)
    if name in (*GROUPS.values(), GATEWAY_GROUP):
        raise InvalidInput(f"{name} is a crx group: a gateway is a login role of its own")
    gateways = _members(session, [GATEWAY_GROUP])
    # Gateways are members of crx_reader too: they are not people.
    people = [p for p in _members(session, list(GROUPS.values())) if p not in gateways]
    if name in people:
        raise InvalidInput(f"{name} is a person (`crx db user`): a gateway is a role of its own")
    created = []
    if not _exists(session, GATEWAY_GROUP):
        session.execute(text(f"CREATE ROLE {GATEWAY_GROUP} NOLOGIN"))
        created.append(GATEWAY_GROUP)
    quoted = _quote(session, name)
    if not _exists(session, name):
        session.execute(text(f"CREATE ROLE {quoted} LOGIN NOINHERIT"))
        created.append(name)
    elif _is_superuser(session, name) or _holds_tables(session, name):
        raise InvalidInput(
            f"{name} is a superuser or holds privileges on the tables itself: a gateway has no "
            "privileges of its own (make a new role)"
        )
    else:
        session.execute(text(f"ALTER ROLE {quoted} LOGIN NOINHERIT"))
    _set_password(session, quoted, password)
    session.execute(text(f"GRANT {GATEWAY_GROUP}, {READER_ROLE} TO {quoted}"))
    granted = [f"{name}: member of {GATEWAY_GROUP}", f"{name}: may act as {READER_ROLE}"]
    for person in people:
        session.execute(text(f"GRANT {_quote(session, person)} TO {quoted}"))
        granted.append(f"{name}: may act as {person}")
    return RoleReport(roles=[GATEWAY_GROUP], created=created, granted=granted, users=[name])
