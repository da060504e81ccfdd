"""Which blobs the catalogue's rows reference, for ``crx store verify`` and ``gc``.

Required: pairs of every concept version, every vector and every map (a row without its blob
is broken). Optional: corpora of fits and datasets of evaluations (recorded for provenance; a
missing one breaks nothing, but ``gc`` must not take it).
"""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from crx.registry.db.tables import (
    SqlAffineMap,
    SqlConcept,
    SqlConceptVersion,
    SqlEvaluation,
    SqlVector,
)


def references(session: Session) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(required, optional): oid → labels of the rows that reference it, for each kind."""
    required: dict[str, list[str]] = defaultdict(list)
    for oid, name, version in session.execute(
        select(SqlConceptVersion.pairs_oid, SqlConcept.name, SqlConceptVersion.version).join(
            SqlConcept, SqlConceptVersion.concept_id == SqlConcept.id
        )
    ):
        required[oid].append(f"concept {name}@{version} (pairs)")
    for oid, vector_id in session.execute(select(SqlVector.oid, SqlVector.id)):
        required[oid].append(f"vector {vector_id}")
    for oid, map_id in session.execute(select(SqlAffineMap.oid, SqlAffineMap.id)):
        required[oid].append(f"map {map_id}")
    optional: dict[str, list[str]] = defaultdict(list)
    for corpus, map_id in session.execute(select(SqlAffineMap.corpus_oid, SqlAffineMap.id)):
        if corpus:
            optional[corpus].append(f"map {map_id} (corpus)")
    for dataset, evaluation_id in session.execute(
        select(SqlEvaluation.dataset_oid, SqlEvaluation.id)
    ):
        if dataset:
            optional[dataset].append(f"evaluation {evaluation_id} (dataset)")
    return dict(required), dict(optional)
