"""Store maintenance: verify referenced blobs, find the ones nothing references.

``verify`` re-hashes each blob a row references and names, for each missing or corrupt one,
the rows that reference it. ``gc`` is a pure function of the referenced set (from
`crx.registry.catalog.references`): it removes only blobs no row references, and only blobs
older than a grace period, so a blob that a concurrent register has just put (its row not yet
committed) is never taken.
"""

from __future__ import annotations

from crx.registry.store.objects import BlobStatus, ObjectStore
from crx.schemas.records import BlobProblem

DEFAULT_GC_GRACE_SECONDS = 600


def verify(
    store: ObjectStore, required: dict[str, list[str]], optional: dict[str, list[str]]
) -> tuple[int, list[BlobProblem]]:
    """(blobs checked, problems): every required blob, and every optional one that is present
    (a corpus or dataset may be gone, but one that is there must be intact)."""
    problems = []
    checked = 0
    for oid in sorted(set(required) | set(optional)):
        status = store.status(oid)
        if oid not in required and status is BlobStatus.MISSING:
            continue
        checked += 1
        if status is not BlobStatus.OK:
            labels = required.get(oid, []) + optional.get(oid, [])
            problems.append(BlobProblem(oid=oid, status=status.value, referenced_by=sorted(labels)))
    return checked, problems


def unreferenced(store: ObjectStore, referenced: set[str]) -> list[str]:
    return [oid for oid in store.iter_oids() if oid not in referenced]


def old_enough(store: ObjectStore, oid: str, grace_seconds: float) -> bool:
    """Whether blob ``oid`` was written at least ``grace_seconds`` ago (gone: no)."""
    if grace_seconds <= 0:
        return True
    age = store.age_seconds(oid)
    return age is not None and age >= grace_seconds
