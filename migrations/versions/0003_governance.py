"""Governance: aliases per (concept, target model) with their append-only history, approvals,
policies and deprecations; the audit trail gains a display label, a reason and the model an
event concerns (filled in for earlier events from the rows that still exist).

What the database itself guarantees (so that a client with direct SQL access cannot get around
crx, only through it):

- the history, audit, approval and deprecation tables are append-only (a trigger refuses UPDATE,
  DELETE and, on PostgreSQL, TRUNCATE);
- every alias change writes its history row (a trigger, not the application);
- on PostgreSQL the actor of every change is ``session_user``, stamped by a trigger over
  whatever the client sent, and so is the time;
- an alias never points at a deprecated vector or concept version, nor at a vector of another
  concept or model;
- a protected alias (``prod``, or any alias a policy governs) moves only to a vector approved,
  in its exact content (oid), by as many people as the governing policy asks (at least one),
  none of them the mover, with no standing rejection; on PostgreSQL only the owner deletes one;
- a vector's content (oid) cannot change while a protected alias points at it.

Revision ID: 0003
Revises: 0002
"""

# ruff: noqa: E501  (SQL messages read best on one line)
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY = ("audit_events", "alias_history", "approvals", "deprecations")
STAMPED = ("audit_events", "approvals", "deprecations", "policies")
# The advisory lock (first key) that alias moves, approvals and deprecations of one vector take
# (second key: the vector id) on PostgreSQL, so a promotion never races a deprecation or a
# rejection of the same vector ("crxv").
VECTOR_LOCK = 0x63727876


