"""Affine maps between models: one row per (source, target, layer pair, fit recipe)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, aliased

from crx.registry.audit import record_event
from crx.registry.catalog.paging import page
from crx.registry.db.tables import (
    SqlAffineMap,
    SqlConcept,
    SqlConceptVersion,
    SqlMapAnchor,
    SqlModel,
    is_row_id,
)
from crx.registry.errors import MapNotFound
from crx.registry.hashing import content_sha256, json_safe
from crx.registry.timeutil import as_utc, now
from crx.schemas.records import MapAnchorRecord, MapRecord, Page, Registered

_Source = aliased(SqlModel)
_Target = aliased(SqlModel)


def _joined() -> Select:
    return (
        select(SqlAffineMap, _Source.name, _Target.name)
        .join(_Source, SqlAffineMap.source_model_id == _Source.id)
        .join(_Target, SqlAffineMap.target_model_id == _Target.id)
    )


def to_record(row: SqlAffineMap, source: str, target: str) -> MapRecord:
    return MapRecord(
        id=row.id,
        source_model=source,
        target_model=target,
        source_layer=row.source_layer,
        target_layer=row.target_layer,
        oid=row.oid,
        solver=row.solver,
        solver_settings=dict(row.solver_settings or {}),
        corpus_oid=row.corpus_oid,
        n_samples=row.n_samples,
        r2=row.r2,
        mse=row.mse,
        cosine=row.cosine,
        metrics=dict(row.metrics or {}),
        created_at=as_utc(row.created_at),
    )


def get(session: Session, map_id: int) -> MapRecord:
    if not is_row_id(map_id):
        raise MapNotFound(str(map_id))
    found = session.execute(_joined().where(SqlAffineMap.id == map_id)).first()
    if found is None:
        raise MapNotFound(str(map_id))
    return to_record(*found)


def by_ids(session: Session, map_ids: Sequence[int]) -> dict[int, MapRecord]:
    """The maps of ``map_ids`` that exist, by id, in one query (unknown ids are left out)."""
    wanted = sorted({i for i in map_ids if is_row_id(i)})
    if not wanted:
        return {}
    rows = session.execute(_joined().where(SqlAffineMap.id.in_(wanted))).all()
    return {row[0].id: to_record(*row) for row in rows}


def fit_sha256(solver: str, solver_settings: dict[str, Any], corpus_oid: str | None) -> str:
    return content_sha256({"solver": solver, "settings": solver_settings, "corpus": corpus_oid})


def add(
    session: Session,
    *,
    source_model_id: int,
    target_model_id: int,
    source_layer: int,
    target_layer: int,
    oid: str,
    solver: str,
    solver_settings: dict[str, Any],
    corpus_oid: str | None,
    n_samples: int | None,
    r2: float | None,
    mse: float | None,
    cosine: float | None,
    metrics: dict[str, Any] | None = None,
    anchors: Sequence[tuple[int, int, int]] = (),
) -> Registered[MapRecord]:
    """Insert a map, or refresh the row of the same pair and fit recipe (audited).

    ``anchors``: ``(concept version id, source vector id, target vector id)`` of each concept
    an anchored fit used; recorded with a new row (the recipe's hash covers them, so a refreshed
    row has the same ones).
    """
    identity = {
        "source_model_id": source_model_id,
        "target_model_id": target_model_id,
        "source_layer": source_layer,
        "target_layer": target_layer,
        "fit_sha256": fit_sha256(solver, solver_settings, corpus_oid),
    }
    content = {
        "oid": oid,
        "solver": solver,
        "solver_settings": json_safe(solver_settings),
        "corpus_oid": corpus_oid,
        "n_samples": n_samples,
        "r2": json_safe(r2),
        "mse": json_safe(mse),
        "cosine": json_safe(cosine),
        "metrics": json_safe(metrics or {}),
    }
    existing = session.scalar(select(SqlAffineMap).filter_by(**identity))
    if existing is not None:
        if existing.oid == oid:
            return Registered[MapRecord](record=get(session, existing.id), created=False)
        old = {"oid": existing.oid, "r2": existing.r2}
        for field, value in content.items():
            setattr(existing, field, value)
        existing.created_at = now()
        session.flush()
        record_event(
            session,
            "replace",
            "map",
            existing.id,
            str(existing.id),
            old=old,
            new={"oid": oid, "r2": r2},
            model_id=existing.target_model_id,
        )
        return Registered[MapRecord](record=get(session, existing.id), created=False)
    row = SqlAffineMap(**identity, **content, created_at=now())
    session.add(row)
    session.flush()
    session.add_all(
        SqlMapAnchor(map_id=row.id, concept_version_id=cv, source_vector_id=sv, target_vector_id=tv)
        for cv, sv, tv in anchors
    )
    record_event(
        session,
        "register",
        "map",
        row.id,
        str(row.id),
        new={**identity, "oid": oid, "solver": solver, "r2": r2},
        model_id=row.target_model_id,
    )
    return Registered[MapRecord](record=get(session, row.id), created=True)


def listing(
    session: Session,
    *,
    limit: int | None,
    after: int | None,
    source: str | None = None,
    target: str | None = None,
) -> Page[MapRecord]:
    statement = _joined()
    if source is not None:
        statement = statement.where(_Source.name == source)
    if target is not None:
        statement = statement.where(_Target.name == target)

    def convert(rows: Sequence[Any]) -> list[MapRecord]:
        return [to_record(*row) for row in rows]

    return page(session, statement, SqlAffineMap.id, convert, limit=limit, after=after)


def between(session: Session, pairs: set[tuple[str, str]]) -> list[MapRecord]:
    """Every map whose (source model, target model) is one of ``pairs``, oldest first."""
    if not pairs:
        return []
    sources, targets = {s for s, _ in pairs}, {t for _, t in pairs}
    statement = (
        _joined()
        .where(_Source.name.in_(sources), _Target.name.in_(targets))
        .order_by(SqlAffineMap.id)
    )
    rows = session.execute(statement).all()
    return [to_record(*row) for row in rows if (row[1], row[2]) in pairs]


def anchors_of(session: Session, map_ids: Sequence[int]) -> dict[int, list[MapAnchorRecord]]:
    """The anchors of each of ``map_ids`` (maps without anchors are left out), by concept."""
    wanted = sorted({i for i in map_ids if is_row_id(i)})
    if not wanted:
        return {}
    rows = session.execute(
        select(SqlMapAnchor, SqlConcept.name, SqlConceptVersion.version)
        .join(SqlConceptVersion, SqlMapAnchor.concept_version_id == SqlConceptVersion.id)
        .join(SqlConcept, SqlConceptVersion.concept_id == SqlConcept.id)
        .where(SqlMapAnchor.map_id.in_(wanted))
        .order_by(SqlMapAnchor.map_id, SqlConcept.name, SqlConceptVersion.version)
    ).all()
    out: dict[int, list[MapAnchorRecord]] = {}
    for anchor, name, version in rows:
        out.setdefault(anchor.map_id, []).append(
            MapAnchorRecord(
                concept=name,
                version=version,
                concept_version_id=anchor.concept_version_id,
                source_vector_id=anchor.source_vector_id,
                target_vector_id=anchor.target_vector_id,
            )
        )
    return out
