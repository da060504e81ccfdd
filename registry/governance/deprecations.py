"""Deprecation: an object taken out of use, with a reason. It stays readable; `crx plan`
never chooses it, and it cannot be aliased, approved or promoted (the database refuses an alias
to a deprecated vector or concept version). Rows are append-only.

References: ``NAME@V`` (a concept version), ``NAME@V`` or ``NAME@ALIAS`` with a model (that
version's vector there), ``vector:ID``, ``map:ID``, ``model:NAME``.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from crx.registry.audit import current_actor, display_label, record_event
from crx.registry.catalog import models
from crx.registry.db.tables import SqlAffineMap, SqlDeprecation, SqlVector, is_row_id
from crx.registry.errors import AlreadyExists, InvalidInput, MapNotFound, VectorNotFound
from crx.registry.governance import subjects
from crx.registry.governance.locks import lock_vector
from crx.registry.names import check_text
from crx.registry.timeutil import as_utc, now
from crx.schemas.governance import DeprecationRecord


def _row_id(text: str, what: str) -> int:
    if not text.isdigit() or len(text) > 10 or not is_row_id(int(text)):
        raise InvalidInput(f"{what}:ID needs a numeric id, not {text!r}")
    return int(text)


def target_of(session: Session, ref: str, model: str | None) -> tuple[str, int, str]:
    """(object kind, id, label) named by ``ref`` (see the module docstring)."""
    kind, sep, rest = ref.partition(":")
    if sep and kind == "vector":
        row = session.get(SqlVector, _row_id(rest, "vector"))
        if row is None:
            raise VectorNotFound(rest)
        return "vector", row.id, f"vector {row.id}"
    if sep and kind == "map":
        map_row = session.get(SqlAffineMap, _row_id(rest, "map"))
        if map_row is None:
            raise MapNotFound(rest)
        return "map", map_row.id, f"map {map_row.id}"
    if sep and kind == "model":
        found = models.find(session, rest)
        return "model", found.id, f"model {found.name}"
    if model is not None:
        subject = subjects.resolve(session, ref, model)
        label = f"vector {subject.vector.id} ({subject.ref} on {subject.model.name})"
        return "vector", subject.vector.id, label
    concept, version, _ = subjects.concept_version(session, ref)
    return "concept_version", version.id, f"{concept.name}@{version.version}"


def deprecate(
    session: Session, ref: str, *, model: str | None = None, reason: str
) -> DeprecationRecord:
    check_text("reason", reason)
    if not reason.strip():
        raise InvalidInput("a deprecation needs a --reason")
    kind, object_id, label = target_of(session, ref, model)
    existing = session.scalar(
        select(SqlDeprecation).where(
            SqlDeprecation.object_kind == kind, SqlDeprecation.object_id == object_id
        )
    )
    if existing is not None:
        raise AlreadyExists(f"the deprecation of {label}", f"since {as_utc(existing.at):%Y-%m-%d}")
    if kind == "vector":
        lock_vector(session, object_id)
    row = SqlDeprecation(
        object_kind=kind,
        object_id=object_id,
        object_ref=label,
        actor=current_actor(),
        label=display_label(),
        reason=reason,
        at=now(),
    )
    session.add(row)
    session.flush()
    session.refresh(row)
    record_event(
        session,
        "deprecate",
        kind,
        object_id,
        label,
        reason=reason,
        model_id=_model_of(session, kind, object_id),
    )
    return to_record(row)


def _model_of(session: Session, kind: str, object_id: int) -> int | None:
    """The (target) model a deprecated object concerns; None for a concept version."""
    if kind == "model":
        return object_id
    if kind == "vector":
        return session.get_one(SqlVector, object_id).model_id
    if kind == "map":
        return session.get_one(SqlAffineMap, object_id).target_model_id
    return None


def to_record(row: SqlDeprecation) -> DeprecationRecord:
    return DeprecationRecord(
        id=row.id,
        object_kind=row.object_kind,
        object_id=row.object_id,
        object_ref=row.object_ref,
        actor=row.actor,
        label=row.label,
        reason=row.reason,
        at=as_utc(row.at),
    )


def listing(session: Session) -> list[DeprecationRecord]:
    return [
        to_record(row)
        for row in session.scalars(select(SqlDeprecation).order_by(SqlDeprecation.id))
    ]
