"""Concepts and their versions: race-free version numbers, idempotent re-registration.

Version numbers come from ``max(version) + 1`` inside the write transaction and are guarded by
the unique constraint ``(concept_id, version)``: if two writers pick the same number, one
insert fails and the facade retries it in a fresh transaction (PostgreSQL). On SQLite, write
transactions begin with ``BEGIN IMMEDIATE`` and so never overlap. Identical content (same
pairs oid, template, construction and extraction settings) is caught by the unique constraint
``(concept_id, content_sha256)`` and returns the existing version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crx.registry.audit import record_event
from crx.registry.catalog import models
from crx.registry.catalog.paging import name_contains, page
from crx.registry.db.tables import SqlAlias, SqlConcept, SqlConceptVersion, SqlModel, is_row_id
from crx.registry.errors import AliasNotFound, ConceptNotFound
from crx.registry.hashing import content_sha256
from crx.registry.timeutil import as_utc, now
from crx.schemas.records import ConceptRecord, ConceptVersionRecord, Page, Registered


def version_record(concept: SqlConcept, row: SqlConceptVersion) -> ConceptVersionRecord:
    return ConceptVersionRecord(
        id=row.id,
        concept=concept.name,
        version=row.version,
        ref=f"{concept.name}@{row.version}",
        description=concept.description,
        pairs_oid=row.pairs_oid,
        n_pairs=row.n_pairs,
        template=row.template,
        pair_construction=row.pair_construction,
        extraction=dict(row.extraction or {}),
        content_sha256=row.content_sha256,
        tags=dict(row.tags or {}),
        created_at=as_utc(row.created_at),
    )


def recipe_sha256(
    pairs_oid: str, template: str, pair_construction: str, extraction: dict[str, Any]
) -> str:
    return content_sha256(
        {
            "pairs_oid": pairs_oid,
            "template": template,
            "pair_construction": pair_construction,
            "extraction": extraction,
        }
    )


def find_version(
    session: Session, name: str, version: int | None
) -> tuple[SqlConcept, SqlConceptVersion]:
    """The concept and its version ``version`` (None = latest), else `ConceptNotFound`."""
    concept = session.scalar(select(SqlConcept).where(SqlConcept.name == name))
    if concept is None or (version is not None and not is_row_id(version)):
        raise ConceptNotFound(name, version)
    statement = select(SqlConceptVersion).where(SqlConceptVersion.concept_id == concept.id)
    if version is None:
        statement = statement.order_by(SqlConceptVersion.version.desc()).limit(1)
    else:
        statement = statement.where(SqlConceptVersion.version == version)
    row = session.scalar(statement)
    if row is None:
        raise ConceptNotFound(name, version)
    return concept, row


def find_alias(session: Session, concept: str, alias: str, model: str | None) -> SqlAlias:
    """The alias ``concept@alias`` on ``model``; without a model, the only model that has it."""
    query = (
        select(SqlAlias)
        .join(SqlConcept, SqlAlias.concept_id == SqlConcept.id)
        .where(SqlConcept.name == concept, SqlAlias.name == alias)
    )
    if model is not None:
        query = query.where(SqlAlias.model_id == models.find(session, model).id)
    rows = list(session.scalars(query))
    if not rows:
        raise AliasNotFound(f"{concept}@{alias}", model)
    if len(rows) > 1:
        names = sorted(session.get_one(SqlModel, r.model_id).name for r in rows)
        raise AliasNotFound(
            f"{concept}@{alias}", None, f"it is an alias on {', '.join(names)}: pass --model"
        )
    return rows[0]


def find_reference(
    session: Session, name: str, version: int | None, alias: str | None, model: str | None
) -> tuple[SqlConcept, SqlConceptVersion, SqlAlias | None]:
    """What ``NAME``, ``NAME@V`` or ``NAME@ALIAS`` names: the concept, its version, and the
    alias (an alias resolves on ``model``, or on the only model that has it)."""
    if alias is None:
        return (*find_version(session, name, version), None)
    found = find_alias(session, name, alias, model)
    concept = session.get_one(SqlConcept, found.concept_id)
    return concept, session.get_one(SqlConceptVersion, found.concept_version_id), found


def register_version(
    session: Session,
    name: str,
    *,
    description: str | None,
    pairs_oid: str,
    n_pairs: int,
    template: str,
    pair_construction: str,
    extraction: dict[str, Any],
) -> Registered[ConceptVersionRecord]:
    """Add a version (or return the identical existing one). May raise IntegrityError on a race."""
    stamp = now()
    # One call writes one audit event: a new concept or a changed description is recorded in
    # the new version's event; only a description change without a new version is its own.
    old_description: dict[str, Any] | None = None
    concept = session.scalar(select(SqlConcept).where(SqlConcept.name == name))
    if concept is None:
        concept = SqlConcept(
            name=name, description=description or "", created_at=stamp, updated_at=stamp
        )
        session.add(concept)
        session.flush()
    elif description is not None and description != concept.description:
        old_description = {"description": concept.description}
        concept.description = description
        concept.updated_at = stamp
    recipe = recipe_sha256(pairs_oid, template, pair_construction, extraction)
    existing = session.scalar(
        select(SqlConceptVersion).where(
            SqlConceptVersion.concept_id == concept.id,
            SqlConceptVersion.content_sha256 == recipe,
        )
    )
    if existing is not None:
        if old_description is not None:
            record_event(
                session,
                "update",
                "concept",
                concept.id,
                name,
                old=old_description,
                new={"description": concept.description},
            )
        return Registered[ConceptVersionRecord](
            record=version_record(concept, existing), created=False
        )
    latest = session.scalar(
        select(func.max(SqlConceptVersion.version)).where(
            SqlConceptVersion.concept_id == concept.id
        )
    )
    row = SqlConceptVersion(
        concept_id=concept.id,
        version=(latest or 0) + 1,
        pairs_oid=pairs_oid,
        n_pairs=n_pairs,
        template=template,
        pair_construction=pair_construction,
        extraction=extraction,
        content_sha256=recipe,
        tags={},
        created_at=stamp,
    )
    session.add(row)
    session.flush()
    concept.updated_at = stamp
    record_event(
        session,
        "register",
        "concept_version",
        row.id,
        f"{name}@{row.version}",
        old=old_description,
        new={
            "concept_id": concept.id,
            "description": concept.description,
            "pairs_oid": pairs_oid,
            "n_pairs": n_pairs,
            "template": template,
            "pair_construction": pair_construction,
            "extraction": extraction,
        },
    )
    return Registered[ConceptVersionRecord](record=version_record(concept, row), created=True)


def mark_for_use(
    session: Session, name: str, version: int | None, use: bool
) -> Registered[ConceptVersionRecord]:
    """Mark one version of a concept for use (``crx plan``'s default set), or unmark it.

    At most one version of a concept is marked: marking one unmarks the others, in the same
    audit event. ``created`` is False when nothing changed.
    """
    concept, row = find_version(session, name, version)
    others = [
        v
        for v in session.scalars(
            select(SqlConceptVersion).where(SqlConceptVersion.concept_id == concept.id)
        )
        if v.id != row.id and (v.tags or {}).get("use")
    ]
    if bool((row.tags or {}).get("use")) == use and not (use and others):
        return Registered[ConceptVersionRecord](record=version_record(concept, row), created=False)
    row.tags = {**(row.tags or {}), "use": use}
    unmarked = []
    if use:
        for other in others:
            other.tags = {**(other.tags or {}), "use": False}
            unmarked.append(other.version)
    session.flush()
    record_event(
        session,
        "mark-for-use" if use else "unmark-for-use",
        "concept_version",
        row.id,
        f"{name}@{row.version}",
        old={"unmarked_versions": unmarked} if unmarked else None,
        new={"use": use},
    )
    return Registered[ConceptVersionRecord](record=version_record(concept, row), created=True)


def listing(
    session: Session, *, limit: int | None, after: int | None, name: str | None = None
) -> Page[ConceptRecord]:
    def convert(rows: Sequence[Any]) -> list[ConceptRecord]:
        concepts = [row[0] for row in rows]
        versions: dict[int, list[int]] = {c.id: [] for c in concepts}
        if concepts:
            found = session.execute(
                select(SqlConceptVersion.concept_id, SqlConceptVersion.version)
                .where(SqlConceptVersion.concept_id.in_(list(versions)))
                .order_by(SqlConceptVersion.version)
            )
            for concept_id, version in found:
                versions[concept_id].append(version)
        return [
            ConceptRecord(
                id=c.id,
                name=c.name,
                description=c.description,
                versions=versions[c.id],
                latest_version=versions[c.id][-1] if versions[c.id] else None,
                created_at=as_utc(c.created_at),
                updated_at=as_utc(c.updated_at),
            )
            for c in concepts
        ]

    statement = name_contains(select(SqlConcept), SqlConcept.name, name)
    return page(session, statement, SqlConcept.id, convert, limit=limit, after=after)


def versions_of(session: Session, name: str) -> list[ConceptVersionRecord]:
    concept = session.scalar(select(SqlConcept).where(SqlConcept.name == name))
    if concept is None:
        raise ConceptNotFound(name)
    rows = session.scalars(
        select(SqlConceptVersion)
        .where(SqlConceptVersion.concept_id == concept.id)
        .order_by(SqlConceptVersion.version)
    )
    return [version_record(concept, row) for row in rows]
