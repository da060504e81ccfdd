"""Aliases per (concept, target model): set, move (compare-and-swap), delete, list, history.

A move is a conditional UPDATE on the alias's ``revision``: two writers that read the same
revision cannot both move it; the loser is refused with the value it lost to. The history is
written by a database trigger for every change (migration 0003), so it is complete even for
changes made by SQL; crx only reads it. ``prod`` and every alias a policy governs are protected:
they move only through promotion (`crx.registry.governance.promotion`), and the database
refuses a protected move to a vector without approvals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from crx.registry.audit import current_actor, display_label, record_event
from crx.registry.catalog import models
from crx.registry.db.tables import (
    SqlAlias,
    SqlAliasHistory,
    SqlConcept,
    SqlConceptVersion,
    SqlModel,
    SqlPolicy,
    SqlVector,
)
from crx.registry.errors import AliasConflict, DeprecatedObject, InvalidInput, ProtectedAlias
from crx.registry.governance.subjects import Subject, concept_named, deprecated_ids, find_alias
from crx.registry.names import check_name, check_text
from crx.registry.timeutil import Moment, as_utc, is_date, moment, now
from crx.schemas.governance import PROTECTED_ALIAS, AliasHistoryRecord, AliasRecord

NO_ALIAS = "none"
# How often a move without an expectation re-reads an alias that others keep moving.
MOVE_ATTEMPTS = 50


def protected_names(session: Session) -> set[str]:
    """``prod`` and every alias a policy governs: the aliases only promotion moves."""
    return {PROTECTED_ALIAS, *session.scalars(select(SqlPolicy.alias).distinct())}


def is_protected(session: Session, name: str) -> bool:
    return name in protected_names(session)


def to_record(session: Session, row: SqlAlias) -> AliasRecord:
    concept = session.get_one(SqlConcept, row.concept_id)
    return _record(
        row,
        concept=concept.name,
        model=session.get_one(SqlModel, row.model_id).name,
        version=session.get_one(SqlConceptVersion, row.concept_version_id).version,
        oid=session.get_one(SqlVector, row.vector_id).oid,
        protected=is_protected(session, row.name),
    )


def _record(
    row: Any, *, concept: str, model: str, version: int, oid: str, protected: bool
) -> AliasRecord:
    return AliasRecord(
        id=row.id,
        concept=concept,
        model=model,
        name=row.name,
        ref=f"{concept}@{row.name}",
        concept_version=version,
        concept_version_ref=f"{concept}@{version}",
        vector_id=row.vector_id,
        vector_oid=oid,
        revision=row.revision,
        protected=protected,
        action=row.action,
        actor=row.actor,
        label=row.label,
        reason=row.reason,
        updated_at=as_utc(row.updated_at),
    )


def _current(session: Session, subject: Subject, name: str) -> SqlAlias | None:
    return session.scalar(
        select(SqlAlias).where(
            SqlAlias.concept_id == subject.concept.id,
            SqlAlias.model_id == subject.model.id,
            SqlAlias.name == name,
        )
    )


def _describe(row: SqlAlias | None, session: Session) -> str:
    if row is None:
        return "not set"
    version = session.get_one(SqlConceptVersion, row.concept_version_id).version
    return (
        f"vector {row.vector_id} (version {version}, revision {row.revision}, "
        f"{row.action} by {row.actor} at {as_utc(row.updated_at):%Y-%m-%d %H:%M:%S} UTC)"
    )


def _check_expectation(
    session: Session,
    subject: Subject,
    name: str,
    row: SqlAlias | None,
    expect: str | int | None,
    expect_revision: int | None,
) -> None:
    """Refuse a move whose idea of the alias (``expect``: a vector id or "none";
    ``expect_revision``) is not what the alias is now."""
    problems = []
    if expect is not None:
        wanted = str(expect).strip().lower()
        if wanted == NO_ALIAS:
            if row is not None:
                problems.append("not set")
        elif not wanted.isdigit():
            raise InvalidInput(f"--expect takes a vector id or {NO_ALIAS!r}, not {expect!r}")
        elif row is None or row.vector_id != int(wanted):
            problems.append(f"vector {wanted}")
    if expect_revision is not None and (row is None or row.revision != expect_revision):
        problems.append(f"revision {expect_revision}")
    if problems:
        raise AliasConflict(
            f"{subject.concept.name}@{name}",
            subject.model.name,
            " and ".join(problems),
            _describe(row, session),
        )


def check_aliasable(session: Session, subject: Subject) -> None:
    gone = deprecated_ids(session, "vector", [subject.vector.id])
    if gone:
        raise DeprecatedObject(f"vector {subject.vector.id}", gone[subject.vector.id], "aliased")
    gone = deprecated_ids(session, "concept_version", [subject.version.id])
    if gone:
        raise DeprecatedObject(subject.ref, gone[subject.version.id], "aliased")


def move(
    session: Session,
    subject: Subject,
    name: str,
    *,
    action: str = "move",
    expect: str | int | None = None,
    expect_revision: int | None = None,
    reason: str | None = None,
) -> AliasRecord:
    """Point ``subject.concept@name`` on ``subject.model`` at ``subject.vector``.

    ``action`` "promote" is the only way to move a protected alias (the caller has checked
    the policy). Setting an alias to what it already points at changes nothing.
    """
    check_name("alias", name)
    check_text("reason", reason)
    if name.isdigit():
        raise InvalidInput(f"an alias name cannot be all digits ({name!r} reads as a version)")
    if action != "promote" and is_protected(session, name):
        raise ProtectedAlias(
            f"{subject.concept.name}@{name}",
            subject.model.name,
            f"it moves only with `crx promote {subject.ref} --model {subject.model.name} "
            f"--to {name}`",
        )
    check_aliasable(session, subject)
    ref = f"{subject.concept.name}@{name}"
    unconditional = expect is None and expect_revision is None
    for attempt in range(MOVE_ATTEMPTS):
        row = _current(session, subject, name)
        _check_expectation(session, subject, name, row, expect, expect_revision)
        if row is not None and row.vector_id == subject.vector.id:
            return to_record(session, row)
        stamp: dict[str, Any] = {
            "concept_version_id": subject.version.id,
            "vector_id": subject.vector.id,
            "actor": current_actor(),
            "label": display_label(),
            "reason": reason,
            "updated_at": now(),
        }
        if row is None:
            row = SqlAlias(
                concept_id=subject.concept.id,
                model_id=subject.model.id,
                name=name,
                revision=1,
                action="promote" if action == "promote" else "set",
                **stamp,
            )
            session.add(row)
            session.flush()
            session.refresh(row)  # PostgreSQL's trigger stamped the actor and time
            old = None
            break
        old = {"vector_id": row.vector_id, "revision": row.revision}
        result = session.execute(
            update(SqlAlias)
            .where(SqlAlias.id == row.id, SqlAlias.revision == row.revision)
            .values(revision=row.revision + 1, action=action, **stamp)
            .execution_options(synchronize_session=False)
        )
        session.expire(row)
        if result.rowcount == 1:  # type: ignore[attr-defined]
            break
        # A concurrent move committed between our read and our update (PostgreSQL's READ
        # COMMITTED lets two writers read the same revision; SQLite's one writer never does).
        # A move without an expectation is last-writer-wins: read the alias again and move it
        # from there, as SQLite would have, instead of refusing a compare-and-swap the caller
        # never asked for (found by tests/test_governance_concurrency.py).
        if not unconditional or attempt == MOVE_ATTEMPTS - 1:
            raise AliasConflict(
                ref, subject.model.name, f"revision {old['revision']}", _describe(row, session)
            )
    assert row is not None  # the loop ends at a break after a write; its last try raises
    record = to_record(session, row)
    record_event(
        session,
        f"alias.{'promote' if action == 'promote' else 'set'}",
        "alias",
        row.id,
        f"{ref} on {subject.model.name}",
        old=old,
        new={"vector_id": record.vector_id, "revision": record.revision, "oid": record.vector_oid},
        reason=reason,
        model_id=subject.model.id,
    )
    return record


def delete(
    session: Session,
    concept: str,
    model: str,
    name: str,
    *,
    expect: str | int | None = None,
    reason: str | None = None,
    force: bool = False,
) -> AliasRecord:
    """Delete an alias (its history stays). A protected one needs ``force`` (and, on
    PostgreSQL, the owner's role: the database checks)."""
    check_text("reason", reason)
    found = find_alias(session, concept, name, model)
    if is_protected(session, name) and not force:
        raise ProtectedAlias(
            f"{concept}@{name}", model, "only the registry owner deletes it (with --force)"
        )
    record = to_record(session, found)
    if expect is not None and str(expect).strip() != str(found.vector_id):
        raise AliasConflict(record.ref, model, f"vector {expect}", _describe(found, session))
    # The reason goes on the row first (not a move: the trigger writes no history for it), so
    # the trigger's delete row carries it.
    session.execute(
        update(SqlAlias)
        .where(SqlAlias.id == found.id)
        .values(reason=reason, label=display_label(), actor=current_actor(), updated_at=now())
        .execution_options(synchronize_session=False)
    )
    session.execute(
        SqlAlias.__table__.delete().where(SqlAlias.id == found.id)  # type: ignore[attr-defined]
    )
    record_event(
        session,
        "alias.delete",
        "alias",
        found.id,
        f"{record.ref} on {model}",
        old={"vector_id": record.vector_id, "revision": record.revision},
        reason=reason,
        model_id=found.model_id,
    )
    return record


def listing(
    session: Session,
    *,
    model: str | None = None,
    concept: str | None = None,
    on_models: Sequence[str] | None = None,
) -> list[AliasRecord]:
    # One joined query, not four lookups per alias: a model page lists hundreds.
    query = (
        select(
            SqlAlias,
            SqlConcept.name,
            SqlModel.name,
            SqlConceptVersion.version,
            SqlVector.oid,
        )
        .join(SqlConcept, SqlConcept.id == SqlAlias.concept_id)
        .join(SqlModel, SqlModel.id == SqlAlias.model_id)
        .join(SqlConceptVersion, SqlConceptVersion.id == SqlAlias.concept_version_id)
        .join(SqlVector, SqlVector.id == SqlAlias.vector_id)
        .order_by(SqlAlias.model_id, SqlAlias.concept_id, SqlAlias.name)
    )
    if model is not None:
        query = query.where(SqlAlias.model_id == models.find(session, model).id)
    if concept is not None:
        query = query.where(SqlAlias.concept_id == concept_named(session, concept).id)
    if on_models is not None:
        query = query.where(SqlModel.name.in_(list(on_models)))
    governed = protected_names(session)
    return [
        _record(
            row,
            concept=concept_name,
            model=model_name,
            version=version,
            oid=oid,
            protected=row.name in governed,
        )
        for row, concept_name, model_name, version, oid in session.execute(query)
    ]


def history(
    session: Session,
    concept: str,
    model: str,
    name: str | None = None,
    *,
    at: Moment | None = None,
    limit: int | None = None,
    after: int | None = None,
) -> list[AliasHistoryRecord]:
    """Every change of ``concept``'s aliases (or of alias ``name``) on ``model``, oldest first;
    ``limit`` rows at most, those after history id ``after`` (paging, as the lists do).

    With ``at``: for each alias, only the change in force at that moment (the last one made
    at or before it), so "what was prod on that date, and who moved it" is one row.
    """
    concept_row = concept_named(session, concept)
    model_row = models.find(session, model)
    subject = [
        SqlAliasHistory.concept_id == concept_row.id,
        SqlAliasHistory.model_id == model_row.id,
    ]
    if name is not None:
        subject.append(SqlAliasHistory.name == name)
    # Plain rows, not ORM objects: a long history is read several times faster.
    query = select(*SqlAliasHistory.__table__.columns)
    if at is None:
        query = query.where(*subject)
    else:
        # Each alias's last change at or before ``at``, found by the database (one row per
        # alias, however long its history), in the order the changes were made (id).
        last = (
            select(func.max(SqlAliasHistory.id))
            .where(*subject, _up_to(at))
            .group_by(SqlAliasHistory.name)
        )
        query = query.where(SqlAliasHistory.id.in_(last))
    if after is not None:
        query = query.where(SqlAliasHistory.id > after)
    if limit:
        query = query.limit(limit)
    rows = list(session.execute(query.order_by(SqlAliasHistory.id)))
    if at is not None:
        rows = [row for row in rows if row.action != "delete"]
    versions = _version_numbers(
        session,
        {v for r in rows for v in (r.old_concept_version_id, r.new_concept_version_id) if v},
    )
    return [
        AliasHistoryRecord(
            id=row.id,
            concept=concept_row.name,
            model=model_row.name,
            name=row.name,
            revision=row.revision,
            action=row.action,
            old_vector_id=row.old_vector_id,
            new_vector_id=row.new_vector_id,
            old_concept_version=versions.get(row.old_concept_version_id or 0),
            new_concept_version=versions.get(row.new_concept_version_id or 0),
            actor=row.actor,
            label=row.label,
            reason=row.reason,
            at=as_utc(row.at),
        )
        for row in rows
    ]


def _up_to(at: Moment) -> ColumnElement[bool]:
    """Changes made at or before ``at``; a date alone is its whole day (as `crx audit
    --until`)."""
    bound = moment(at, "at", end=True)
    return SqlAliasHistory.at < bound if is_date(at) else SqlAliasHistory.at <= bound


def _version_numbers(session: Session, ids: set[int]) -> dict[int, int]:
    if not ids:
        return {}
    rows = session.execute(
        select(SqlConceptVersion.id, SqlConceptVersion.version).where(SqlConceptVersion.id.in_(ids))
    )
    return {row_id: number for row_id, number in rows}
