"""Store maintenance: verify every referenced blob, collect the ones nothing references.

``verify`` re-hashes each blob a row references and names, for each missing or corrupt one,
the rows that reference it. ``gc`` is a pure function of the referenced set: it removes only
blobs no row references, and only blobs older than a grace period, so a blob that a concurrent
register has just put (its row not yet committed) is never taken.
"""

from __future__ import annotations

import time
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
from crx.registry.store import BlobStatus, ObjectStore
from crx.schemas.records import BlobProblem

DEFAULT_GC_GRACE_SECONDS = 600


def references(session: Session) -> tuple[dict[str, list[str]], set[str]]:
    """(required oid → labels of the rows that reference it, optional oids present in rows)."""
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
    optional = {
        oid for (oid,) in session.execute(select(SqlAffineMap.corpus_oid).distinct()) if oid
    } | {oid for (oid,) in session.execute(select(SqlEvaluation.dataset_oid).distinct()) if oid}
    return dict(required), optional


def verify(store: ObjectStore, required: dict[str, list[str]]) -> list[BlobProblem]:
    problems = []
    for oid in sorted(required):
        status = store.status(oid)
        if status is not BlobStatus.OK:
            problems.append(
                BlobProblem(oid=oid, status=status.value, referenced_by=sorted(required[oid]))
            )
    return problems


def unreferenced(store: ObjectStore, referenced: set[str]) -> list[str]:
    return [oid for oid in store.iter_oids() if oid not in referenced]


def old_enough(store: ObjectStore, oid: str, grace_seconds: float) -> bool:
    if grace_seconds <= 0:
        return True
    try:
        info = store.fs.info(store.path(oid))
    except FileNotFoundError:
        return False
    modified = info.get("mtime") or info.get("LastModified") or info.get("created")
    if modified is None:
        return True
    stamp = modified.timestamp() if hasattr(modified, "timestamp") else float(modified)
    return time.time() - stamp >= grace_seconds
