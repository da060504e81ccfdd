"""`Registry`: the Python API of crx, the facade the CLI (and any other skin) calls.

It composes the layers below and is the only object that knows them all: a `Database` and an
`ObjectStore` make a `Catalog` (rows and blobs, `crx.registry.catalog.service`), a `Workspace`
adds the models loaded on it (`crx.registry.workflows`), and the planner (`crx.registry.resolve`)
and spec apply (`crx.registry.declare`) work on those. Nothing below receives or imports the
facade. Every write follows one order: blobs first (content-addressed, idempotent), then one
database transaction for all rows plus their audit event.

    from crx import Registry
    reg = Registry()                      # $CRX_HOME/registry.db + $CRX_HOME/store
    reg.register_concept("honesty", "pairs.json")
    reg.list_concepts().items
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crx.registry import config, pairs
from crx.registry.catalog.paging import DEFAULT_LIMIT
from crx.registry.catalog.service import DEFAULT_HOOK_POINT, Catalog
from crx.registry.db.session import Database
from crx.registry.store import ObjectStore
from crx.registry.store.maintenance import DEFAULT_GC_GRACE_SECONDS
from crx.registry.workflows.workspace import Workspace
from crx.schemas.declare import ApplyReport, Change
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
    SchemaStatus,
    VectorRecord,
    VerifyReport,
)

if TYPE_CHECKING:
    from crx.registry.engine.loading import LoadedModel
    from crx.registry.workflows.demo import DemoResult
    from crx.registry.workflows.pull import PullResult

Stage = Callable[[str], None]
StagedProgress = Callable[[str, int, int], None]
PullProgress = Callable[[str, int | None, int | None], None]


class Registry:
    """A crx registry: a SQL catalogue (SQLite or PostgreSQL) plus a content-addressed store.

    ``database_url`` / ``store_url`` default to ``CRX_DATABASE_URL`` / ``CRX_STORE_URL``, then
    to the embedded ``$CRX_HOME/registry.db`` and ``$CRX_HOME/store``. Nothing is opened until
    first use. The embedded default initialises itself on first use; any other database needs
    ``init()`` (``crx init``) once.
    """

    def __init__(self, database_url: str | None = None, store_url: str | None = None) -> None:
        self.location = config.resolve(database_url, store_url)
        self.store = ObjectStore(self.location.store_url)
        self.db = Database(
            self.location.database_url,
            embedded=self.location.database_is_default,
            on_create=self.store.create,
        )
        self.catalog = Catalog(self.db, self.store)
        self.workspace = Workspace(self.catalog)

    def __repr__(self) -> str:
        return f"Registry(database={self.db.display_url!r}, store={self.store.display_url!r})"

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def current_revision(self) -> str | None:
        return self.db.current_revision()

    def schema_status(self) -> SchemaStatus:
        """The database's schema revision and the one this crx expects (``crx db current``)."""
        from crx.registry.db.migrate import HEAD_REVISION

        current = self.db.current_revision()
        return SchemaStatus(
            current=current, head=HEAD_REVISION, up_to_date=current == HEAD_REVISION
        )

    # -- the catalogue (rows and blobs) ---------------------------------------------------

    def init(self) -> InitReport:
        """Create or upgrade the database to the newest schema and create the store."""
        return self.catalog.init()

    def upgrade(self) -> InitReport:
        """Upgrade the database schema to head (the store is left as it is)."""
        return self.catalog.upgrade()

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
        return self.catalog.register_model(
            name, path, gguf_file=gguf_file, revision=revision, family=family, role=role, tags=tags
        )

    def get_model(self, ref: str | int) -> ModelRecord:
        return self.catalog.get_model(ref)

    def list_models(
        self, *, limit: int | None = DEFAULT_LIMIT, after: int | None = None
    ) -> Page[ModelRecord]:
        return self.catalog.list_models(limit=limit, after=after)

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
        return self.catalog.register_concept(
            name,
            pairs_source,
            description=description,
            template=template,
            pair_construction=pair_construction,
            extraction=extraction,
        )

    def mark_for_use(self, ref: str, use: bool = True) -> Registered[ConceptVersionRecord]:
        """Mark ``NAME[@V]`` for use (``crx plan``'s default concepts); one version per concept."""
        return self.catalog.mark_for_use(ref, use)

    def get_concept(self, ref: str) -> ConceptVersionRecord:
        """``NAME`` (latest version) or ``NAME@V``."""
        return self.catalog.get_concept(ref)

    def concept_versions(self, name: str) -> list[ConceptVersionRecord]:
        return self.catalog.concept_versions(name)

    def list_concepts(
        self, *, limit: int | None = DEFAULT_LIMIT, after: int | None = None
    ) -> Page[ConceptRecord]:
        return self.catalog.list_concepts(limit=limit, after=after)

    def load_pairs(self, ref: str | ConceptVersionRecord) -> list[pairs.ContrastPair]:
        """The contrast pairs a concept version was registered with, exactly."""
        return self.catalog.load_pairs(ref)

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
        return self.catalog.register_vector(
            concept_ref,
            model,
            file,
            hook_point=hook_point,
            token_position=token_position,
            estimator=estimator,
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
        return self.catalog.save_vector(
            concept_ref,
            model,
            array,
            origin=origin,
            hook_point=hook_point,
            token_position=token_position,
            estimator=estimator,
            layers=layers,
            lineage_key=lineage_key,
            source_vector_id=source_vector_id,
            map_ids=map_ids,
            settings=settings,
            replace=replace,
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
        return self.catalog.find_vector(
            concept_ref, model, origin=origin, estimator=estimator, token=token
        )

    def get_vector(self, vector_id: int) -> VectorRecord:
        return self.catalog.get_vector(vector_id)

    def load_vector(self, vector_id: int) -> np.ndarray:
        """The ``[n_layers, d_model]`` float32 array of a vector (verified against its oid)."""
        return self.catalog.load_vector(vector_id)

    def list_vectors(
        self,
        *,
        concept: str | None = None,
        model: str | None = None,
        limit: int | None = DEFAULT_LIMIT,
        after: int | None = None,
    ) -> Page[VectorRecord]:
        return self.catalog.list_vectors(concept=concept, model=model, limit=limit, after=after)

    def export_vector(self, vector_id: int, fmt: str, out: str | Path) -> Path:
        """Write a vector as ``safetensors`` or a llama.cpp ``gguf`` control vector."""
        return self.catalog.export_vector(vector_id, fmt, out)

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
    ) -> Registered[MapRecord]:
        """Store a fitted map ``target ≈ W · source + b`` for one layer pair."""
        return self.catalog.save_map(
            source,
            target,
            source_layer,
            target_layer,
            weight,
            bias,
            solver=solver,
            solver_settings=solver_settings,
            corpus_oid=corpus_oid,
            n_samples=n_samples,
            r2=r2,
            mse=mse,
            cosine=cosine,
            metrics=metrics,
        )

    def get_map(self, map_id: int) -> MapRecord:
        return self.catalog.get_map(map_id)

    def load_map(self, map_id: int) -> tuple[np.ndarray, np.ndarray | None]:
        return self.catalog.load_map(map_id)

    def list_maps(
        self,
        *,
        source: str | None = None,
        target: str | None = None,
        limit: int | None = DEFAULT_LIMIT,
        after: int | None = None,
    ) -> Page[MapRecord]:
        return self.catalog.list_maps(source=source, target=target, limit=limit, after=after)

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
        return self.catalog.record_evaluation(
            model,
            task,
            metrics,
            vector_id=vector_id,
            dataset_oid=dataset_oid,
            layers=layers,
            alpha=alpha,
            n=n,
            settings=settings,
        )

    def list_evaluations(
        self,
        *,
        model: str | None = None,
        vector_id: int | None = None,
        task: str | None = None,
        limit: int | None = DEFAULT_LIMIT,
        after: int | None = None,
    ) -> Page[EvaluationRecord]:
        return self.catalog.list_evaluations(
            model=model, vector_id=vector_id, task=task, limit=limit, after=after
        )

    def audit_events(
        self, *, limit: int | None = DEFAULT_LIMIT, after: int | None = None
    ) -> Page[AuditEventRecord]:
        return self.catalog.audit_events(limit=limit, after=after)

    def verify_store(self) -> VerifyReport:
        """Re-hash every referenced blob; report missing or corrupt ones with their rows."""
        return self.catalog.verify_store()

    def gc_store(
        self, *, dry_run: bool = True, grace_seconds: float = DEFAULT_GC_GRACE_SECONDS
    ) -> GcReport:
        """List (``dry_run``) or delete unreferenced blobs older than ``grace_seconds``."""
        return self.catalog.gc_store(dry_run=dry_run, grace_seconds=grace_seconds)

    # -- the ConTrans steps (torch; imported on first use) --------------------------------

    def load_model(self, name: str, *, device: str | None = None) -> LoadedModel:
        """Load a registered model for hooks (`LoadedModel`), cached for this registry object."""
        return self.workspace.load(name, device=device)

    def extract(self, concept_ref: str, model: str, **options: Any) -> Registered[VectorRecord]:
        """Extract (or reuse) a concept vector on a model; see `crx.registry.workflows.extract`."""
        from crx.registry.workflows.extract import extract

        return extract(self.workspace, concept_ref, model, **options)

    def fit(self, source: str, target: str, **options: Any) -> list[MapRecord]:
        """Fit and record affine maps; see `crx.registry.workflows.fit`."""
        from crx.registry.workflows.fit import fit

        return fit(self.workspace, source, target, **options)

    def transplant(
        self, concept_ref: str, source: str, target: str, **options: Any
    ) -> Registered[VectorRecord]:
        """Map a source vector into the target; see `crx.registry.workflows.transplant`."""
        from crx.registry.workflows.transplant import transplant

        return transplant(self.workspace, concept_ref, source, target, **options)

    def evaluate(self, concept_ref: str, model: str, **options: Any) -> list[EvaluationRecord]:
        """Evaluate a concept's vector on a model (``crx evaluate``); see
        `crx.registry.workflows.evaluate.evaluate` for the options (task, data, alphas...)."""
        from crx.registry.workflows.evaluate import evaluate

        return evaluate(self.workspace, concept_ref, model, **options)

    def evaluate_emotion(self, emotion: str, model: str, **options: Any) -> list[EvaluationRecord]:
        """Six-shot emotion accuracy of the bare model (``vector_id=None``) or a vector."""
        from crx.registry.workflows.evaluate import evaluate_emotion

        return evaluate_emotion(self.workspace, emotion, model, **options)

    def evaluate_truthfulqa(
        self, model: str, data: str | Path, **options: Any
    ) -> list[EvaluationRecord]:
        """TruthfulQA MC1/MC2 of the bare model (``vector_id=None``) or a vector at each α."""
        from crx.registry.workflows.evaluate import evaluate_truthfulqa

        return evaluate_truthfulqa(self.workspace, model, data, **options)

    def generate(self, model: str, prompt: str, **options: Any) -> dict[str, str]:
        """Base and steered greedy continuations; see `crx.registry.workflows.generate`."""
        from crx.registry.workflows.generate import generate

        return generate(self.workspace, model, prompt, **options)

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
        from crx.registry.engine.steer import steer
        from crx.registry.workflows.evaluate import default_layer, reference_norm

        array = self.load_vector(vector) if isinstance(vector, int) else vector
        chosen = default_layer(model.n_layers) if layer is None else layer
        norm = reference_norm(model, chosen) if normalize else None
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

    def available_models(self) -> list[dict[str, Any]]:
        """The real models crx can pull (``crx models available``), and whether each is here."""
        from crx.registry.workflows.pull import available

        return available()

    def pull_model(
        self, name: str, *, progress: PullProgress | None = None, keep_gguf: bool = False
    ) -> PullResult:
        """Download, check, convert once and register a model crx knows (``crx models pull``)."""
        from crx.registry.workflows.pull import pull_model

        return pull_model(self.catalog, name, progress=progress, keep_gguf=keep_gguf)

    def demo(
        self,
        *,
        emotions: Sequence[str] | None = None,
        out_dir: Path | None = None,
        progress: PullProgress | None = None,
    ) -> DemoResult:
        """``crx demo``: six emotions SmolLM2 → Gemma-3, both maps, evaluated; see
        `crx.registry.workflows.demo`. ``out_dir`` defaults to ``$CRX_HOME/demo``."""
        from crx.registry.workflows.demo import run

        out = out_dir if out_dir is not None else config.crx_home() / "demo"
        return run(self.workspace, emotions=emotions, out_dir=out, progress=progress)

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

        return make_plan(
            self.catalog, target, concepts, max_hops=max_hops, min_r2=min_r2, measure=measure
        )

    def execute_plan(self, plan: str | Path | TransplantPlan) -> list[PlanExecution]:
        """Register the target vectors of a plan's routes (``crx transplant --plan``)."""
        from crx.registry.resolve.execute import execute_plan

        return execute_plan(self.catalog, plan)

    @contextmanager
    def load_plan(
        self, model: Any, plan: str | Path | TransplantPlan, *, scope: str = "all"
    ) -> Iterator[None]:
        """Steer a loaded target model with every concept of a plan at its layer and α."""
        from crx.registry.resolve.execute import steer_plan

        with steer_plan(self.catalog, model, plan, scope=scope):
            yield

    # -- spec files -----------------------------------------------------------------------

    def diff(self, path: str | Path) -> list[Change]:
        """What ``apply`` would do to make the registry match the spec files at ``path``."""
        from crx.registry.declare import load_specs
        from crx.registry.declare.reconcile import diff

        return diff(self.catalog, load_specs(path)).changes

    def save_diff(self, path: str | Path, out: str | Path, *, prune: bool = False) -> list[Change]:
        """`diff`, saved to ``out`` for a later ``apply(out)`` that refuses if anything moved."""
        from crx.registry.declare.saved import save_diff

        return save_diff(self.catalog, path, out, prune=prune)

    def apply(
        self, path: str | Path, *, prune: bool = False, stage: Stage | None = None
    ) -> ApplyReport:
        """Make the registry match the spec files at ``path`` (or a diff saved by `save_diff`):
        compute what is missing, then write every row in one transaction."""
        from crx.registry.declare.apply import apply_path

        return apply_path(self.workspace, path, prune=prune, stage=stage)
