"""What the planner reads from the catalogue: small immutable facts, fetched lazily and cached.

The planner walks maps backwards from a target, so it asks "which maps end in model M?" for the
few models it actually reaches (indexed by ``ix_affine_maps_target``), and "which vectors does
this concept version have?" for the requested concepts only. Column-only core queries, no ORM
objects: a plan over a catalogue of 50,000 maps touches a few hundred rows.

Governance is read here too: the deprecations once per plan (every decision of one plan sees
the same set), and the aliases of one name on the target.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import String, bindparam, cast, func, select
from sqlalchemy.orm import Session

from crx.registry.db.tables import (
    SqlAffineMap,
    SqlAlias,
    SqlAuditEvent,
    SqlConcept,
    SqlConceptVersion,
    SqlDeprecation,
    SqlEvaluation,
    SqlModel,
    SqlVector,
)
from crx.registry.timeutil import as_utc


@dataclass(frozen=True)
class ModelFact:
    id: int
    name: str
    n_layers: int
    d_model: int
    role: str | None
    path: str


class MapFact(NamedTuple):
    """A tuple, not a frozen dataclass: a plan builds hundreds of them (every map into each model
    its search reaches), and a tuple is several times cheaper to make."""

    id: int
    oid: str
    source_model_id: int
    target_model_id: int
    source_layer: int
    target_layer: int
    solver: str
    r2: float | None


@dataclass(frozen=True)
class VectorFact:
    id: int
    model_id: int
    origin: str
    d_model: int
    layers: tuple[int, ...] | None  # None: every layer has a direction
    source_vector_id: int | None
    map_ids: tuple[int, ...]
    maps_by_layer: dict[str, int]  # a mapped vector's target layer → map id (settings["maps"])

    def has_layer(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers


@dataclass(frozen=True)
class EvaluationFact:
    id: int
    vector_id: int | None
    task: str
    dataset_oid: str | None
    layer: int | None
    alpha: float | None
    normalize: bool
    metric: str
    value: float
    n: int | None


@dataclass(frozen=True)
class ConceptFact:
    version_id: int
    name: str
    version: int

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class AliasFact:
    """An alias of one concept on the target: the concept version and vector it names now."""

    name: str
    concept: str
    version_id: int
    version: int
    vector_id: int
    revision: int
    action: str
    actor: str
    label: str | None
    updated_at: datetime

    @property
    def concept_ref(self) -> str:
        return f"{self.concept}@{self.version}"


class Deprecations:
    """Deprecated objects, read once per plan: their ids by kind. A reason is read only when
    the plan cites it (a plan cites a few; a catalogue may hold thousands)."""

    def __init__(
        self,
        ids: dict[str, frozenset[int]] | None = None,
        read_reason: Callable[[str, list[int]], dict[int, str]] | None = None,
    ) -> None:
        self._ids = ids or {}
        self._read_reason = read_reason
        self._reasons: dict[tuple[str, int], str] = {}
        self._asked: dict[str, int] = {}

    def reason(self, kind: str, object_id: int | None) -> str | None:
        """Why ``object_id`` (of ``kind``) is deprecated, or None when it is not."""
        if object_id is None or object_id not in self._ids.get(kind, ()):
            return None
        key = (kind, object_id)
        if key not in self._reasons and self._read_reason is not None:
            self._asked[kind] = self._asked.get(kind, 0) + 1
            # One at a time while a plan cites few; a plan citing many (every concept of a
            # large catalogue) reads all of that kind's reasons at once instead.
            wanted = [object_id] if self._asked[kind] <= 8 else sorted(self._ids[kind])
            for found_id, found in self._read_reason(kind, wanted).items():
                self._reasons[(kind, found_id)] = found
        return self._reasons.get(key) or "no reason recorded"

    def ids(self, kind: str) -> frozenset[int]:
        return self._ids.get(kind, frozenset())

    def __bool__(self) -> bool:
        return any(self._ids.values())


# Statements built once: constructing one costs more than running these on their indexes, and
# SQLAlchemy reuses a cached statement's result set-up only for the very object it compiled.
_ALIASES_ON = (
    select(
        SqlAlias.name,
        SqlConcept.name,
        SqlAlias.concept_version_id,
        SqlConceptVersion.version,
        SqlAlias.vector_id,
        SqlAlias.revision,
        SqlAlias.action,
        SqlAlias.actor,
        SqlAlias.label,
        SqlAlias.updated_at,
    )
    .join(SqlConcept, SqlAlias.concept_id == SqlConcept.id)
    .join(SqlConceptVersion, SqlAlias.concept_version_id == SqlConceptVersion.id)
    .where(SqlAlias.model_id == bindparam("model_id"), SqlAlias.name == bindparam("name"))
)
_ALIASES_OF = _ALIASES_ON.where(SqlConcept.name.in_(bindparam("concepts", expanding=True)))


def _deprecated_ids(dialect: str) -> Any:
    """Each kind's deprecated ids as one comma-separated text: a few rows to read, not one per
    deprecated object (thousands, in a large catalogue)."""
    ids: Any = SqlDeprecation.object_id
    if dialect == "postgresql":
        joined = func.string_agg(cast(ids, String), ",")
    else:
        joined = func.group_concat(ids, ",")
    return select(SqlDeprecation.object_kind, joined).group_by(SqlDeprecation.object_kind)


_DEPRECATED_IDS = {name: _deprecated_ids(name) for name in ("postgresql", "sqlite")}
_DEPRECATION_REASONS = select(SqlDeprecation.object_id, SqlDeprecation.reason).where(
    SqlDeprecation.object_kind == bindparam("kind"),
    SqlDeprecation.object_id.in_(bindparam("ids", expanding=True)),
)
_MODEL_COLUMNS = (
    SqlModel.id,
    SqlModel.name,
    SqlModel.n_layers,
    SqlModel.d_model,
    SqlModel.role,
    SqlModel.path,
)
_MODEL_NAMED = select(*_MODEL_COLUMNS).where(SqlModel.name == bindparam("name"))
_MODELS = select(*_MODEL_COLUMNS).where(SqlModel.id.in_(bindparam("ids", expanding=True)))
_MAP_COLUMNS = (
    SqlAffineMap.id,
    SqlAffineMap.oid,
    SqlAffineMap.source_model_id,
    SqlAffineMap.target_model_id,
    SqlAffineMap.source_layer,
    SqlAffineMap.target_layer,
    SqlAffineMap.solver,
    SqlAffineMap.r2,
)
_MAPS_INTO = select(*_MAP_COLUMNS).where(SqlAffineMap.target_model_id == bindparam("model_id"))
_MAPS = select(*_MAP_COLUMNS).where(SqlAffineMap.id.in_(bindparam("ids", expanding=True)))
_CONCEPT_VERSIONS = (
    select(SqlConceptVersion.id, SqlConcept.name, SqlConceptVersion.version)
    .join(SqlConcept, SqlConceptVersion.concept_id == SqlConcept.id)
    .where(SqlConcept.name.in_(bindparam("names", expanding=True)))
)
_VECTORS_OF = (
    select(
        SqlVector.concept_version_id,
        SqlVector.id,
        SqlVector.model_id,
        SqlVector.origin,
        SqlVector.d_model,
        SqlVector.layers,
        SqlVector.source_vector_id,
        SqlVector.map_ids,
    )
    .where(SqlVector.concept_version_id.in_(bindparam("ids", expanding=True)))
    .order_by(SqlVector.id)
)
_VECTOR_SETTINGS = select(SqlVector.id, SqlVector.settings).where(
    SqlVector.id.in_(bindparam("ids", expanding=True))
)
_EVALUATIONS = select(
    SqlEvaluation.id,
    SqlEvaluation.vector_id,
    SqlEvaluation.task,
    SqlEvaluation.dataset_oid,
    SqlEvaluation.layers,
    SqlEvaluation.alpha,
    SqlEvaluation.settings,
    SqlEvaluation.metric,
    SqlEvaluation.value,
    SqlEvaluation.n,
).order_by(SqlEvaluation.id)
_ON_MODEL = SqlEvaluation.model_id == bindparam("model_id")
_OF_VECTORS = SqlEvaluation.vector_id.in_(bindparam("ids", expanding=True))
# (with the bare model's rows, with vectors asked) → the statement
_EVALUATIONS_OF = {
    (True, False): _EVALUATIONS.where(_ON_MODEL, SqlEvaluation.vector_id.is_(None)),
    (True, True): _EVALUATIONS.where(_ON_MODEL, SqlEvaluation.vector_id.is_(None) | _OF_VECTORS),
    (False, True): _EVALUATIONS.where(_ON_MODEL, _OF_VECTORS),
}


class CatalogView:
    """Cached reads over one open session (the planner's only access to the database)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        # Column queries run as Core on the session's connection (same transaction): the ORM
        # result pipeline costs more than the query for thousands of plain rows.
        self._execute = session.connection().execute
        self._models: dict[int, ModelFact] = {}
        self._maps_into: dict[int, list[MapFact]] = {}
        self._deprecations: Deprecations | None = None

    def last_audit_event(self) -> int:
        return int(self.session.scalar(select(func.max(SqlAuditEvent.id))) or 0)

    # -- governance -----------------------------------------------------------------------

    def deprecations(self) -> Deprecations:
        """Every deprecated object (few: deprecation is rare), read on first use only."""
        if self._deprecations is None:
            dialect = self.session.get_bind().dialect.name
            query = _DEPRECATED_IDS.get(dialect)
            if query is None:  # another dialect: built on the spot
                query = _deprecated_ids(dialect)
            found = {
                kind: frozenset(int(i) for i in joined.split(","))
                for kind, joined in self._execute(query).all()
                if joined
            }
            self._deprecations = Deprecations(found, self._deprecation_reasons)
        return self._deprecations

    def _deprecation_reasons(self, kind: str, ids: list[int]) -> dict[int, str]:
        found: dict[int, str] = {}
        for start in range(0, len(ids), 5_000):  # under the databases' parameter limits
            params = {"kind": kind, "ids": ids[start : start + 5_000]}
            found.update((i, reason) for i, reason in self._execute(_DEPRECATION_REASONS, params))
        return found

    def aliases_on(
        self, model_id: int, name: str, concepts: Iterable[str] | None = None
    ) -> dict[str, AliasFact]:
        """Concept name → its alias ``name`` on ``model_id`` (of ``concepts`` only, if given);
        one query on ``ix_aliases_model``."""
        params: dict[str, Any] = {"model_id": model_id, "name": name}
        query = _ALIASES_ON
        if concepts is not None:
            params["concepts"] = sorted(set(concepts))
            if not params["concepts"]:
                return {}
            query = _ALIASES_OF
        found = {}
        for row in self._execute(query, params).all():
            fact = AliasFact(*row[:9], updated_at=as_utc(row[9]))
            found[fact.concept] = fact
        return found

    # -- models ---------------------------------------------------------------------------

    def model_named(self, name: str) -> ModelFact | None:
        row = self._execute(_MODEL_NAMED, {"name": name}).first()
        if row is None:
            return None
        fact = ModelFact(*row)
        self._models[fact.id] = fact
        return fact

    def models(self, ids: Iterable[int]) -> dict[int, ModelFact]:
        missing = {i for i in ids if i not in self._models}
        if missing:
            rows = self._execute(_MODELS, {"ids": sorted(missing)}).all()
            for row in rows:
                self._models[row[0]] = ModelFact(*row)
        return {i: self._models[i] for i in ids if i in self._models}

    def model(self, model_id: int) -> ModelFact:
        return self.models([model_id])[model_id]

    def aligned_models(self) -> list[ModelFact]:
        rows = self._execute(
            select(*_MODEL_COLUMNS).where(SqlModel.role == "aligned").order_by(SqlModel.id)
        ).all()
        return [ModelFact(*row) for row in rows]

    # -- maps -----------------------------------------------------------------------------

    def maps_into(self, model_id: int) -> list[MapFact]:
        if model_id not in self._maps_into:
            rows = self._execute(_MAPS_INTO, {"model_id": model_id}).all()
            self._maps_into[model_id] = [MapFact._make(row) for row in rows]
        return self._maps_into[model_id]

    def maps(self, ids: Iterable[int]) -> dict[int, MapFact]:
        wanted = set(ids)
        if not wanted:
            return {}
        rows = self._execute(_MAPS, {"ids": sorted(wanted)}).all()
        return {row[0]: MapFact(*row) for row in rows}

    # -- concepts, vectors, evaluations ---------------------------------------------------

    def concept_versions(
        self, refs: list[tuple[str, int | None]], skip: Set[int] | None = None
    ) -> dict[str, ConceptFact]:
        """``(name, version or None for the latest)`` → fact, keyed by the name as asked.

        The latest is the newest version whose id is not in ``skip`` (deprecated ones), or the
        newest of all when every version is skipped."""
        names = {name for name, _ in refs}
        rows = self._execute(_CONCEPT_VERSIONS, {"names": sorted(names)}).all()
        by_name: dict[str, dict[int, ConceptFact]] = defaultdict(dict)
        for version_id, concept_name, number in rows:
            by_name[concept_name][number] = ConceptFact(version_id, concept_name, number)
        found = {}
        for name, asked in refs:
            versions = by_name.get(name, {})
            if not versions:
                continue
            if asked is None:
                kept = [v for v, fact in versions.items() if fact.version_id not in (skip or ())]
                found[name] = versions[max(kept or versions)]
            elif asked in versions:
                found[f"{name}@{asked}"] = versions[asked]
        return found

    def marked_versions(self) -> list[ConceptFact]:
        """Concept versions marked for use (``tags["use"]``), by concept name."""
        rows = self._execute(
            select(
                SqlConceptVersion.id,
                SqlConcept.name,
                SqlConceptVersion.version,
                SqlConceptVersion.tags,
            )
            .join(SqlConcept, SqlConceptVersion.concept_id == SqlConcept.id)
            .order_by(SqlConcept.name)
        ).all()
        return [ConceptFact(vid, name, v) for vid, name, v, tags in rows if (tags or {}).get("use")]

    def latest_versions_with_vectors(self, skip: Iterable[int] = ()) -> list[ConceptFact]:
        """The newest version of every concept, where that version has at least one vector;
        versions whose id is in ``skip`` (deprecated ones) do not count, and neither do the
        concept bank's (`crx bank extract`): they anchor maps, nobody asked to steer with them,
        and after `crx demo` they are 184 of the 190."""
        from crx.registry.workflows.bank import PAIR_CONSTRUCTION as BANK

        newest_query = select(
            SqlConceptVersion.concept_id, func.max(SqlConceptVersion.version).label("v")
        )
        skipped = sorted(set(skip))
        if skipped:
            newest_query = newest_query.where(SqlConceptVersion.id.not_in(skipped))
        newest = newest_query.group_by(SqlConceptVersion.concept_id).subquery()
        has_vector = select(SqlVector.id).where(
            SqlVector.concept_version_id == SqlConceptVersion.id
        )
        rows = self._execute(
            select(SqlConceptVersion.id, SqlConcept.name, SqlConceptVersion.version)
            .join(SqlConcept, SqlConceptVersion.concept_id == SqlConcept.id)
            .join(
                newest,
                (newest.c.concept_id == SqlConceptVersion.concept_id)
                & (newest.c.v == SqlConceptVersion.version),
            )
            .where(has_vector.exists(), SqlConceptVersion.pair_construction != BANK)
            .order_by(SqlConcept.name)
        ).all()
        return [ConceptFact(*row) for row in rows]

    def vectors_of(self, version_ids: Iterable[int]) -> dict[int, list[VectorFact]]:
        wanted = set(version_ids)
        found: dict[int, list[VectorFact]] = defaultdict(list)
        if not wanted:
            return found
        rows = self._execute(_VECTORS_OF, {"ids": sorted(wanted)}).all()
        # Only a mapped vector's settings matter here (its map per layer): read just those.
        mapped = [row[1] for row in rows if row[3] == "mapped"]
        settings: dict[int, Any] = {}
        for start in range(0, len(mapped), 5_000):
            settings.update(
                self._execute(_VECTOR_SETTINGS, {"ids": mapped[start : start + 5_000]}).all()
            )
        for cv, vid, model_id, origin, d, layers, source, map_ids in rows:
            maps = (settings.get(vid) or {}).get("maps") or {}
            found[cv].append(
                VectorFact(
                    id=vid,
                    model_id=model_id,
                    origin=origin,
                    d_model=d,
                    layers=tuple(layers) if layers is not None else None,
                    source_vector_id=source,
                    map_ids=tuple(map_ids or ()),
                    maps_by_layer={str(k): int(v) for k, v in maps.items()},
                )
            )
        return found

    def evaluations(self, model_id: int, vector_ids: Iterable[int]) -> list[EvaluationFact]:
        """Evaluations on ``model_id`` of these vectors, and of the bare model."""
        wanted = sorted(set(vector_ids))
        found: list[EvaluationFact] = []
        # Chunks keep the IN list under database parameter limits; the bare model's rows come
        # with the first chunk only.
        for start in range(0, max(len(wanted), 1), 5_000):
            found += self._evaluations(model_id, wanted[start : start + 5_000], start == 0)
        return found

    def _evaluations(
        self, model_id: int, wanted: list[int], with_base: bool
    ) -> list[EvaluationFact]:
        params: dict[str, Any] = {"model_id": model_id}
        if wanted or not with_base:
            params["ids"] = wanted
        rows = self._execute(_EVALUATIONS_OF[(with_base, "ids" in params)], params).all()
        return [
            EvaluationFact(
                id=eid,
                vector_id=vid,
                task=task,
                dataset_oid=dataset,
                layer=layers[0] if layers else None,
                alpha=alpha,
                normalize=bool((settings or {}).get("normalize")),
                metric=metric,
                value=value,
                n=n,
            )
            for eid, vid, task, dataset, layers, alpha, settings, metric, value, n in rows
        ]
