"""The acting person on PostgreSQL: ``crx_actor()``, so a gateway can write as each person.

A gateway (``crx db gateway``) is a login role of the NOLOGIN group ``crx_gateway``, NOINHERIT
and without privileges of its own, granted every person role; ``crx serve`` connected as one
runs each request's transaction under ``SET LOCAL ROLE person`` (PostgREST's "authenticator").
From here on the triggers of 0003 stamp the acting person instead of ``session_user``:

- ``crx_acting_role()``: ``session_user`` for a connection that is not a gateway (a person's
  own ``SET ROLE`` to a group changes nothing: they still stamp themselves); for a gateway,
  ``current_user`` if it is a person (a login role, not a superuser, not a gateway), else NULL;
- ``crx_actor()``: the same, or an error for a gateway that has not set a person role: a
  gateway never writes as itself or as a group (``SET ROLE crx_approver`` included);
- ``crx_is_owner()`` asks about the acting role (false for a gateway acting as nobody), and
  the protected-alias count of "approvals by others than the mover" compares with the mover
  ``NEW.actor`` the guard has just stamped.

``crx_alias_history()`` is SECURITY DEFINER (writers may not insert history themselves), so
``current_user`` there is the function's owner: it takes the mover from ``NEW.actor``, and a
deleter from the setting ``crx.alias_deleted_by`` that the guard (an invoker's trigger) set
just before, trusted only from a gateway (which may act as any person anyway); a person's
delete is stamped ``session_user`` as in 0003.

The new functions are 0003's text with exact substitutions (each must match, so a changed 0003
fails loudly here); the downgrade restores 0003's text itself. SQLite is untouched.

Revision ID: 0005
Revises: 0004
"""

# ruff: noqa: E501  (SQL messages read best on one line)
from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GATEWAY_GROUP = "crx_gateway"

PG_NEW_FUNCTIONS = f"""
CREATE FUNCTION crx_is_gateway() RETURNS boolean LANGUAGE sql STABLE AS $$
  SELECT COALESCE((
    SELECT NOT r.rolsuper AND EXISTS (
      SELECT 1 FROM pg_roles g
      WHERE g.rolname = '{GATEWAY_GROUP}' AND pg_has_role(r.oid, g.oid, 'MEMBER'))
    FROM pg_roles r WHERE r.rolname = session_user), false)
$$;

CREATE FUNCTION crx_acting_role() RETURNS name LANGUAGE sql STABLE AS $$
  SELECT CASE
    WHEN NOT crx_is_gateway() THEN session_user
    WHEN current_user <> session_user AND EXISTS (
      SELECT 1 FROM pg_roles p
      WHERE p.rolname = current_user AND p.rolcanlogin AND NOT p.rolsuper
        AND NOT EXISTS (SELECT 1 FROM pg_roles g WHERE g.rolname = '{GATEWAY_GROUP}'
                        AND pg_has_role(p.oid, g.oid, 'MEMBER')))
    THEN current_user
  END
$$;

CREATE FUNCTION crx_actor() RETURNS name LANGUAGE plpgsql STABLE AS $$
DECLARE
  v_actor name := crx_acting_role();
BEGIN
  IF v_actor IS NULL THEN
    RAISE EXCEPTION 'crx: % is a gateway: it writes only as a person (SET LOCAL ROLE person), never as itself or a group (the role now is %)',
      session_user, current_user USING ERRCODE = '42501';
  END IF;
  RETURN v_actor;
END $$;
"""

# (0003's text, its replacement, how many times it occurs): applied in this order.
SUBSTITUTIONS: tuple[tuple[str, str, int], ...] = (
    # the guard's DELETE branch names the deleter for the history trigger (and so refuses a
    # gateway acting as nobody)
    (
        "    END IF;\n    RETURN OLD;\n  END IF;\n  NEW.actor := session_user;",
        "    END IF;\n    PERFORM set_config('crx.alias_deleted_by', crx_actor(), true);\n"
        "    RETURN OLD;\n  END IF;\n  NEW.actor := session_user;",
        1,
    ),
    # crx_stamp and the alias guard
    ("NEW.actor := session_user;", "NEW.actor := crx_actor();", 2),
    # crx_is_owner: the acting role (NULL for a gateway acting as nobody: not the owner)
    (
        "  SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = session_user)\n"
        "      OR session_user = (SELECT tableowner",
        "  SELECT COALESCE((SELECT rolsuper FROM pg_roles WHERE rolname = crx_acting_role())\n"
        "      OR crx_acting_role() = (SELECT tableowner",
        1,
    ),
    (
        "AND pg_has_role(session_user, 'crx_owner', 'MEMBER'))\n$$;",
        "AND pg_has_role(crx_acting_role(), 'crx_owner', 'MEMBER')), false)\n$$;",
        1,
    ),
    # the protected-alias count and its message: the mover is the actor just stamped
    ("latest.actor <> session_user", "latest.actor <> NEW.actor", 1),
    (
        "NEW.name, v_needed, session_user, NEW.vector_id",
        "NEW.name, v_needed, NEW.actor, NEW.vector_id",
        1,
    ),
    # the history trigger (SECURITY DEFINER: current_user is its owner here)
    (
        "OLD.vector_id, NULL, OLD.concept_version_id, NULL, session_user, OLD.label",
        "OLD.vector_id, NULL, OLD.concept_version_id, NULL,\n"
        "      CASE WHEN crx_is_gateway() THEN current_setting('crx.alias_deleted_by')::name\n"
        "           ELSE session_user END, OLD.label",
        1,
    ),
    (
        "    session_user, NEW.label, NEW.reason, now());",
        "    NEW.actor, NEW.label, NEW.reason, now());",
        1,
    ),
)

PG_DROP_NEW = [
    "DROP FUNCTION IF EXISTS crx_actor()",
    "DROP FUNCTION IF EXISTS crx_acting_role()",
    "DROP FUNCTION IF EXISTS crx_is_gateway()",
]


def _governance_revision() -> ModuleType:
    # Alembic loads revision files by path (their names start with a digit), so 0003 is read
    # the same way: its function text is the one source of both directions here.
    path = Path(__file__).with_name("0003_governance.py")
    spec = importlib.util.spec_from_file_location("crx_migration_0003", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _replaceable(functions: str) -> str:
    return functions.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")


def acting_functions() -> str:
    """0003's trigger functions with every ``session_user`` replaced by the acting person."""
    functions: str = _governance_revision().PG_FUNCTIONS
    for old, new, times in SUBSTITUTIONS:
        found = functions.count(old)
        if found != times:
            raise RuntimeError(f"0003's functions hold {old!r} {found} times, not {times}")
        functions = functions.replace(old, new)
    left = functions.count("session_user")
    # Only where this revision put it: crx_is_gateway's own test and the person's delete.
    if left != 1:
        raise RuntimeError(f"0003's functions still use session_user {left} times")
    return _replaceable(functions)


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(PG_NEW_FUNCTIONS)
    op.execute(acting_functions())


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(_replaceable(_governance_revision().PG_FUNCTIONS))
    for statement in PG_DROP_NEW:
        op.execute(statement)
