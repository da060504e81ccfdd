"""Connected as a gateway: every transaction runs as the person it is for (PostgreSQL only).

A gateway (``crx db gateway``, `crx.registry.governance.roles.add_gateway`) is a login role
in the group ``crx_gateway``, NOINHERIT, without privileges of its own, granted ``crx_reader``
and every person role: PostgREST's "authenticator". On such a connection each transaction
begins with ``SET LOCAL ROLE``: the `acting_for` user's role (``crx serve`` acting for an API
token's user), else ``crx_reader`` (reading, and authenticating a token). The role lasts until
the transaction ends, so a pooled connection never carries one request's person into the next;
the database then checks that person's privileges and its triggers stamp that person
(``crx_actor()``, migration 0005). A user the gateway may not act as is `NotPermitted`, before
anything runs.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.orm import Session

from crx.registry.audit import acting_user
from crx.registry.errors import NotPermitted

GATEWAY_GROUP = "crx_gateway"
# The role of a gateway transaction that acts for nobody.
READER_ROLE = "crx_reader"
_INFO_KEY = "crx_gateway"

# As migration 0005's crx_is_gateway(), which may not exist yet (an old schema is still read).
_IS_GATEWAY = text(
    "SELECT COALESCE((SELECT NOT r.rolsuper AND EXISTS (SELECT 1 FROM pg_roles g "
    "WHERE g.rolname = :group AND pg_has_role(r.oid, g.oid, 'MEMBER')) "
    "FROM pg_roles r WHERE r.rolname = session_user), false)"
)
# A person this gateway may act as: a login role it is a member of, not a superuser, not a
# gateway (crx_acting_role() in migration 0005 accepts the same roles).
_PERSON = text(
    "SELECT quote_ident(p.rolname) FROM pg_roles p WHERE p.rolname = :name AND p.rolcanlogin "
    "AND NOT p.rolsuper AND pg_has_role(session_user, p.oid, 'MEMBER') "
    "AND NOT EXISTS (SELECT 1 FROM pg_roles g WHERE g.rolname = :group "
    "AND pg_has_role(p.oid, g.oid, 'MEMBER'))"
)


def install(engine: Engine) -> None:
    """Set the acting role at the start of every transaction of ``engine`` (PostgreSQL)."""
    event.listen(engine, "begin", _on_begin)


def connected_as_gateway(session: Session) -> bool:
    """Whether ``session``'s connection authenticated as a gateway."""
    return _is_gateway(session.connection())


def _is_gateway(conn: Connection) -> bool:
    # Asked once per database connection: its login role never changes.
    known = conn.info.get(_INFO_KEY)
    if known is None:
        known = bool(conn.execute(_IS_GATEWAY, {"group": GATEWAY_GROUP}).scalar())
        conn.info[_INFO_KEY] = known
    return bool(known)


def _on_begin(conn: Any) -> None:
    if not _is_gateway(conn):
        return
    user = acting_user()
    role = READER_ROLE
    if user is not None:
        quoted = conn.execute(_PERSON, {"name": user, "group": GATEWAY_GROUP}).scalar()
        if quoted is None:
            raise NotPermitted(
                user,
                "act through this server's gateway",
                f"no database role {user} the gateway may act as (the registry's owner makes "
                f"one with `crx db user {user} --role ...`)",
            )
        role = str(quoted)
    # quote_ident made the name safe to splice; SET takes no bind parameters.
    conn.exec_driver_sql(f"SET LOCAL ROLE {role}")
