"""`crx audit`: the append-only audit trail, filtered, newest first.

Filters combine (AND): the object an event is about, the (target) model it concerns, the actor
(the identity the database recorded: on PostgreSQL the role, never the ``CRX_ACTOR`` label), the
action (exact, or a prefix ending in ``.`` or ``*``) and a time range. Object references:

- ``vector:ID``: the vector's events (register, replace, approvals, deprecation) and the
  evaluations recorded of it; ``map:ID``; ``model:NAME``; ``policy:NAME``;
- ``NAME@V`` (or ``NAME``, the latest version): the concept version's own events;
- ``NAME@V`` with a model: the events of that version's vectors on the model (deprecated ones
  included: their history is what an audit is for);
- ``NAME@ALIAS`` (with a model, unless only one model ever had it): the alias's own events
  (``alias.set``, ``alias.promote``, ``alias.delete``, across deletes and re-creations) and the
  events of every vector it ever pointed at, read from the alias history.

Newest first: ``next_after`` is the id to pass as ``after`` for the next (older) page. An id
of a deleted vector or map still finds its events.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, false, func, or_, select
from sqlalchemy.orm import Session

from crx.registry.audit import to_record
from crx.registry.catalog import models
from crx.registry.db.tables import (
    MAX_ROW_ID,
    SqlAliasHistory,
    SqlAuditEvent,
    SqlEvaluation,
    SqlVector,
    is_row_id,
)
from crx.registry.errors import AliasNotFound, InvalidInput, ModelNotFound, NoVectorOn
from crx.registry.governance import subjects
from crx.registry.names import check_text
from crx.registry.timeutil import Moment, is_date, moment
from crx.schemas.records import AuditEventRecord, Page

E = SqlAuditEvent
OBJECT_FORMS = "vector:ID, map:ID, model:NAME, policy:NAME, NAME@VERSION or NAME@ALIAS"


def query(
    session: Session,
    *,
    ref: str | None = None,
    model: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    since: Moment | None = None,
    until: Moment | None = None,
    limit: int | None = None,
    after: int | None = None,
) -> Page[AuditEventRecord]:
    """One page of the events that pass every filter given, newest first."""
    if limit is not None and limit < 0:
        raise InvalidInput(f"limit must be 0 (all) or more, not {limit}")
    clauses: list[ColumnElement[bool]] = []
    model_used = False
    if ref is not None:
        clause, model_used = object_clause(session, ref, model)
        clauses.append(clause)
    if model is not None and not model_used:
        clauses.append(E.model_id == models.find(session, model).id)
    if actor is not None:
        check_text("actor", actor, 200)
        clauses.append(E.actor == actor)
    if action is not None:
        clauses.append(action_clause(action))
    if since is not None:
        clauses.append(E.at >= moment(since, "since"))
    if until is not None:
        bound = moment(until, "until", end=True)
        # A date alone is its whole day: until the start of the next one.
        clauses.append(E.at < bound if is_date(until) else E.at <= bound)
    statement = select(E).where(*clauses)
    # No row has an id past the column's range: every id is before such a cursor (and
    # PostgreSQL would refuse the number), so both backends answer alike.
    if after is not None and after <= MAX_ROW_ID:
        statement = statement.where(E.id < max(after, 0))
    # An object's events are few and scattered over the whole trail: ordering by an
    # expression, not the key, keeps the planner from walking the key backwards and filtering
    # (PostgreSQL misjudges how many rows match an object); it fetches them by the object
    # index and sorts them. Wide filters (actor, action, dates) keep the walk, which is right
    # for them.
    statement = statement.order_by((E.id + 0).desc() if ref is not None else E.id.desc())
    if limit:
        statement = statement.limit(min(limit, MAX_ROW_ID) + 1)
    rows = list(session.scalars(statement))
    more = bool(limit) and len(rows) > (limit or 0)
    rows = rows[:limit] if limit else rows
    return Page[AuditEventRecord](
        items=[to_record(row) for row in rows], next_after=rows[-1].id if more and rows else None
    )


# -- filters ------------------------------------------------------------------------------------


def action_clause(action: str) -> ColumnElement[bool]:
    """Exact, or a prefix: ``alias.`` (kept) or ``alias*`` (the star dropped)."""
    check_text("action", action, 100)
    if not action.strip():
        raise InvalidInput("--action needs an action or a prefix (alias. or alias*)")
    if action.endswith("*"):
        prefix = action[:-1]
    elif action.endswith("."):
        prefix = action
    else:
        return E.action == action
    if not prefix:
        return E.id.is_not(None)
    # substr, not LIKE: SQLite's LIKE ignores case, and both need escaping of % and _.
    return func.substr(E.action, 1, len(prefix)) == prefix


def object_clause(
    session: Session, ref: str, model: str | None
) -> tuple[ColumnElement[bool], bool]:
    """The events about ``ref``, and whether ``model`` was used to resolve it (else it is a
    filter of its own)."""
    check_text("object reference", ref, 500)
    kind, sep, rest = ref.partition(":")
    if sep:
        return _prefixed(session, kind, rest), False
    name, _, alias = subjects.parse(ref)
    if alias is not None:
        return _alias(session, name, alias, model), True
    concept, row, _ = subjects.concept_version(session, ref)
    if model is None:
        return and_(E.object_kind == "concept_version", E.object_id == row.id), False
    target = models.find(session, model)
    ids = list(
        session.scalars(
            select(SqlVector.id).where(
                SqlVector.concept_version_id == row.id, SqlVector.model_id == target.id
            )
        )
    )
    if not ids:
        raise NoVectorOn(f"{concept.name}@{row.version}", target.name)
    return vector_events(session, ids), True


def _row_id(text: str, kind: str) -> int:
    if not text.isdigit() or len(text) > 10 or not is_row_id(int(text)):
        raise InvalidInput(f"{kind}:ID needs a numeric id, not {text[:40]!r}")
    return int(text)


def _prefixed(session: Session, kind: str, rest: str) -> ColumnElement[bool]:
    if kind == "vector":
        return vector_events(session, [_row_id(rest, kind)])
    if kind == "map":
        return and_(E.object_kind == "map", E.object_id == _row_id(rest, kind))
    if kind == "policy":
        if not rest:
            raise InvalidInput("policy:NAME needs a policy name")
        # By name: a deleted policy's events stay findable (its row is gone).
        return and_(E.object_kind == "policy", E.object_ref == rest)
    if kind == "model":
        try:
            return and_(E.object_kind == "model", E.object_id == models.find(session, rest).id)
        except ModelNotFound:
            # A deleted (pruned) model: its events by the name they recorded.
            by_name = and_(E.object_kind == "model", E.object_ref == rest)
            if session.scalar(select(E.id).where(by_name).limit(1)) is None:
                raise
            return by_name
    raise InvalidInput(f"unknown object reference {kind + ':' + rest[:40]!r}: use {OBJECT_FORMS}")


def vector_events(session: Session, ids: list[int]) -> ColumnElement[bool]:
    """Events about these vectors: their own, and the evaluations recorded of them."""
    # The evaluation ids are read first: as a subquery they would stop PostgreSQL from
    # combining the branches' index scans, and it would walk the whole trail backwards instead.
    evaluated = list(
        session.scalars(select(SqlEvaluation.id).where(SqlEvaluation.vector_id.in_(ids)))
    )
    return or_(
        and_(E.object_kind == "vector", E.object_id.in_(ids)),
        and_(E.object_kind == "evaluation", E.object_id.in_(evaluated)),
    )


def _alias(session: Session, concept: str, alias: str, model: str | None) -> ColumnElement[bool]:
    """The alias's events and those of every vector it pointed at, from its history (which the
    database writes for every change, so a deleted alias still has one)."""
    concept_row = subjects.concept_named(session, concept)
    subject = [SqlAliasHistory.concept_id == concept_row.id, SqlAliasHistory.name == alias]
    if model is not None:
        subject.append(SqlAliasHistory.model_id == models.find(session, model).id)

    def distinct(column: Any) -> list[Any]:
        # DISTINCT in the database: a long history is not shipped to Python for each query.
        return list(session.scalars(select(column).where(*subject).distinct()))

    model_ids = distinct(SqlAliasHistory.model_id)
    if not model_ids:
        raise AliasNotFound(f"{concept}@{alias}", model, "it never existed")
    if len(model_ids) > 1:
        raise AliasNotFound(
            f"{concept}@{alias}", None, "it is an alias on more than one model: pass --model"
        )
    alias_ids = sorted(distinct(SqlAliasHistory.alias_id))
    # Every vector it pointed at is some row's new vector (a delete row's old one was that).
    vector_ids = sorted(v for v in distinct(SqlAliasHistory.new_vector_id) if v is not None)
    own = and_(E.object_kind == "alias", E.object_id.in_(alias_ids))
    if not vector_ids:
        return own if alias_ids else false()
    return or_(own, vector_events(session, vector_ids))
