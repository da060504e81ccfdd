"""`Catalog`: the registry's rows and blobs, as every layer below the `Registry` facade uses them.

A `Catalog` composes a `Database` (sessions, schema guard, retries) with the content-addressed
`ObjectStore`. Each method is one consistent operation that keeps the registry's promise:
blobs first (content-addressed, idempotent), then one database transaction for the rows plus
their audit event, so a crash between the two leaves at worst an unreferenced blob, never a row
pointing at a blob that is not stored. It never loads a model or computes a tensor: that is
`crx.registry.workflows`, which takes a `Catalog` (never the facade).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from crx.registry import audit, names, pairs
from crx.registry.catalog import concepts, evaluations, maps, models, upkeep, vectors
from crx.registry.catalog.paging import DEFAULT_LIMIT, page
from crx.registry.db import migrate
from crx.registry.db.session import Database
from crx.registry.db.tables import SqlAuditEvent
from crx.registry.errors import InvalidInput, NoVectorOn, TensorShapeError
from crx.registry.models.facts import read_model_facts
from crx.registry.store import ObjectStore, sha256_hex
from crx.registry.store.maintenance import (
    DEFAULT_GC_GRACE_SECONDS,
)
from crx.schemas.records import (
    AuditEventRecord,
    ConceptRecord,
    ConceptVersionRecord,
    EvaluationRecord,
    GcReport,
    InitReport,
    MapAnchorRecord,
    MapRecord,
    ModelRecord,
    Page,
    Registered,
    VectorRecord,
    VerifyReport,
)

if TYPE_CHECKING:
    # numpy, safetensors and the tensor codecs are imported by the methods that move tensors,
    # so the read commands (`crx show`, `crx list`) never load them.
    import numpy as np

T = TypeVar("T")
DEFAULT_TEMPLATE = "{text}"
DEFAULT_HOOK_POINT = "resid_post"
DEFAULT_EXTRACTION: dict[str, Any] = {"method": "mean", "token": "last", "hook_point": "resid_post"}


class Catalog:
    """A database (`Database`) and a blob store (`ObjectStore`) and what needs both.

    Every method is one consistent operation: blobs are put first, then rows and their audit
    event are written in one transaction. It never loads a model or computes a tensor.
    """

    def __init__(self, db: Database, store: ObjectStore) -> None:
        self.db = db
        self.store = store
        # A role its database will refuse stores no blob first (it would be left unreferenced).
        store.before_new_blob = db.check_writable

    def __repr__(self) -> str:
        return f"Catalog(database={self.db.display_url!r}, store={self.store.display_url!r})"

    # -- lifecycle ----------------------------------------------------------------------

    def init(self) -> InitReport:
        """Create or upgrade the database to the newest schema and create the store."""
        before = self.db.upgrade(only_if_behind=True)
        self.store.create()
        return self._schema_report(before)

    def upgrade(self) -> InitReport:
        """Upgrade the database schema to head (the store is left as it is)."""
        return self._schema_report(self.db.upgrade())

    def _schema_report(self, before: str | None) -> InitReport:
        return InitReport(
            database=self.db.display_url,
            store=self.store.display_url,
            revision_before=before,
            revision=migrate.HEAD_REVISION,
        )

    # -- models -------------------------------------------------------------------------

    def register_model(
        self,
        name: str,
        path: str,
        *,
        gguf_file: str | None = None,
        revision: str | None = None,
        family: str | None = None,
        role: str | None = None,
        tags: dict[str, Any] | None = None,
    ) -> Registered[ModelRecord]:
        """Register (or update) a model from its config; weights are never loaded."""
        names.check_name("model", name)
        if role is not None and role not in models.ROLES:
            raise InvalidInput(f"role must be one of {', '.join(models.ROLES)}, not {role!r}")
        # Checked here, the same on every backend (PostgreSQL's columns would refuse them late).
        names.check_text("path", path)
        names.check_text("GGUF file name", gguf_file)
        names.check_text("revision", revision, 200)
        names.check_text("family", family, 100)
        for key, value in (tags or {}).items():
            names.check_text("tag", str(key), 200)
            names.check_text("tag value", str(value))
        self.db.ensure_schema()
        facts = read_model_facts(path, gguf_file, revision)
        names.check_text("architecture", facts.architecture, 200)
        names.check_text("model type", facts.model_type, 100)
        return self.db.write(
            lambda s: models.register(
                s, name, facts, revision=revision, family=family, role=role, tags=dict(tags or {})
            )
        )

    def get_model(self, ref: str | int) -> ModelRecord:
        with self.db.read() as session:
            return models.to_record(models.find(session, ref))

    def list_models(
        self,
        *,
        limit: int | None = DEFAULT_LIMIT,
        after: int | None = None,
        name_contains: str | None = None,
    ) -> Page[ModelRecord]:
        """Keyset-paged by id; ``name_contains``: only names holding it (any case)."""
        with self.db.read() as session:
            return models.listing(session, limit=limit, after=after, name=name_contains)

    # -- concepts -----------------------------------------------------------------------

    def register_concept(
        self,
        name: str,
        pairs_source: str | Path | list[pairs.ContrastPair],
        *,
        description: str | None = None,
        template: str | None = None,
        pair_construction: str = "explicit",
        extraction: dict[str, Any] | None = None,
        use: bool = False,
    ) -> Registered[ConceptVersionRecord]:
        """Register a version of a concept from a pairs file (or pairs); identical = no-op.

        ``use`` also marks the version for use (``crx plan``'s default), in the same transaction.
        """
        names.check_name("concept", name)
        names.check_text("description", description)
        names.check_text("template", template)
        names.check_text("pair construction", pair_construction, 100)
        template = DEFAULT_TEMPLATE if template is None else template
        if "{text}" not in template:
            raise InvalidInput("the template must contain {text}, where each scenario goes")
        if isinstance(pairs_source, list):
            parsed = pairs_source
            if not parsed:
                raise InvalidInput("no contrast pairs given")
        else:
            parsed = pairs.parse_pairs_file(pairs_source)
        self.db.ensure_schema()
        data = pairs.canonical_bytes(parsed)
        pairs_oid = self.store.put(data)
        recipe = {**DEFAULT_EXTRACTION, **(extraction or {})}

        def write(session: Session) -> Registered[ConceptVersionRecord]:
            result = concepts.register_version(
                session,
                name,
                description=description,
                pairs_oid=pairs_oid,
                n_pairs=len(parsed),
                template=template,
                pair_construction=pair_construction,
                extraction=recipe,
            )
            if not use:
                return result
            marked = concepts.mark_for_use(session, name, result.record.version, True)
            return result.model_copy(update={"record": marked.record})

        return self._write_rows({pairs_oid: data}, write)

    def mark_for_use(self, ref: str, use: bool = True) -> Registered[ConceptVersionRecord]:
        """Mark ``NAME[@V]`` for use (``crx plan``'s default concepts); one version per concept."""
        name, version = names.parse_versioned(ref)
        return self.db.write(lambda s: concepts.mark_for_use(s, name, version, use))

    def get_concept(self, ref: str, model: str | None = None) -> ConceptVersionRecord:
        """``NAME`` (latest version), ``NAME@V``, or ``NAME@ALIAS``: the version the alias
        points at on ``model`` (without one, on the only model that has that alias)."""
        parsed = names.parse_reference(ref)
        with self.db.read() as session:
            concept, version, _ = concepts.find_reference(session, *parsed, model)
            return concepts.version_record(concept, version)

    def aliased_vector(self, ref: str, model: str) -> int | None:
        """The vector ``NAME@ALIAS`` points at on ``model``; None when ``ref`` is no alias."""
        name, _, alias = names.parse_reference(ref)
        if alias is None:
            return None
        with self.db.read() as session:
            return concepts.find_alias(session, name, alias, model).vector_id

    def vector_for(self, concept_ref: str, model: str) -> VectorRecord:
        """The vector ``CONCEPT[@V|@ALIAS]`` names on ``model``: its alias's vector, else the
        newest vector of that version there (`NoVectorOn` when there is none)."""
        record = self.get_model(model)
        aliased = self.aliased_vector(concept_ref, record.name)
        if aliased is not None:
            return self.get_vector(aliased)
        concept = self.get_concept(concept_ref, record.name)
        found = self.find_vector(concept, record)
        if found is None:
            raise NoVectorOn(concept.ref, record.name)
        return found

    def concept_versions(self, name: str) -> list[ConceptVersionRecord]:
        with self.db.read() as session:
            return concepts.versions_of(session, name)

    def list_concepts(
        self,
        *,
        limit: int | None = DEFAULT_LIMIT,
        after: int | None = None,
        name_contains: str | None = None,
    ) -> Page[ConceptRecord]:
        """Keyset-paged by id; ``name_contains``: only names holding it (any case)."""
        with self.db.read() as session:
            return concepts.listing(session, limit=limit, after=after, name=name_contains)

    def load_pairs(self, ref: str | ConceptVersionRecord) -> list[pairs.ContrastPair]:
        """The contrast pairs a concept version was registered with, exactly."""
        record = self._concept(ref)
        return pairs.from_canonical_bytes(self.store.get(record.pairs_oid))

    # -- vectors ------------------------------------------------------------------------

    def register_vector(
        self,
        concept_ref: str,
        model: str,
        file: str | Path | Mapping[int, Any],
        *,
        hook_point: str = DEFAULT_HOOK_POINT,
        token_position: str = "last",
        estimator: str = "imported",
        replace: bool = False,
    ) -> Registered[VectorRecord]:
        """Import a vector computed elsewhere: a file of any format `read_vector_file` reads
        (recognised from its first bytes), or a layer → array mapping (``crx.interop``'s
        ``from_repeng`` / ``from_steering_vectors``)."""
        concept = self.get_concept(concept_ref)
        import numpy as np

        from crx.registry.interop import vector_from_tensors
        from crx.registry.vector_files import read_vector_file

        target = self.get_model(model)
        settings: dict[str, Any]
        if isinstance(file, Mapping):
            named = {str(layer): np.asarray(row) for layer, row in file.items()}
            dtypes = sorted({array.dtype.name for array in named.values()})
            settings = {"file": None, "format": "python", "source_dtype": ",".join(dtypes)}
            where = "the layer mapping"
        else:
            found = read_vector_file(file)
            named, where = found.tensors, str(file)
            settings = {
                "file": Path(file).name,
                "format": found.format,
                "source_dtype": found.source_dtype,
            }
            hint = found.metadata.get("controlvector.model_hint")
            if hint is not None:
                settings["model_hint"] = str(hint)
        array, layers = vector_from_tensors(named, target.n_layers, target.d_model, where)
        return self.save_vector(
            concept.ref,
            target.name,
            array,
            layers=layers,
            origin="imported",
            hook_point=hook_point,
            token_position=token_position,
            estimator=estimator,
            settings=settings,
            replace=replace,
        )

    def save_vector(
        self,
        concept_ref: str | ConceptVersionRecord,
        model: str | ModelRecord,
        array: np.ndarray,
        *,
        origin: str,
        hook_point: str = DEFAULT_HOOK_POINT,
        token_position: str = "last",
        estimator: str = "mean_diff",
        layers: list[int] | None = None,
        lineage_key: str = "",
        source_vector_id: int | None = None,
        map_ids: list[int] | None = None,
        settings: dict[str, Any] | None = None,
        replace: bool = False,
    ) -> Registered[VectorRecord]:
        """Store a ``[n_layers, d_model]`` array as a vector of ``concept_ref`` on ``model``.

        A caller that already holds the records passes them, and nothing is looked up again.
        """
        names.check_text("hook point", hook_point, 100)
        names.check_text("token position", token_position, 50)
        names.check_text("estimator", estimator, 100)
        concept = self._concept(concept_ref)
        import numpy as np

        from crx.registry.catalog.vectors import layer_norms
        from crx.registry.store.tensors import encode_vector

        target = self._model(model)
        array = np.ascontiguousarray(array, dtype=np.float32)
        if tuple(array.shape) != (target.n_layers, target.d_model):
            raise TensorShapeError(
                f"a vector for {target.name}", list(array.shape), [target.n_layers, target.d_model]
            )
        data = encode_vector(array)
        identity: dict[str, Any] = {
            "concept_version_id": concept.id,
            "model_id": target.id,
            "hook_point": hook_point,
            "token_position": token_position,
            "estimator": estimator,
            "lineage_key": lineage_key,
        }
        # Refuse a conflicting vector before its blob is stored (`add` checks again, race-free).
        with self.db.read() as session:
            vectors.check_conflict(
                session, identity=identity, oid=sha256_hex(data), replace=replace
            )
        oid = self.store.put(data)
        return self._write_rows(
            {oid: data},
            lambda s: vectors.add(
                s,
                **identity,
                oid=oid,
                n_layers=target.n_layers,
                d_model=target.d_model,
                dtype="float32",
                layers=layers,
                layer_norms=layer_norms(array),
                origin=origin,
                source_vector_id=source_vector_id,
                map_ids=map_ids,
                settings=settings,
                replace=replace,
            ),
        )

    def find_vector(
        self,
        concept_ref: str | ConceptVersionRecord,
        model: str | ModelRecord,
        *,
        origin: str | None = None,
        estimator: str | None = None,
        token: str | None = None,
    ) -> VectorRecord | None:
        """The newest vector of that exact concept version on ``model`` matching the filters."""
        concept = self._concept(concept_ref)
        target = self._model(model)
        with self.db.read() as session:
            return vectors.newest(
                session,
                concept_version_id=concept.id,
                model_id=target.id,
                origin=origin,
                estimator=estimator,
                token_position=token,
            )

    def _write_rows(self, blobs: dict[str, bytes], operation: Callable[[Session], T]) -> T:
        """Write rows that point at ``blobs`` (already put) in one transaction, putting back any
        that a concurrent gc deleted since (the transaction holds the blob lease)."""

        def write(session: Session) -> T:
            for oid, data in blobs.items():
                self.store.ensure_present(oid, data)
            return operation(session)

        return self.db.write(write)

    def _concept(self, ref: str | ConceptVersionRecord) -> ConceptVersionRecord:
        return ref if isinstance(ref, ConceptVersionRecord) else self.get_concept(ref)

    def _model(self, ref: str | ModelRecord) -> ModelRecord:
        return ref if isinstance(ref, ModelRecord) else self.get_model(ref)

    def get_vector(self, vector_id: int) -> VectorRecord:
        with self.db.read() as session:
            return vectors.get(session, vector_id)

    def load_vector(self, vector_id: int) -> np.ndarray:
        """The ``[n_layers, d_model]`` float32 array of a vector (verified against its oid)."""
        from crx.registry.store.tensors import decode_vector

        return decode_vector(self.store.get(self.get_vector(vector_id).oid))

    def list_vectors(
        self,
        *,
        concept: str | None = None,
        model: str | None = None,
        limit: int | None = DEFAULT_LIMIT,
        after: int | None = None,
    ) -> Page[VectorRecord]:
        with self.db.read() as session:
            return vectors.listing(session, limit=limit, after=after, concept=concept, model=model)

    def concepts_on(self, models: Sequence[str]) -> dict[str, dict[str, list[int]]]:
        """Per model name: the concepts that have a vector on it, with those versions."""
        with self.db.read() as session:
            return vectors.concepts_on(session, models)

    # -- maps ---------------------------------------------------------------------------

    def save_map(
        self,
        source: str | ModelRecord,
        target: str | ModelRecord,
        source_layer: int,
        target_layer: int,
        weight: np.ndarray,
        bias: np.ndarray | None,
        *,
        solver: str,
        solver_settings: dict[str, Any] | None = None,
        corpus_oid: str | None = None,
        n_samples: int | None = None,
        r2: float | None = None,
        mse: float | None = None,
        cosine: float | None = None,
        metrics: dict[str, Any] | None = None,
        anchors: Sequence[tuple[int, int, int]] = (),
    ) -> Registered[MapRecord]:
        """Store a fitted map ``target ≈ W · source + b`` for one layer pair; ``anchors``:
        ``(concept version id, source vector id, target vector id)`` of an anchored fit."""
        src, tgt = self._model(source), self._model(target)
        for model, layer in ((src, source_layer), (tgt, target_layer)):
            if not 0 <= layer < model.n_layers:
                raise InvalidInput(
                    f"layer {layer} is out of range for {model.name} ({model.n_layers} layers)"
                )
        if tuple(weight.shape) != (tgt.d_model, src.d_model):
            raise TensorShapeError("the map's W", list(weight.shape), [tgt.d_model, src.d_model])
        if bias is not None and tuple(bias.shape) != (tgt.d_model,):
            raise TensorShapeError("the map's b", list(bias.shape), [tgt.d_model])
        from crx.registry.store.tensors import encode_map

        data = encode_map(weight, bias)
        oid = self.store.put(data)
        return self._write_rows(
            {oid: data},
            lambda s: maps.add(
                s,
                source_model_id=src.id,
                target_model_id=tgt.id,
                source_layer=source_layer,
                target_layer=target_layer,
                oid=oid,
                solver=solver,
                solver_settings=dict(solver_settings or {}),
                corpus_oid=corpus_oid,
                n_samples=n_samples,
                r2=r2,
                mse=mse,
                cosine=cosine,
                metrics=metrics,
                anchors=anchors,
            ),
        )

    def map_anchors(self, map_ids: Sequence[int]) -> dict[int, list[MapAnchorRecord]]:
        """The anchor concept versions of each anchored map among ``map_ids``, in one read."""
        with self.db.read() as session:
            return maps.anchors_of(session, map_ids)

    def get_map(self, map_id: int) -> MapRecord:
        with self.db.read() as session:
            return maps.get(session, map_id)

    def get_maps(self, map_ids: Sequence[int]) -> dict[int, MapRecord]:
        """The maps of ``map_ids``, by id, in one read (for describing mapped vectors)."""
        with self.db.read() as session:
            return maps.by_ids(session, map_ids)

    def load_map(self, map_id: int) -> tuple[np.ndarray, np.ndarray | None]:
        from crx.registry.store.tensors import decode_map

        return decode_map(self.store.get(self.get_map(map_id).oid))

    def list_maps(
        self,
        *,
        source: str | None = None,
        target: str | None = None,
        limit: int | None = DEFAULT_LIMIT,
        after: int | None = None,
    ) -> Page[MapRecord]:
        with self.db.read() as session:
            return maps.listing(session, limit=limit, after=after, source=source, target=target)

    # -- evaluations --------------------------------------------------------------------

    def record_evaluation(
        self,
        model: str,
        task: str,
        metrics: dict[str, float],
        *,
        vector_id: int | None = None,
        dataset_oid: str | None = None,
        layers: list[int] | None = None,
        alpha: float | None = None,
        n: int | None = None,
        settings: dict[str, Any] | None = None,
    ) -> list[EvaluationRecord]:
        """Record the metrics of one evaluation of a vector (or the bare model) on ``model``."""
        names.check_text("task", task, 100)
        for metric in metrics:
            names.check_text("metric", metric, 100)
        if not metrics:
            raise InvalidInput("an evaluation needs at least one metric")
        if vector_id is not None:
            self.get_vector(vector_id)

        def write(session: Session) -> list[EvaluationRecord]:
            return evaluations.add(
                session,
                model=models.find(session, model),
                task=task,
                metrics=metrics,
                vector_id=vector_id,
                dataset_oid=dataset_oid,
                layers=layers,
                alpha=alpha,
                n=n,
                settings=settings,
            )

        return self.db.write(write)

    def list_evaluations(
        self,
        *,
        model: str | None = None,
        vector_id: int | None = None,
        task: str | None = None,
        limit: int | None = DEFAULT_LIMIT,
        after: int | None = None,
    ) -> Page[EvaluationRecord]:
        with self.db.read() as session:
            return evaluations.listing(
                session, limit=limit, after=after, model=model, vector_id=vector_id, task=task
            )

    # -- audit --------------------------------------------------------------------------

    def audit_events(
        self, *, limit: int | None = DEFAULT_LIMIT, after: int | None = None
    ) -> Page[AuditEventRecord]:
        def convert(rows: Any) -> list[AuditEventRecord]:
            return [audit.to_record(e) for (e,) in rows]

        with self.db.read() as session:
            return page(
                session, select(SqlAuditEvent), SqlAuditEvent.id, convert, limit=limit, after=after
            )

    # -- store maintenance (`crx.registry.catalog.upkeep`) -------------------------------

    def verify_store(self) -> VerifyReport:
        """Re-hash every referenced blob (optional ones where present); report missing or
        corrupt ones with their rows."""
        return upkeep.verify(self.db, self.store)

    def gc_store(
        self, *, dry_run: bool = True, grace_seconds: float = DEFAULT_GC_GRACE_SECONDS
    ) -> GcReport:
        """List (``dry_run``) or delete unreferenced blobs older than ``grace_seconds``."""
        return upkeep.gc(self.db, self.store, dry_run=dry_run, grace_seconds=grace_seconds)
