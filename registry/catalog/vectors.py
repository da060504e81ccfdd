"""Concept vectors: one row per (concept version, model, hook point, token, estimator, lineage)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from crx.registry.audit import record_event
from crx.registry.catalog.paging import page
from crx.registry.db.tables import (
    SqlConcept,
    SqlConceptVersion,
    SqlEvaluation,
    SqlModel,
    SqlVector,
    is_row_id,
)
from crx.registry.errors import AlreadyExists, InvalidInput, VectorNotFound
from crx.registry.hashing import json_safe
from crx.registry.timeutil import as_utc, now
from crx.schemas.records import Page, Registered, VectorRecord

if TYPE_CHECKING:
    import numpy as np  # imported where a norm is computed: listing vectors needs no numpy

ORIGINS = ("extracted", "imported", "mapped")


def layer_norms(array: np.ndarray) -> list[float]:
    """The L2 norm of each layer's row, as a vector row records them."""
    import numpy as np

    return [float(x) for x in np.linalg.norm(array.astype(np.float64), axis=1)]


def _joined() -> Select:
    return (
        select(SqlVector, SqlConcept.name, SqlConceptVersion.version, SqlModel.name)
        .join(SqlConceptVersion, SqlVector.concept_version_id == SqlConceptVersion.id)
        .join(SqlConcept, SqlConceptVersion.concept_id == SqlConcept.id)
        .join(SqlModel, SqlVector.model_id == SqlModel.id)
    )


def to_record(row: SqlVector, concept: str, version: int, model: str) -> VectorRecord:
    return VectorRecord(
        id=row.id,
        concept=concept,
        concept_version=version,
        concept_version_id=row.concept_version_id,
        model=model,
        model_id=row.model_id,
        hook_point=row.hook_point,
        token_position=row.token_position,
        estimator=row.estimator,
        oid=row.oid,
        n_layers=row.n_layers,
        d_model=row.d_model,
        dtype=row.dtype,
        layers=list(row.layers) if row.layers is not None else None,
        layer_norms=list(row.layer_norms),
        origin=row.origin,  # type: ignore[arg-type]
        source_vector_id=row.source_vector_id,
        map_ids=list(row.map_ids) if row.map_ids is not None else None,
        settings=dict(row.settings or {}),
        created_at=as_utc(row.created_at),
    )


def get(session: Session, vector_id: int) -> VectorRecord:
    if not is_row_id(vector_id):
        raise VectorNotFound(str(vector_id))
    found = session.execute(_joined().where(SqlVector.id == vector_id)).first()
    if found is None:
        raise VectorNotFound(str(vector_id))
    return to_record(*found)


def add(
    session: Session,
    *,
    concept_version_id: int,
    model_id: int,
    hook_point: str,
    token_position: str,
    estimator: str,
    oid: str,
    n_layers: int,
    d_model: int,
    dtype: str,
    layers: list[int] | None,
    layer_norms: list[float],
    origin: str,
    lineage_key: str = "",
    source_vector_id: int | None = None,
    map_ids: list[int] | None = None,
    settings: dict[str, Any] | None = None,
    replace: bool = False,
) -> Registered[VectorRecord]:
    """Insert a vector row; the same identity with the same blob is a no-op.

    The same identity with a different blob raises `AlreadyExists` unless ``replace``, which
    points the row at the new blob and audits the old oid.
    """
    if origin not in ORIGINS:
        raise InvalidInput(f"a vector's origin must be one of {', '.join(ORIGINS)}, not {origin!r}")
    identity = {
        "concept_version_id": concept_version_id,
        "model_id": model_id,
        "hook_point": hook_point,
        "token_position": token_position,
        "estimator": estimator,
        "lineage_key": lineage_key,
    }
    existing = session.scalar(select(SqlVector).filter_by(**identity))
    content = {
        "oid": oid,
        "n_layers": n_layers,
        "d_model": d_model,
        "dtype": dtype,
        "layers": layers,
        "layer_norms": layer_norms,
        "origin": origin,
        "source_vector_id": source_vector_id,
        "map_ids": map_ids,
        "settings": json_safe(settings or {}),
    }
    if existing is not None:
        if existing.oid == oid:
            return Registered[VectorRecord](record=get(session, existing.id), created=False)
        if not replace:
            raise _conflict(existing.id)
        _refuse_if_derived(session, existing.id)
        old = {"oid": existing.oid, "settings": existing.settings}
        for field, value in content.items():
            setattr(existing, field, value)
        existing.created_at = now()
        session.flush()
        record_event(
            session,
            "replace",
            "vector",
            existing.id,
            str(existing.id),
            old=old,
            new={"oid": oid, "settings": settings or {}},
            model_id=existing.model_id,
        )
        return Registered[VectorRecord](record=get(session, existing.id), created=False)
    row = SqlVector(**identity, **content, created_at=now())
    session.add(row)
    session.flush()
    record_event(
        session,
        "register",
        "vector",
        row.id,
        str(row.id),
        new={**identity, "oid": oid, "origin": origin},
        model_id=model_id,
    )
    return Registered[VectorRecord](record=get(session, row.id), created=True)


