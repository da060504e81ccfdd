"""The registry as one diff sees it: the rows ``crx diff`` compares with, from one transaction.

A `Snapshot` is read once per diff (`Snapshot.read`) in a single read transaction, so every
comparison of a diff sees the same registry, and the diff itself reads nothing more.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crx.registry.db.tables import (
    SqlAffineMap,
    SqlConcept,
    SqlConceptVersion,
    SqlEvaluation,
    SqlModel,
    SqlVector,
)
from crx.schemas.governance import PolicyRecord
from crx.schemas.records import ConceptVersionRecord, EvaluationRecord, MapRecord, VectorRecord
from crx.schemas.spec import CatalogSpec

if TYPE_CHECKING:
    from crx.registry.catalog.service import Catalog


class Snapshot:
    """The registry rows a diff compares with, read in one read transaction."""

    def __init__(
        self,
        session: Session,
        concept_names: set[str],
        map_pairs: set[tuple[str, str]],
        eval_models: set[str],
    ) -> None:
        from crx.registry.catalog import concepts, evaluations, maps, models, vectors
        from crx.registry.governance import policies

        self.models = {row.name: models.to_record(row) for row in session.scalars(select(SqlModel))}
        self.versions: dict[str, list[ConceptVersionRecord]] = defaultdict(list)
        self.concept_names = set(session.scalars(select(SqlConcept.name)))
        rows = session.execute(
            select(SqlConcept, SqlConceptVersion)
            .join(SqlConceptVersion, SqlConceptVersion.concept_id == SqlConcept.id)
            .where(SqlConcept.name.in_(concept_names))
            .order_by(SqlConceptVersion.version)
        ).all()
        for concept, version in rows:
            self.versions[concept.name].append(concepts.version_record(concept, version))
        version_ids = [v.id for vs in self.versions.values() for v in vs]
        self.vectors: list[VectorRecord] = [
            vectors.to_record(*row)
            for row in session.execute(
                vectors._joined().where(SqlVector.concept_version_id.in_(version_ids))
            ).all()
        ]
        self.maps: list[MapRecord] = maps.between(session, map_pairs)
        self.evaluations: list[EvaluationRecord] = [
            e
            for model in sorted(eval_models & set(self.models))
            for e in evaluations.listing(session, limit=None, after=None, model=model).items
        ]
        self._maps_by_pair: dict[tuple[str, str], list[MapRecord]] = defaultdict(list)
        for m in self.maps:
            self._maps_by_pair[(m.source_model, m.target_model)].append(m)
        self._evaluations_by_model: dict[str, list[EvaluationRecord]] = defaultdict(list)
        for e in self.evaluations:
            self._evaluations_by_model[e.model].append(e)
        self.policies: dict[str, PolicyRecord] = {
            record.spec.name: record for record in policies.listing(session)
        }
        self.removals = {
            "model": removal_counts(session, "model", set(self.models)),
            "concept": removal_counts(session, "concept", self.concept_names),
        }
        # filled by `read` (anchored maps only)
        self.anchor_digests: dict[str, str | Exception] = {}
        self.leaky_maps: dict[tuple[int, str, str], set[int]] = {}

    @classmethod
    def read(cls, catalog: Catalog, spec: CatalogSpec) -> Snapshot:
        """The snapshot a diff of ``spec`` needs, from one read transaction."""
        names = {c.name for c in spec.concepts} | referenced_concepts(spec)
        pairs = {(m.source, m.target) for m in spec.maps}
        pairs |= {(t.source, t.target) for t in spec.transplants}
        with catalog.db.read() as session:
            snapshot = cls(session, names, pairs, {e.model for e in spec.evaluations})
        snapshot._read_anchors(catalog, spec)
        return snapshot

    def _read_anchors(self, catalog: Catalog, spec: CatalogSpec) -> None:
        """What anchored maps need beyond the rows (read after them; the anchors of a map are
        written with it, so they cannot drift from the rows read above): the digest of the
        anchor set each declared anchored map would be fitted on now (or why there is none),
        and, per concept version a transplant names, the registered maps that leak for it."""
        from crx.registry.errors import CrxError
        from crx.registry.names import parse_versioned
        from crx.registry.workflows.anchors import anchor_digest, split_leaky

        for m in spec.maps:
            if m.solver != "anchored" or not {m.source, m.target} <= set(self.models):
                continue
            try:
                self.anchor_digests[m.key] = anchor_digest(
                    catalog,
                    self.models[m.source],
                    self.models[m.target],
                    exclude=m.exclude,
                    template=m.anchor_template,
                )
            except CrxError as e:
                self.anchor_digests[m.key] = e
        for t in spec.transplants:
            maps = self.maps_between(t.source, t.target)
            if not any(m.solver == "anchored" for m in maps):
                continue
            for version in self.versions.get(parse_versioned(t.concept)[0], []):
                leaky = split_leaky(catalog, version, maps)[1]
                self.leaky_maps[(version.id, t.source, t.target)] = set(leaky)

    def usable_maps(self, version_id: int, source: str, target: str) -> list[MapRecord]:
        """The registered maps source → target a transplant of that concept version may use."""
        leaky = self.leaky_maps.get((version_id, source, target), set())
        return [m for m in self.maps_between(source, target) if m.id not in leaky]

    def vectors_on(self, version_id: int, model: str) -> list[VectorRecord]:
        return [v for v in self.vectors if v.concept_version_id == version_id and v.model == model]

    def maps_between(self, source: str, target: str) -> list[MapRecord]:
        return self._maps_by_pair.get((source, target), [])

    def evaluations_on(self, model: str) -> list[EvaluationRecord]:
        return self._evaluations_by_model.get(model, [])


def removal_counts(session: Session, kind: str, names: set[str]) -> dict[str, dict[str, int]]:
    """For models or concepts about to be shown as removals: how many vectors, maps and
    evaluations would go with each (grouped queries, whatever the number of names)."""
    counts: dict[str, dict[str, int]] = {
        n: {"vectors": 0, "maps": 0, "evaluations": 0} for n in names
    }
    if not names:
        return counts

    def add(field_name: str, rows: Any) -> None:
        for name, n in rows:
            if name in counts:
                counts[name][field_name] += int(n)

    if kind == "model":
        add(
            "vectors",
            session.execute(
                select(SqlModel.name, func.count(SqlVector.id))
                .join(SqlVector, SqlVector.model_id == SqlModel.id)
                .group_by(SqlModel.name)
            ),
        )
        for column in (SqlAffineMap.source_model_id, SqlAffineMap.target_model_id):
            add(
                "maps",
                session.execute(
                    select(SqlModel.name, func.count(SqlAffineMap.id))
                    .join(SqlAffineMap, column == SqlModel.id)
                    .group_by(SqlModel.name)
                ),
            )
        add(
            "evaluations",
            session.execute(
                select(SqlModel.name, func.count(SqlEvaluation.id))
                .join(SqlEvaluation, SqlEvaluation.model_id == SqlModel.id)
                .group_by(SqlModel.name)
            ),
        )
    else:
        add(
            "vectors",
            session.execute(
                select(SqlConcept.name, func.count(SqlVector.id))
                .join(SqlConceptVersion, SqlConceptVersion.concept_id == SqlConcept.id)
                .join(SqlVector, SqlVector.concept_version_id == SqlConceptVersion.id)
                .group_by(SqlConcept.name)
            ),
        )
        add(
            "evaluations",
            session.execute(
                select(SqlConcept.name, func.count(SqlEvaluation.id))
                .join(SqlConceptVersion, SqlConceptVersion.concept_id == SqlConcept.id)
                .join(SqlVector, SqlVector.concept_version_id == SqlConceptVersion.id)
                .join(SqlEvaluation, SqlEvaluation.vector_id == SqlVector.id)
                .group_by(SqlConcept.name)
            ),
        )
    return counts


def referenced_concepts(catalog: CatalogSpec) -> set[str]:
    from crx.registry.names import parse_versioned

    refs = [t.concept for t in catalog.transplants]
    refs += [e.concept for e in catalog.evaluations if e.concept is not None]
    return {parse_versioned(r)[0] for r in refs}
