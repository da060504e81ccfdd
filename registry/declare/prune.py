"""``crx apply --prune``: delete a model or concept the specs no longer declare, with what
depends on it (vectors, vectors mapped from them, maps, evaluations), inside apply's transaction.

Each deletion writes one audit event with the counts of what went with it and, under
``deleted``, each object that went (vectors and maps with their oids, concept versions with
their pairs' oid, evaluation ids). Blobs stay in the store until ``crx store gc`` finds them
unreferenced.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from crx.registry.audit import record_event
from crx.registry.db.tables import (
    SqlAffineMap,
    SqlAlias,
    SqlAliasHistory,
    SqlApproval,
    SqlConcept,
    SqlConceptVersion,
    SqlEvaluation,
    SqlModel,
    SqlVector,
)
from crx.registry.errors import GovernedObject


def _with_descendants(session: Session, roots: set[int], dropped_maps: set[int]) -> set[int]:
    """``roots`` plus every vector mapped from them, or through a map that is being deleted."""
    found = set(roots)
    mapped = session.execute(
        select(SqlVector.id, SqlVector.source_vector_id, SqlVector.map_ids).where(
            SqlVector.origin == "mapped"
        )
    ).all()
    changed = True
    while changed:
        changed = False
        for vid, source, map_ids in mapped:
            if vid in found:
                continue
            if source in found or dropped_maps.intersection(map_ids or ()):
                found.add(vid)
                changed = True
    return found


def _refuse_governed(session: Session, ids: set[int], what: str) -> None:
    """An aliased or approved vector, or one in an alias's history, is never deleted: the
    history and approvals must keep pointing at what they were about."""
    if not ids:
        return
    for column, why in (
        (SqlAlias.vector_id, "an alias points at vector"),
        (SqlApproval.vector_id, "an approval is for vector"),
        (SqlAliasHistory.new_vector_id, "an alias's history names vector"),
        (SqlAliasHistory.old_vector_id, "an alias's history names vector"),
    ):
        found = session.scalar(select(column).where(column.in_(ids)).limit(1))
        if found is not None:
            raise GovernedObject(what, f"{why} {found}")


def _delete_vectors(
    session: Session, ids: set[int], model_id: int | None, deleted: dict[str, Any], what: str
) -> tuple[int, int]:
    """Delete vectors ``ids`` and their evaluations (and, given a model, all its evaluations),
    noting each in ``deleted``."""
    _refuse_governed(session, ids, what)
    condition: Any = SqlEvaluation.vector_id.in_(ids)
    if model_id is not None:
        condition = condition | (SqlEvaluation.model_id == model_id)
    deleted["vectors"] = [
        {"id": vid, "oid": oid}
        for vid, oid in session.execute(
            select(SqlVector.id, SqlVector.oid).where(SqlVector.id.in_(ids)).order_by(SqlVector.id)
        )
    ]
    deleted["evaluations"] = sorted(session.scalars(select(SqlEvaluation.id).where(condition)))
    n_evaluations = session.execute(delete(SqlEvaluation).where(condition)).rowcount  # type: ignore[attr-defined]
    if ids:
        # Lineage points between these rows; clear it first so no row is deleted while another
        # still references it (the foreign key is RESTRICT, checked row by row on PostgreSQL).
        session.execute(
            update(SqlVector).where(SqlVector.id.in_(ids)).values(source_vector_id=None)
        )
        session.execute(delete(SqlVector).where(SqlVector.id.in_(ids)))
    return len(ids), int(n_evaluations or 0)


def delete_model(session: Session, name: str) -> int:
    model = session.scalar(select(SqlModel).where(SqlModel.name == name))
    if model is None:
        return 0
    map_ids = set(
        session.scalars(
            select(SqlAffineMap.id).where(
                (SqlAffineMap.source_model_id == model.id)
                | (SqlAffineMap.target_model_id == model.id)
            )
        )
    )
    own = set(session.scalars(select(SqlVector.id).where(SqlVector.model_id == model.id)))
    deleted: dict[str, Any] = {}
    n_vectors, n_evaluations = _delete_vectors(
        session, _with_descendants(session, own, map_ids), model.id, deleted, f"model {name}"
    )
    deleted["maps"] = [
        {"id": mid, "oid": oid}
        for mid, oid in session.execute(
            select(SqlAffineMap.id, SqlAffineMap.oid)
            .where(SqlAffineMap.id.in_(map_ids))
            .order_by(SqlAffineMap.id)
        )
    ]
    session.execute(delete(SqlAffineMap).where(SqlAffineMap.id.in_(map_ids)))
    session.delete(model)
    counts = {"vectors": n_vectors, "maps": len(map_ids), "evaluations": n_evaluations}
    record_event(session, "delete", "model", model.id, name, old={**counts, "deleted": deleted})
    return 1 + sum(counts.values())


def delete_concept(session: Session, name: str) -> int:
    concept = session.scalar(select(SqlConcept).where(SqlConcept.name == name))
    if concept is None:
        return 0
    version_ids = set(
        session.scalars(
            select(SqlConceptVersion.id).where(SqlConceptVersion.concept_id == concept.id)
        )
    )
    own = set(
        session.scalars(select(SqlVector.id).where(SqlVector.concept_version_id.in_(version_ids)))
    )
    deleted: dict[str, Any] = {
        "versions": [
            {"version": version, "pairs_oid": oid}
            for version, oid in session.execute(
                select(SqlConceptVersion.version, SqlConceptVersion.pairs_oid)
                .where(SqlConceptVersion.id.in_(version_ids))
                .order_by(SqlConceptVersion.version)
            )
        ]
    }
    n_vectors, n_evaluations = _delete_vectors(
        session, _with_descendants(session, own, set()), None, deleted, f"concept {name}"
    )
    session.execute(delete(SqlConceptVersion).where(SqlConceptVersion.id.in_(version_ids)))
    session.delete(concept)
    counts = {"versions": len(version_ids), "vectors": n_vectors, "evaluations": n_evaluations}
    record_event(session, "delete", "concept", concept.id, name, old={**counts, "deleted": deleted})
    return 1 + sum(counts.values())