def newest(
    session: Session,
    *,
    concept_version_id: int,
    model_id: int,
    origin: str | None = None,
    estimator: str | None = None,
    token_position: str | None = None,
) -> VectorRecord | None:
    """The newest vector of one concept version on one model matching the filters, or None."""
    statement = _joined().where(
        SqlVector.concept_version_id == concept_version_id, SqlVector.model_id == model_id
    )
    for column, value in (
        (SqlVector.origin, origin),
        (SqlVector.estimator, estimator),
        (SqlVector.token_position, token_position),
    ):
        if value is not None:
            statement = statement.where(column == value)
    found = session.execute(statement.order_by(SqlVector.id.desc()).limit(1)).first()
    return None if found is None else to_record(*found)


def check_conflict(session: Session, *, identity: dict[str, Any], oid: str, replace: bool) -> None:
    """Raise `AlreadyExists` where `add` would, so a caller can refuse before storing a blob."""
    existing = session.scalar(select(SqlVector).filter_by(**identity))
    if existing is not None and existing.oid != oid:
        if not replace:
            raise _conflict(existing.id)
        _refuse_if_derived(session, existing.id)


def _refuse_if_derived(session: Session, vector_id: int) -> None:
    """A vector that others derive from is never rewritten: its mapped vectors and evaluations
    would then describe bytes they were not made from."""
    mapped = session.scalar(
        select(func.count()).select_from(SqlVector).where(SqlVector.source_vector_id == vector_id)
    )
    evaluated = session.scalar(
        select(func.count()).select_from(SqlEvaluation).where(SqlEvaluation.vector_id == vector_id)
    )
    if mapped or evaluated:
        raise InvalidInput(
            f"vector {vector_id} cannot be replaced: {mapped} mapped vector(s) and {evaluated} "
            "evaluation metric(s) derive from it; register the new tensor under another "
            "estimator or token position, or remove what derives from it first"
        )


def _conflict(vector_id: int) -> AlreadyExists:
    return AlreadyExists(
        f"vector {vector_id} (same concept version, model, hook point, token position "
        f"and estimator) with different values",
        "pass replace (CLI: --replace) to point it at the new tensor",
    )


def listing(
    session: Session,
    *,
    limit: int | None,
    after: int | None,
    concept: str | None = None,
    model: str | None = None,
) -> Page[VectorRecord]:
    statement = _joined()
    if concept is not None:
        statement = statement.where(SqlConcept.name == concept)
    if model is not None:
        statement = statement.where(SqlModel.name == model)

    def convert(rows: Sequence[Any]) -> list[VectorRecord]:
        return [to_record(*row) for row in rows]

    return page(session, statement, SqlVector.id, convert, limit=limit, after=after)


def concepts_on(session: Session, models: Sequence[str]) -> dict[str, dict[str, list[int]]]:
    """Per model of ``models``: the concepts with a vector on it, each with its versions
    that have one (sorted); one grouped query, however many vectors there are."""
    rows = session.execute(
        select(SqlModel.name, SqlConcept.name, SqlConceptVersion.version)
        .join(SqlVector, SqlVector.model_id == SqlModel.id)
        .join(SqlConceptVersion, SqlVector.concept_version_id == SqlConceptVersion.id)
        .join(SqlConcept, SqlConceptVersion.concept_id == SqlConcept.id)
        .where(SqlModel.name.in_(list(models)))
        .group_by(SqlModel.name, SqlConcept.name, SqlConceptVersion.version)
        .order_by(SqlModel.name, SqlConcept.name, SqlConceptVersion.version)
    )
    found: dict[str, dict[str, list[int]]] = {name: {} for name in models}
    for model, concept, version in rows:
        found[model].setdefault(concept, []).append(version)
    return found
