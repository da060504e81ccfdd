"""``crx store verify`` and ``crx store gc``: the blobs against the rows that reference them.

verify re-hashes every referenced blob (optional corpus and dataset blobs where present). gc
deletes only unreferenced blobs older than the grace period, and only inside a transaction
that holds the blob lease alone (`crx.registry.db.session.take_blob_lease`), re-reading the
references there, so a writer committing meanwhile never loses its blob; it audits what it
deleted.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from crx.registry.audit import acting_as, record_event
from crx.registry.catalog.references import references
from crx.registry.db.session import Database, session_is_owner
from crx.registry.errors import NotPermitted
from crx.registry.store import ObjectStore
from crx.registry.store.maintenance import DEFAULT_GC_GRACE_SECONDS, old_enough, unreferenced
from crx.registry.store.maintenance import verify as verify_blobs
from crx.schemas.records import GcReport, VerifyReport


def verify(db: Database, store: ObjectStore) -> VerifyReport:
    with db.read() as session:
        required, optional = references(session)
    store.check_reachable()
    checked, problems = verify_blobs(store, required, optional)
    extra = unreferenced(store, set(required) | set(optional))
    return VerifyReport(
        store=store.display_url,
        checked=checked,
        ok=checked - len(problems),
        problems=problems,
        unreferenced=len(extra),
    )


def _delete_unreferenced(
    session: Session, store: ObjectStore, candidates: list[str], grace_seconds: float
) -> list[str]:
    """Inside gc's transaction (no writer commits meanwhile): delete the candidates still
    unreferenced and still old, and return them."""
    required, optional = references(session)
    referenced = set(required) | set(optional)
    gone = [
        oid for oid in candidates if oid not in referenced and old_enough(store, oid, grace_seconds)
    ]
    for oid in gone:
        store.remove(oid)
    if gone:
        record_event(session, "gc", "blob", None, store.display_url, old={"oids": gone})
    return gone


def gc(db: Database, store: ObjectStore, *, dry_run: bool, grace_seconds: float) -> GcReport:
    with db.read() as session:
        required, optional = references(session)
    store.check_reachable()
    candidates = [
        oid
        for oid in unreferenced(store, set(required) | set(optional))
        if old_enough(store, oid, grace_seconds)
    ]
    if not dry_run:
        with db.read() as session:
            if not session_is_owner(session):
                raise NotPermitted(
                    acting_as(session),
                    "delete blobs (crx store gc)",
                    "it is the registry owner's work",
                )
    # A temporary file is never referenced; past the grace its writer is gone. Never younger
    # than the default grace, whatever the caller's: a writer puts back a blob gc took (see
    # `_delete_unreferenced`), but a temporary file taken from under it fails its write (found
    # by tests/test_governance_concurrency.py with a grace of 0).
    temporaries = store.stale_temporaries(max(grace_seconds, DEFAULT_GC_GRACE_SECONDS))
    if not dry_run:
        candidates = db.write(
            lambda s: _delete_unreferenced(s, store, candidates, grace_seconds),
            deletes_blobs=True,
        )
        for path in temporaries:
            path.unlink(missing_ok=True)
    return GcReport(
        store=store.display_url,
        unreferenced=candidates,
        deleted=not dry_run,
        stale_temporary_files=len(temporaries),
    )
