"""`Registry`: the Python API of crx, a facade over the catalogue (SQL) and the blob store.

Every write follows one order: blobs first (content-addressed, idempotent), then one database
transaction for all rows plus their audit event. A crash between the two leaves at worst an
unreferenced blob, which ``gc`` collects; a row never points at a blob that is not stored.

    from crx.registry import Registry
    reg = Registry()                      # $CRX_HOME/registry.db + $CRX_HOME/store
    reg.register_concept("honesty", "pairs.json")
    reg.list_concepts().items
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from crx.registry import config, names, pairs
from crx.registry.catalog import concepts, evaluations, maps, models, vectors
from crx.registry.catalog.paging import DEFAULT_LIMIT, page
from crx.registry.db import migrate
from crx.registry.db.engine import make_engine, transaction
from crx.registry.db.tables import SqlAuditEvent
from crx.registry.errors import CrxError, DatabaseUnavailable, InvalidInput, TensorShapeError
from crx.registry.maintenance import DEFAULT_GC_GRACE_SECONDS, old_enough, references, unreferenced
from crx.registry.maintenance import verify as verify_blobs
from crx.registry.modelinfo import read_model_facts
from crx.registry.store import ObjectStore, sha256_hex, tensors
from crx.registry.timeutil import as_utc
from crx.registry.vector_io import (
    decode_vector,
    encode_vector,
    export_gguf,
    export_safetensors,
    layer_norms,
    vector_from_tensors,
)
from crx.schemas.plan import PlanExecution, TransplantPlan
from crx.schemas.records import (
    AuditEventRecord,
    ConceptRecord,
    ConceptVersionRecord,
    EvaluationRecord,
    GcReport,
    InitReport,
    MapRecord,
    ModelRecord,
    Page,
    Registered,
    VectorRecord,
    VerifyReport,
)

T = TypeVar("T")

DEFAULT_TEMPLATE = "{text}"
DEFAULT_HOOK_POINT = "resid_post"
DEFAULT_EXTRACTION: dict[str, Any] = {"method": "mean", "token": "last", "hook_point": "resid_post"}
_WRITE_ATTEMPTS = 20


class Registry:
    """A crx registry: a SQL catalogue (SQLite or PostgreSQL) plus a content-addressed store.

    ``database_url`` / ``store_url`` default to ``CRX_DATABASE_URL`` / ``CRX_STORE_URL``, then
    to the embedded ``$CRX_HOME/registry.db`` and ``$CRX_HOME/store``. Nothing is opened until
    first use. The embedded default initialises itself on first use; any other database needs
    ``init()`` (``crx init``) once.
    """

    def __init__(self, database_url: str | None = None, store_url: str | None = None) -> None:
        self.location = config.resolve(database_url, store_url)
        self._engine: Engine | None = None
        self._store: ObjectStore | None = None
        self._schema_checked = False

    def __repr__(self) -> str:
        return (
            f"Registry(database={config.redact(self.location.database_url)!r}, "
            f"store={config.redact(self.location.store_url)!r})"
        )

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # -- plumbing -----------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            if self.location.database_is_default:
                config.crx_home().mkdir(parents=True, exist_ok=True)
            self._engine = make_engine(self.location.database_url)
        return self._engine

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            self._store = ObjectStore(self.location.store_url)
        return self._store

    def _db_url(self) -> str:
        return config.redact(self.location.database_url)

    @contextmanager
    def _connected(self) -> Iterator[None]:
        """Turn a lost or unreachable database into `DatabaseUnavailable`."""
        try:
            yield
        except (OperationalError, InterfaceError) as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise DatabaseUnavailable(self._db_url(), reason) from None

    def _ensure_schema(self) -> None:
        if self._schema_checked:
            return
        with self._connected():
            if self.location.database_is_default and not migrate.has_any_table(self.engine):
                self.init()
            migrate.check_schema(self.engine)
        self._schema_checked = True

    @contextmanager
    def _read(self) -> Iterator[Session]:
        self._ensure_schema()
        with self._connected(), transaction(self.engine, write=False) as session:
            yield session

    def _write(self, operation: Callable[[Session], T]) -> T:
        """Run ``operation`` in one write transaction, retrying on a uniqueness race."""
        self._ensure_schema()
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                with self._connected(), transaction(self.engine, write=True) as session:
                    return operation(session)
            except IntegrityError:
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise
                time.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    # -- lifecycle ----------------------------------------------------------------------

    def init(self) -> InitReport:
        """Create or upgrade the database to the newest schema and create the store."""
        with self._connected():
            before = migrate.current_revision(self.engine)
            if before != migrate.HEAD_REVISION:
                migrate.upgrade(self.engine)
        self.store.create()
        self._schema_checked = True
        return InitReport(
            database=self._db_url(),
            store=config.redact(self.location.store_url),
            revision_before=before,
            revision=migrate.HEAD_REVISION,
        )

    def upgrade(self) -> InitReport:
        """Upgrade the database schema to head (the store is left as it is)."""
        with self._connected():
            before = migrate.current_revision(self.engine)
            migrate.upgrade(self.engine)
        self._schema_checked = True
        return InitReport(
            database=self._db_url(),
            store=config.redact(self.location.store_url),
            revision_before=before,
            revision=migrate.HEAD_REVISION,
        )

    def current_revision(self) -> str | None:
        with self._connected():
            return migrate.current_revision(self.engine)

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
        self._ensure_schema()
        facts = read_model_facts(path, gguf_file, revision)
        return self._write(
            lambda s: models.register(
                s, name, facts, revision=revision, family=family, role=role, tags=dict(tags or {})
            )
        )

    def get_model(self, ref: str | int) -> ModelRecord:
        with self._read() as session:
            return models.to_record(models.find(session, ref))

    def list_models(
        self, *, limit: int | None = DEFAULT_LIMIT, after: int | None = None
    ) -> Page[ModelRecord]:
        with self._read() as session:
            return models.listing(session, limit=limit, after=after)

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
    ) -> Registered[ConceptVersionRecord]:
        """Register a version of a concept from a pairs file (or pairs); identical = no-op."""
        names.check_name("concept", name)
        template = DEFAULT_TEMPLATE if template is None else template
        if "{text}" not in template:
            raise InvalidInput("the template must contain {text}, where each scenario goes")
        if isinstance(pairs_source, list):
            parsed = pairs_source
            if not parsed:
                raise InvalidInput("no contrast pairs given")
        else:
            parsed = pairs.parse_pairs_file(pairs_source)
        self._ensure_schema()
        pairs_oid = self.store.put(pairs.canonical_bytes(parsed))
        recipe = {**DEFAULT_EXTRACTION, **(extraction or {})}
        return self._write(
            lambda s: concepts.register_version(
                s,
                name,
                description=description,
                pairs_oid=pairs_oid,
                n_pairs=len(parsed),
                template=template,
                pair_construction=pair_construction,
                extraction=recipe,
            )
        )

    def mark_for_use(self, ref: str, use: bool = True) -> Registered[ConceptVersionRecord]:
        """Mark ``NAME[@V]`` for use (``crx plan``'s default concepts); one version per concept."""
        name, version = names.parse_versioned(ref)
        return self._write(lambda s: concepts.mark_for_use(s, name, version, use))

    def get_concept(self, ref: str) -> ConceptVersionRecord:
        """``NAME`` (latest version) or ``NAME@V``."""
        name, version = names.parse_versioned(ref)
        with self._read() as session:
            return concepts.version_record(*concepts.find_version(session, name, version))

    def concept_versions(self, name: str) -> list[ConceptVersionRecord]:
        with self._read() as session:
            return concepts.versions_of(session, name)

    def list_concepts(
        self, *, limit: int | None = DEFAULT_LIMIT, after: int | None = None
    ) -> Page[ConceptRecord]:
        with self._read() as session:
            return concepts.listing(session, limit=limit, after=after)

    def load_pairs(self, ref: str) -> list[pairs.ContrastPair]:
        """The contrast pairs a concept version was registered with, exactly."""
        record = self.get_concept(ref)
        return pairs.from_canonical_bytes(self.store.get(record.pairs_oid))

    # -- vectors ------------------------------------------------------------------------

    def register_vector(
        self,
        concept_ref: str,
        model: str,
        file: str | Path,
        *,
        hook_point: str = DEFAULT_HOOK_POINT,
        token_position: str = "last",
        estimator: str = "imported",
        replace: bool = False,
    ) -> Registered[VectorRecord]:
        """Import a vector computed elsewhere from a ``.safetensors`` file."""
        concept = self.get_concept(concept_ref)
        target = self.get_model(model)
        named = tensors.read_file(file)
        array, layers, source_dtype = vector_from_tensors(
            named, target.n_layers, target.d_model, str(file)
        )
        return self.save_vector(
            concept.ref,
            target.name,
            array,
            layers=layers,
            origin="imported",
            hook_point=hook_point,
            token_position=token_position,
            estimator=estimator,
            settings={"file": Path(file).name, "source_dtype": source_dtype},
            replace=replace,
        )

    def save_vector(
        self,
        concept_ref: str,
        model: str,
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
        """Store a ``[n_layers, d_model]`` array as a vector of ``concept_ref`` on ``model``."""
        concept = self.get_concept(concept_ref)
        target = self.get_model(model)
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
        with self._read() as session:
            vectors.check_conflict(
                session, identity=identity, oid=sha256_hex(data), replace=replace
            )
        oid = self.store.put(data)
        return self._write(
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
            )
        )

    def get_vector(self, vector_id: int) -> VectorRecord:
        with self._read() as session:
            return vectors.get(session, vector_id)

    def load_vector(self, vector_id: int) -> np.ndarray:
        """The ``[n_layers, d_model]`` float32 array of a vector (verified against its oid)."""
        return decode_vector(self.store.get(self.get_vector(vector_id).oid))

    def list_vectors(
        self,
        *,
        concept: str | None = None,
        model: str | None = None,
        limit: int | None = DEFAULT_LIMIT,
        after: int | None = None,
    ) -> Page[VectorRecord]:
        with self._read() as session:
            return vectors.listing(session, limit=limit, after=after, concept=concept, model=model)

    def export_vector(self, vector_id: int, fmt: str, out: str | Path) -> Path:
        """Write a vector as ``safetensors`` or a llama.cpp ``gguf`` control vector."""
        out = Path(out)
        record = self.get_vector(vector_id)
        array = self.load_vector(vector_id)
        if not out.parent.is_dir():
            raise InvalidInput(f"folder {out.parent} does not exist")
        try:
            if fmt == "safetensors":
                export_safetensors(record, array, out)
            elif fmt == "gguf":
                hint = self.get_model(record.model_id).model_type or record.model
                export_gguf(record, array, hint, out)
            else:
                raise InvalidInput(f"unknown export format {fmt!r} (safetensors or gguf)")
        except OSError as exc:
            raise InvalidInput(f"cannot write {out}: {exc.strerror or exc}") from None
        return out

    # -- maps ---------------------------------------------------------------------------

    def save_map(
        self,
        source: str,
        target: str,
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
    ) -> Registered[MapRecord]:
        """Store a fitted map ``target ≈ W · source + b`` for one layer pair."""
        src, tgt = self.get_model(source), self.get_model(target)
        for model, layer in ((src, source_layer), (tgt, target_layer)):
            if not 0 <= layer < model.n_layers:
                raise InvalidInput(
                    f"layer {layer} is out of range for {model.name} ({model.n_layers} layers)"
                )
        if tuple(weight.shape) != (tgt.d_model, src.d_model):
            raise TensorShapeError("the map's W", list(weight.shape), [tgt.d_model, src.d_model])
        named = {"W": np.ascontiguousarray(weight, dtype=np.float32)}
        if bias is not None:
            if tuple(bias.shape) != (tgt.d_model,):
                raise TensorShapeError("the map's b", list(bias.shape), [tgt.d_model])
            named["b"] = np.ascontiguousarray(bias, dtype=np.float32)
        oid = self.store.put(tensors.encode(named))
        return self._write(
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
            )
        )

    def get_map(self, map_id: int) -> MapRecord:
        with self._read() as session:
            return maps.get(session, map_id)

    def load_map(self, map_id: int) -> tuple[np.ndarray, np.ndarray | None]:
        named = tensors.decode(self.store.get(self.get_map(map_id).oid))
        return named["W"], named.get("b")

    def list_maps(
        self,
        *,
        source: str | None = None,
        target: str | None = None,
        limit: int | None = DEFAULT_LIMIT,
        after: int | None = None,
    ) -> Page[MapRecord]:
        with self._read() as session:
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

        return self._write(write)

    def list_evaluations(
        self,
        *,
        model: str | None = None,
        vector_id: int | None = None,
        task: str | None = None,
        limit: int | None = DEFAULT_LIMIT,
        after: int | None = None,
    ) -> Page[EvaluationRecord]:
        with self._read() as session:
            return evaluations.listing(
                session, limit=limit, after=after, model=model, vector_id=vector_id, task=task
            )

    # -- the ConTrans engine (torch; imported on first use) -------------------------------

    def load_model(self, name: str, *, device: str | None = None) -> Any:
        """Load a registered model for hooks (`LoadedModel`), cached for this registry object."""
        from crx.registry import contrans

        return contrans.load(self, name, device=device)

    def extract(self, concept_ref: str, model: str, **options: Any) -> Registered[VectorRecord]:
        """Extract (or reuse) a concept vector on a model; see `crx.registry.contrans.extract`."""
        from crx.registry import contrans

        return contrans.extract(self, concept_ref, model, **options)

    def fit(self, source: str, target: str, **options: Any) -> list[MapRecord]:
        """Fit and record affine maps; see `crx.registry.contrans.fit`."""
        from crx.registry import contrans

        return contrans.fit(self, source, target, **options)

    def transplant(
        self, concept_ref: str, source: str, target: str, **options: Any
    ) -> Registered[VectorRecord]:
        """Map a source vector into the target; see `crx.registry.contrans.transplant`."""
        from crx.registry import contrans

        return contrans.transplant(self, concept_ref, source, target, **options)

    @contextmanager
    def steer(
        self,
        model: Any,
        vector: int | np.ndarray,
        *,
        layer: int | None = None,
        alpha: float = 1.0,
        scope: str = "all",
        normalize: bool = False,
    ) -> Iterator[None]:
        """Steer a loaded model (from `load_model`) with a vector id or array while open.

        Forward hooks add ``alpha * v[layer]`` to that block's output; they are removed on exit,
        exceptions included, and the model is never mutated. ``normalize`` makes alpha relative
        to the layer's mean residual norm. ``layer`` defaults to relative depth 0.75.
        """
        from crx.registry import contrans
        from crx.registry.engine.steer import steer

        array = self.load_vector(vector) if isinstance(vector, int) else vector
        chosen = contrans.default_layer(model.n_layers) if layer is None else layer
        norm = contrans.reference_norm(self, model.name, chosen) if normalize else None
        with steer(
            model.layers,
            array,
            layer=chosen,
            alpha=alpha,
            scope=scope,
            normalize=normalize,
            reference_norm=norm,
            d_model=model.d_model,
        ):
            yield

    # -- the resolver ---------------------------------------------------------------------

    def plan(
        self,
        target: str,
        concepts: Sequence[str] = (),
        *,
        max_hops: int = 3,
        min_r2: float = 0.2,
        measure: bool = False,
    ) -> TransplantPlan:
        """The transplant plan for ``target``; see `crx.registry.resolve.planner`. Reads only."""
        from crx.registry.resolve.planner import make_plan

        return make_plan(self, target, concepts, max_hops=max_hops, min_r2=min_r2, measure=measure)

    def execute_plan(self, plan: str | Path | TransplantPlan) -> list[PlanExecution]:
        """Register the target vectors of a plan's routes (``crx transplant --plan``)."""
        from crx.registry.resolve.execute import execute_plan

        return execute_plan(self, plan)

    @contextmanager
    def load_plan(
        self, model: Any, plan: str | Path | TransplantPlan, *, scope: str = "all"
    ) -> Iterator[None]:
        """Steer a loaded target model with every concept of a plan at its layer and α."""
        from crx.registry.resolve.execute import steer_plan

        with steer_plan(self, model, plan, scope=scope):
            yield

    # -- audit --------------------------------------------------------------------------

    def audit_events(
        self, *, limit: int | None = DEFAULT_LIMIT, after: int | None = None
    ) -> Page[AuditEventRecord]:
        def convert(rows: Any) -> list[AuditEventRecord]:
            return [
                AuditEventRecord(
                    id=e.id,
                    at=as_utc(e.at),
                    actor=e.actor,
                    action=e.action,
                    object_kind=e.object_kind,
                    object_id=e.object_id,
                    object_ref=e.object_ref,
                    old=e.old,
                    new=e.new,
                )
                for (e,) in rows
            ]

        with self._read() as session:
            return page(
                session, select(SqlAuditEvent), SqlAuditEvent.id, convert, limit=limit, after=after
            )

    # -- store maintenance --------------------------------------------------------------

    def verify_store(self) -> VerifyReport:
        """Re-hash every referenced blob; report missing or corrupt ones with their rows."""
        with self._read() as session:
            required, optional = references(session)
        self.store.check_reachable()
        problems = verify_blobs(self.store, required)
        extra = unreferenced(self.store, set(required) | optional)
        return VerifyReport(
            store=config.redact(self.location.store_url),
            checked=len(required),
            ok=len(required) - len(problems),
            problems=problems,
            unreferenced=len(extra),
        )

    def gc_store(
        self, *, dry_run: bool = True, grace_seconds: float = DEFAULT_GC_GRACE_SECONDS
    ) -> GcReport:
        """List (``dry_run``) or delete unreferenced blobs older than ``grace_seconds``."""
        with self._read() as session:
            required, optional = references(session)
        self.store.check_reachable()
        candidates = [
            oid
            for oid in unreferenced(self.store, set(required) | optional)
            if old_enough(self.store, oid, grace_seconds)
        ]
        # A temporary file is never referenced; past the grace its writer is gone.
        temporaries = self.store.stale_temporaries(grace_seconds)
        if not dry_run:
            for oid in candidates:
                self.store.remove(oid)
            for path in temporaries:
                path.unlink(missing_ok=True)
        return GcReport(
            store=config.redact(self.location.store_url),
            unreferenced=candidates,
            deleted=not dry_run,
            stale_temporary_files=len(temporaries),
        )


__all__ = ["CrxError", "Registry"]