def _create_tables() -> None:
    op.drop_table("aliases")
    op.create_table(
        "aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("concept_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("concept_version_id", sa.Integer(), nullable=False),
        sa.Column("vector_id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["concept_id"],
            ["concepts.id"],
            name=op.f("fk_aliases_concept_id_concepts"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_aliases_model_id_models"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["concept_version_id"],
            ["concept_versions.id"],
            name=op.f("fk_aliases_concept_version_id_concept_versions"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["vector_id"],
            ["vectors.id"],
            name=op.f("fk_aliases_vector_id_vectors"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_aliases")),
        sa.UniqueConstraint(
            "concept_id", "model_id", "name", name=op.f("uq_aliases_concept_id_model_id_name")
        ),
    )
    op.create_index("ix_aliases_model", "aliases", ["model_id"])
    op.create_index("ix_aliases_vector", "aliases", ["vector_id"])
    op.create_table(
        "alias_history",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alias_id", sa.Integer(), nullable=False),
        sa.Column("concept_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("old_vector_id", sa.Integer(), nullable=True),
        sa.Column("new_vector_id", sa.Integer(), nullable=True),
        sa.Column("old_concept_version_id", sa.Integer(), nullable=True),
        sa.Column("new_concept_version_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["old_vector_id"],
            ["vectors.id"],
            name=op.f("fk_alias_history_old_vector_id_vectors"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["new_vector_id"],
            ["vectors.id"],
            name=op.f("fk_alias_history_new_vector_id_vectors"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alias_history")),
    )
    op.create_index(
        "ix_alias_history_subject", "alias_history", ["concept_id", "model_id", "name", "id"]
    )
    op.create_table(
        "approvals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vector_id", sa.Integer(), nullable=False),
        sa.Column("vector_oid", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=200), nullable=False),
        sa.Column("decision", sa.String(length=20), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["vector_id"],
            ["vectors.id"],
            name=op.f("fk_approvals_vector_id_vectors"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_approvals_model_id_models"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approvals")),
    )
    op.create_index("ix_approvals_vector", "approvals", ["vector_id", "alias"])
    op.create_table(
        "policies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("concept", sa.String(length=200), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("alias", sa.String(length=200), nullable=False),
        sa.Column("rules", sa.JSON(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policies")),
        sa.UniqueConstraint("name", name=op.f("uq_policies_name")),
    )
    op.create_table(
        "deprecations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("object_kind", sa.String(length=50), nullable=False),
        sa.Column("object_id", sa.Integer(), nullable=False),
        sa.Column("object_ref", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deprecations")),
        sa.UniqueConstraint(
            "object_kind", "object_id", name=op.f("uq_deprecations_object_kind_object_id")
        ),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("label", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch_op.create_index("ix_audit_events_actor", ["actor", "id"], unique=False)
        batch_op.create_index("ix_audit_events_action", ["action", "id"], unique=False)
        # The target model an event concerns (`crx audit --model`), where one is known.
        batch_op.add_column(sa.Column("model_id", sa.Integer(), nullable=True))
        batch_op.create_index("ix_audit_events_model", ["model_id", "id"], unique=False)
    # Events written before this revision get their model from the rows that still exist
    # (before the append-only triggers below are created).
    for kind, source in AUDIT_MODEL_OF.items():
        op.execute(
            f"UPDATE audit_events SET model_id = ({source} = audit_events.object_id) "
            f"WHERE object_kind = '{kind}' AND model_id IS NULL"
        )


# Where a pre-0003 event's model comes from, by object kind: a correlated subquery's head.
AUDIT_MODEL_OF = {
    "model": "SELECT m.id FROM models m WHERE m.id",
    "vector": "SELECT v.model_id FROM vectors v WHERE v.id",
    "map": "SELECT a.target_model_id FROM affine_maps a WHERE a.id",
    "evaluation": "SELECT e.model_id FROM evaluations e WHERE e.id",
}


# -- PostgreSQL ------------------------------------------------------------------------------

PG_FUNCTIONS = f"""
CREATE FUNCTION crx_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'crx: % is append-only: % refused', TG_TABLE_NAME, TG_OP
    USING ERRCODE = '42501';
END $$;

CREATE FUNCTION crx_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.actor := session_user;
  NEW.at := now();
  RETURN NEW;
END $$;

CREATE FUNCTION crx_is_owner() RETURNS boolean LANGUAGE sql STABLE AS $$
  SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = session_user)
      OR session_user = (SELECT tableowner FROM pg_tables
                         WHERE tablename = 'aliases' AND schemaname = current_schema())
      OR (EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'crx_owner')
          AND pg_has_role(session_user, 'crx_owner', 'MEMBER'))
$$;

CREATE FUNCTION crx_is_protected(alias_name text) RETURNS boolean LANGUAGE sql STABLE AS $$
  SELECT alias_name = 'prod' OR EXISTS (SELECT 1 FROM policies p WHERE p.alias = alias_name)
$$;

CREATE FUNCTION crx_guard_alias() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  v_needed integer;
  v_have integer;
  v_rejected integer;
  v_oid text;
  v_concept text;
  v_model text;
BEGIN
  IF TG_OP = 'DELETE' THEN
    IF crx_is_protected(OLD.name) AND NOT crx_is_owner() THEN
      RAISE EXCEPTION 'crx: alias % is protected: only the registry owner may delete it', OLD.name
        USING ERRCODE = '42501';
    END IF;
    RETURN OLD;
  END IF;
  NEW.actor := session_user;
  NEW.updated_at := now();
  IF TG_OP = 'UPDATE' THEN
    IF NEW.name <> OLD.name OR NEW.concept_id <> OLD.concept_id OR NEW.model_id <> OLD.model_id
    THEN
      RAISE EXCEPTION 'crx: an alias cannot be renamed or moved to another concept or model'
        USING ERRCODE = '42501';
    END IF;
    IF NEW.vector_id = OLD.vector_id AND NEW.concept_version_id = OLD.concept_version_id THEN
      RETURN NEW;  -- only the reason or label of the last move changed
    END IF;
  END IF;
  PERFORM pg_advisory_xact_lock({VECTOR_LOCK}, NEW.vector_id);
  IF NOT EXISTS (
    SELECT 1 FROM vectors v JOIN concept_versions cv ON cv.id = v.concept_version_id
    WHERE v.id = NEW.vector_id AND v.model_id = NEW.model_id
      AND v.concept_version_id = NEW.concept_version_id AND cv.concept_id = NEW.concept_id
  ) THEN
    RAISE EXCEPTION 'crx: vector % is not a vector of that concept version on that model',
      NEW.vector_id USING ERRCODE = '23514';
  END IF;
  IF EXISTS (
    SELECT 1 FROM deprecations d
    WHERE (d.object_kind = 'vector' AND d.object_id = NEW.vector_id)
       OR (d.object_kind = 'concept_version' AND d.object_id = NEW.concept_version_id)
  ) THEN
    RAISE EXCEPTION 'crx: vector % (or its concept version) is deprecated: it cannot be aliased',
      NEW.vector_id USING ERRCODE = '42501';
  END IF;
  IF crx_is_protected(NEW.name) THEN
    SELECT v.oid INTO v_oid FROM vectors v WHERE v.id = NEW.vector_id;
    SELECT c.name INTO v_concept FROM concepts c WHERE c.id = NEW.concept_id;
    SELECT m.name INTO v_model FROM models m WHERE m.id = NEW.model_id;
    SELECT GREATEST(1, COALESCE((p.rules ->> 'approvals')::integer, 1)) INTO v_needed
      FROM policies p
      WHERE p.alias = NEW.name AND (p.concept IS NULL OR p.concept = v_concept)
        AND (p.model IS NULL OR p.model = v_model)
      ORDER BY (p.concept IS NOT NULL) DESC, (p.model IS NOT NULL) DESC, p.id
      LIMIT 1;
    v_needed := COALESCE(v_needed, 1);
    SELECT count(*) FILTER (WHERE latest.decision = 'approve' AND latest.actor <> session_user),
           count(*) FILTER (WHERE latest.decision = 'reject')
      INTO v_have, v_rejected
      FROM (
        SELECT DISTINCT ON (a.actor) a.actor, a.decision FROM approvals a
        WHERE a.vector_id = NEW.vector_id AND a.vector_oid = v_oid AND a.alias = NEW.name
        ORDER BY a.actor, a.id DESC
      ) latest;
    IF v_rejected > 0 THEN
      RAISE EXCEPTION 'crx: vector % is rejected for %: it cannot move there', NEW.vector_id,
        NEW.name USING ERRCODE = '42501';
    END IF;
    IF v_have < v_needed THEN
      RAISE EXCEPTION 'crx: protected alias % moves only to a vector with % approval(s) of its exact content by someone other than %; vector % has %',
        NEW.name, v_needed, session_user, NEW.vector_id, v_have USING ERRCODE = '42501';
    END IF;
  END IF;
  RETURN NEW;
END $$;

CREATE FUNCTION crx_alias_history() RETURNS trigger LANGUAGE plpgsql
  SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    INSERT INTO alias_history (alias_id, concept_id, model_id, name, revision, action,
      old_vector_id, new_vector_id, old_concept_version_id, new_concept_version_id,
      actor, label, reason, at)
    VALUES (OLD.id, OLD.concept_id, OLD.model_id, OLD.name, OLD.revision + 1, 'delete',
      OLD.vector_id, NULL, OLD.concept_version_id, NULL, session_user, OLD.label, OLD.reason,
      now());
    RETURN OLD;
  END IF;
  IF TG_OP = 'UPDATE' AND NEW.vector_id = OLD.vector_id
     AND NEW.concept_version_id = OLD.concept_version_id THEN
    RETURN NEW;
  END IF;
  INSERT INTO alias_history (alias_id, concept_id, model_id, name, revision, action,
    old_vector_id, new_vector_id, old_concept_version_id, new_concept_version_id,
    actor, label, reason, at)
  VALUES (NEW.id, NEW.concept_id, NEW.model_id, NEW.name, NEW.revision, NEW.action,
    CASE WHEN TG_OP = 'UPDATE' THEN OLD.vector_id END, NEW.vector_id,
    CASE WHEN TG_OP = 'UPDATE' THEN OLD.concept_version_id END, NEW.concept_version_id,
    session_user, NEW.label, NEW.reason, now());
  RETURN NEW;
END $$;

CREATE FUNCTION crx_guard_approval() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_xact_lock({VECTOR_LOCK}, NEW.vector_id);
  IF NOT EXISTS (SELECT 1 FROM vectors v WHERE v.id = NEW.vector_id AND v.oid = NEW.vector_oid
                 AND v.model_id = NEW.model_id) THEN
    RAISE EXCEPTION 'crx: an approval must name the vector''s current content (oid) and model'
      USING ERRCODE = '23514';
  END IF;
  RETURN NEW;
END $$;

CREATE FUNCTION crx_guard_deprecation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.object_kind = 'vector' THEN
    PERFORM pg_advisory_xact_lock({VECTOR_LOCK}, NEW.object_id);
  END IF;
  RETURN NEW;
END $$;

CREATE FUNCTION crx_guard_vector() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.oid <> OLD.oid AND EXISTS (
    SELECT 1 FROM aliases a WHERE a.vector_id = OLD.id AND crx_is_protected(a.name)
  ) THEN
    RAISE EXCEPTION 'crx: vector % is the target of a protected alias: its content cannot change',
      OLD.id USING ERRCODE = '42501';
  END IF;
  RETURN NEW;
END $$;
"""


def _pg_triggers() -> list[str]:
    statements = []
    for table in APPEND_ONLY:
        statements += [
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION crx_refuse_change()",
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION crx_refuse_change()",
        ]
    for table in STAMPED:
        when = "INSERT OR UPDATE" if table == "policies" else "INSERT"
        statements.append(
            f"CREATE TRIGGER {table}_stamp BEFORE {when} ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION crx_stamp()"
        )
    statements += [
        "CREATE TRIGGER aliases_guard BEFORE INSERT OR UPDATE OR DELETE ON aliases "
        "FOR EACH ROW EXECUTE FUNCTION crx_guard_alias()",
        "CREATE TRIGGER aliases_history AFTER INSERT OR UPDATE OR DELETE ON aliases "
        "FOR EACH ROW EXECUTE FUNCTION crx_alias_history()",
        "CREATE TRIGGER approvals_guard BEFORE INSERT ON approvals "
        "FOR EACH ROW EXECUTE FUNCTION crx_guard_approval()",
        "CREATE TRIGGER deprecations_guard BEFORE INSERT ON deprecations "
        "FOR EACH ROW EXECUTE FUNCTION crx_guard_deprecation()",
        "CREATE TRIGGER vectors_guard BEFORE UPDATE ON vectors "
        "FOR EACH ROW EXECUTE FUNCTION crx_guard_vector()",
    ]
    return statements


PG_DROP = [
    "DROP TRIGGER IF EXISTS vectors_guard ON vectors",
    "DROP FUNCTION IF EXISTS crx_guard_vector()",
    "DROP FUNCTION IF EXISTS crx_guard_deprecation() CASCADE",
    "DROP FUNCTION IF EXISTS crx_guard_approval() CASCADE",
    "DROP FUNCTION IF EXISTS crx_alias_history() CASCADE",
    "DROP FUNCTION IF EXISTS crx_guard_alias() CASCADE",
    "DROP FUNCTION IF EXISTS crx_is_protected(text)",
    "DROP FUNCTION IF EXISTS crx_is_owner()",
    "DROP FUNCTION IF EXISTS crx_stamp() CASCADE",
    "DROP FUNCTION IF EXISTS crx_refuse_change() CASCADE",
]


# -- SQLite ----------------------------------------------------------------------------------

# The most specific policy for the alias being moved: concept and model, concept, model, any
# (the oldest of equally specific ones, as `crx.registry.governance.policies.governing`).
_SQLITE_NEEDED = """
MAX(1, COALESCE((
  SELECT CAST(json_extract(p.rules, '$.approvals') AS INTEGER) FROM policies p
  WHERE p.alias = NEW.name
    AND (p.concept IS NULL OR p.concept = (SELECT name FROM concepts WHERE id = NEW.concept_id))
    AND (p.model IS NULL OR p.model = (SELECT name FROM models WHERE id = NEW.model_id))
  ORDER BY (p.concept IS NOT NULL) DESC, (p.model IS NOT NULL) DESC, p.id LIMIT 1), 1))
"""
# Each approver's latest decision on this exact content for this alias.
_SQLITE_LATEST = """
FROM approvals a
WHERE a.vector_id = NEW.vector_id AND a.alias = NEW.name
  AND a.vector_oid = (SELECT oid FROM vectors WHERE id = NEW.vector_id)
  AND a.id = (SELECT MAX(b.id) FROM approvals b WHERE b.actor = a.actor
              AND b.vector_id = a.vector_id AND b.alias = a.alias AND b.vector_oid = a.vector_oid)
"""
_SQLITE_PROTECTED = "(NEW.name = 'prod' OR EXISTS (SELECT 1 FROM policies WHERE alias = NEW.name))"
_SQLITE_GUARD = f"""
  SELECT RAISE(ABORT, 'crx: that vector is not a vector of that concept version on that model')
  WHERE NOT EXISTS (
    SELECT 1 FROM vectors v JOIN concept_versions cv ON cv.id = v.concept_version_id
    WHERE v.id = NEW.vector_id AND v.model_id = NEW.model_id
      AND v.concept_version_id = NEW.concept_version_id AND cv.concept_id = NEW.concept_id);
  SELECT RAISE(ABORT, 'crx: that vector (or its concept version) is deprecated: it cannot be aliased')
  WHERE EXISTS (
    SELECT 1 FROM deprecations d
    WHERE (d.object_kind = 'vector' AND d.object_id = NEW.vector_id)
       OR (d.object_kind = 'concept_version' AND d.object_id = NEW.concept_version_id));
  SELECT RAISE(ABORT, 'crx: that vector is rejected for this protected alias')
  WHERE {_SQLITE_PROTECTED}
    AND EXISTS (SELECT 1 {_SQLITE_LATEST} AND a.decision = 'reject');
  SELECT RAISE(ABORT, 'crx: a protected alias moves only to a vector with the approvals its policy asks, by someone other than the mover')
  WHERE {_SQLITE_PROTECTED}
    AND (SELECT COUNT(*) {_SQLITE_LATEST} AND a.decision = 'approve' AND a.actor <> NEW.actor)
        < {_SQLITE_NEEDED};
"""
_SQLITE_HISTORY_COLUMNS = (
    "alias_id, concept_id, model_id, name, revision, action, old_vector_id, new_vector_id, "
    "old_concept_version_id, new_concept_version_id, actor, label, reason, at"
)


def _sqlite_triggers() -> list[str]:
    statements = []
    for table in APPEND_ONLY:
        for operation in ("UPDATE", "DELETE"):
            statements.append(
                f"CREATE TRIGGER {table}_no_{operation.lower()} BEFORE {operation} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'crx: {table} is append-only: {operation} refused'); "
                "END"
            )
    statements += [
        f"CREATE TRIGGER aliases_guard_insert BEFORE INSERT ON aliases BEGIN {_SQLITE_GUARD} END",
        "CREATE TRIGGER aliases_guard_update BEFORE UPDATE ON aliases "
        "WHEN NEW.vector_id IS NOT OLD.vector_id "
        f"OR NEW.concept_version_id IS NOT OLD.concept_version_id BEGIN {_SQLITE_GUARD} END",
        "CREATE TRIGGER aliases_no_rename BEFORE UPDATE ON aliases "
        "WHEN NEW.name IS NOT OLD.name OR NEW.concept_id IS NOT OLD.concept_id "
        "OR NEW.model_id IS NOT OLD.model_id BEGIN SELECT RAISE(ABORT, "
        "'crx: an alias cannot be renamed or moved to another concept or model'); END",
        f"CREATE TRIGGER aliases_history_insert AFTER INSERT ON aliases BEGIN "
        f"INSERT INTO alias_history ({_SQLITE_HISTORY_COLUMNS}) VALUES (NEW.id, NEW.concept_id, "
        "NEW.model_id, NEW.name, NEW.revision, NEW.action, NULL, NEW.vector_id, NULL, "
        "NEW.concept_version_id, NEW.actor, NEW.label, NEW.reason, NEW.updated_at); END",
        "CREATE TRIGGER aliases_history_update AFTER UPDATE ON aliases "
        "WHEN NEW.vector_id IS NOT OLD.vector_id "
        "OR NEW.concept_version_id IS NOT OLD.concept_version_id BEGIN "
        f"INSERT INTO alias_history ({_SQLITE_HISTORY_COLUMNS}) VALUES (NEW.id, NEW.concept_id, "
        "NEW.model_id, NEW.name, NEW.revision, NEW.action, OLD.vector_id, NEW.vector_id, "
        "OLD.concept_version_id, NEW.concept_version_id, NEW.actor, NEW.label, NEW.reason, "
        "NEW.updated_at); END",
        "CREATE TRIGGER aliases_history_delete AFTER DELETE ON aliases BEGIN "
        f"INSERT INTO alias_history ({_SQLITE_HISTORY_COLUMNS}) VALUES (OLD.id, OLD.concept_id, "
        "OLD.model_id, OLD.name, OLD.revision + 1, 'delete', OLD.vector_id, NULL, "
        "OLD.concept_version_id, NULL, OLD.actor, OLD.label, OLD.reason, OLD.updated_at); END",
        "CREATE TRIGGER approvals_guard BEFORE INSERT ON approvals BEGIN "
        "SELECT RAISE(ABORT, 'crx: an approval must name the vector''s current content (oid) "
        "and model') WHERE NOT EXISTS (SELECT 1 FROM vectors v WHERE v.id = NEW.vector_id "
        "AND v.oid = NEW.vector_oid AND v.model_id = NEW.model_id); END",
        "CREATE TRIGGER vectors_guard BEFORE UPDATE ON vectors WHEN NEW.oid IS NOT OLD.oid "
        "BEGIN SELECT RAISE(ABORT, 'crx: that vector is the target of a protected alias: its "
        "content cannot change') WHERE EXISTS (SELECT 1 FROM aliases a WHERE a.vector_id = "
        "OLD.id AND (a.name = 'prod' OR EXISTS (SELECT 1 FROM policies p WHERE p.alias = "
        "a.name))); END",
    ]
    return statements


def upgrade() -> None:
    _create_tables()
    if op.get_context().dialect.name == "postgresql":
        op.execute(PG_FUNCTIONS)
        for statement in _pg_triggers():
            op.execute(statement)
    else:
        for statement in _sqlite_triggers():
            op.execute(statement)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for statement in PG_DROP:
            op.execute(statement)
    else:
        names = bind.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name IN "
            "('aliases', 'approvals', 'vectors', 'audit_events', 'alias_history', 'deprecations')"
        ).fetchall()
        for (name,) in names:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_model")
        batch_op.drop_column("model_id")
        batch_op.drop_index("ix_audit_events_action")
        batch_op.drop_index("ix_audit_events_actor")
        batch_op.drop_column("reason")
        batch_op.drop_column("label")
    for table in ("deprecations", "policies", "approvals", "alias_history", "aliases"):
        op.drop_table(table)
    op.create_table(
        "aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=50), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_aliases")),
        sa.UniqueConstraint("kind", "name", name=op.f("uq_aliases_kind_name")),
    )
