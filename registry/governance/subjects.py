"""What a governance command is about: a concept version, a target model and the one vector
that realises the concept there, resolved from ``NAME``, ``NAME@V`` or ``NAME@ALIAS``.

A reference names a concept version; with ``--model`` it names that version's vector on the
model (an alias names its vector exactly; otherwise the model must hold one vector of the
version that is not deprecated, or ``--vector ID`` picks one).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from crx.registry.catalog import concepts, models
from crx.registry.catalog.concepts import find_alias
from crx.registry.db.tables import (
    SqlAlias,
    SqlConcept,
    SqlConceptVersion,
    SqlDeprecation,
    SqlModel,
    SqlVector,
    is_row_id,
)
from crx.registry.errors import (
    ConceptNotFound,
    InvalidInput,
    NoVectorOn,
    VectorNotFound,
)
from crx.schemas.names import split_reference

__all__ = ["Subject", "concept_version", "deprecated_ids", "find_alias", "parse", "resolve"]


@dataclass(frozen=True)
class Subject:
    """A concept version on a target model, and the vector that realises it there."""

    concept: SqlConcept
    version: SqlConceptVersion
    model: SqlModel
    vector: SqlVector

    @property
    def ref(self) -> str:
        return f"{self.concept.name}@{self.version.version}"

    def describe(self) -> str:
        return f"{self.ref} (vector {self.vector.id}) on {self.model.name}"


def parse(ref: str) -> tuple[str, int | None, str | None]:
    try:
        return split_reference(ref)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def concept_version(
    session: Session, ref: str, model: str | None = None
) -> tuple[SqlConcept, SqlConceptVersion, SqlAlias | None]:
    """The concept version ``ref`` names (an alias resolves on ``model``), and that alias."""
    return concepts.find_reference(session, *parse(ref), model)


def deprecated_ids(session: Session, kind: str, ids: list[int]) -> dict[int, str]:
    """id → deprecation reason, for those of ``ids`` (of ``kind``) that are deprecated."""
    if not ids:
        return {}
    rows = session.execute(
        select(SqlDeprecation.object_id, SqlDeprecation.reason).where(
            SqlDeprecation.object_kind == kind, SqlDeprecation.object_id.in_(ids)
        )
    )
    return {object_id: reason for object_id, reason in rows}


def resolve(session: Session, ref: str, model: str, vector_id: int | None = None) -> Subject:
    """The subject of ``ref`` on ``model`` (see the module docstring)."""
    concept, version, alias = concept_version(session, ref, model)
    target = models.find(session, model)
    if vector_id is not None:
        row = session.get(SqlVector, vector_id) if is_row_id(vector_id) else None
        if row is None:
            raise VectorNotFound(str(vector_id))
        if row.model_id != target.id or row.concept_version_id != version.id:
            raise InvalidInput(
                f"vector {vector_id} is not a vector of {concept.name}@{version.version} "
                f"on {target.name}"
            )
        return Subject(concept, version, target, row)
    if alias is not None:
        return Subject(concept, version, target, session.get_one(SqlVector, alias.vector_id))
    rows = list(
        session.scalars(
            select(SqlVector)
            .where(SqlVector.concept_version_id == version.id, SqlVector.model_id == target.id)
            .order_by(SqlVector.id)
        )
    )
    gone = deprecated_ids(session, "vector", [r.id for r in rows])
    usable = [r for r in rows if r.id not in gone]
    label = f"{concept.name}@{version.version}"
    if not usable:
        if rows:
            raise InvalidInput(f"every vector of {label} on {target.name} is deprecated")
        raise NoVectorOn(label, target.name)
    if len(usable) > 1:
        listed = ", ".join(f"{r.id} ({r.origin})" for r in usable)
        raise InvalidInput(
            f"{label} has {len(usable)} vectors on {target.name} ({listed}): pass --vector ID"
        )
    return Subject(concept, version, target, usable[0])


def concept_named(session: Session, name: str) -> SqlConcept:
    row = session.scalar(select(SqlConcept).where(SqlConcept.name == name))
    if row is None:
        raise ConceptNotFound(name)
    return row
