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

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import cached_property
from pathlib import Path
from types import MethodType
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from crx.registry import audit, config
from crx.registry.catalog.service import Catalog
from crx.registry.db.session import Database
from crx.registry.progress import Stage, StagedProgress
from crx.registry.store import ObjectStore
from crx.registry.workflows.workspace import Workspace
from crx.schemas.records import (
    ConceptVersionRecord,
    EvaluationRecord,
    ExportReport,
    MapRecord,
    Registered,
    SchemaStatus,
    VectorRecord,
)

if TYPE_CHECKING:
    import numpy as np  # only `steer` takes an array; the read commands never import numpy

    from crx.registry.engine.loading import LoadedModel, LoadSettings
    from crx.registry.governance.service import Governance  # imported on first use: below
    from crx.registry.workflows.bank import BankConcept
    from crx.registry.workflows.demo import DemoResult
    from crx.registry.workflows.demo import Estimate as DemoEstimate
    from crx.registry.workflows.pull import PullResult
    from crx.schemas.declare import ApplyReport, Change  # spec files only, not the read commands
    from crx.schemas.plan import PlanExecution, TransplantPlan

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")


class _part(Generic[S, P, R]):
    """A facade attribute that is a method of one of its parts (``registry.catalog`` or
    ``registry.governance``), bound to that part.

    The facade exposes the parts' operations without writing each signature twice; mypy sees
    the method's own parameters and return type through the ParamSpec. ``resolve`` returns the
    method: a part imported on first use (governance) is imported when one of its methods is
    first looked up, on the facade or on an instance.
    """

    def __init__(self, part: str, resolve: Callable[[], Callable[Concatenate[S, P], R]]) -> None:
        self._part = part
        self._resolve = resolve
        self._resolved: Callable[Concatenate[S, P], R] | None = None

    @property
    def _method(self) -> Callable[Concatenate[S, P], R]:
        if self._resolved is None:
            self._resolved = self._resolve()
            self.__doc__ = self._resolved.__doc__
        return self._resolved

    @overload
    def __get__(self, registry: None, owner: type[Registry]) -> _part[S, P, R]: ...
    @overload
    def __get__(
        self, registry: Registry, owner: type[Registry] | None = None
    ) -> Callable[P, R]: ...
    def __get__(self, registry: Registry | None, owner: object = None) -> Any:
        if registry is None:
            self._method  # noqa: B018 (a lookup on the class, `help()`'s: the docstring)
            return self
        return MethodType(self._method, getattr(registry, self._part))


def _catalog(method: Callable[Concatenate[Catalog, P], R]) -> _part[Catalog, P, R]:
    return _part("catalog", lambda: method)


def _governance(
    pick: Callable[[type[Governance]], Callable[Concatenate[Governance, P], R]],
) -> _part[Governance, P, R]:
    """The `Governance` method that ``pick`` takes from the class: governance (its modules and
    policy schemas) is imported when one is first used, never by `crx show` or `crx list`."""
    return _part("governance", lambda: pick(_governance_class()))


def _governance_class() -> type[Governance]:
    from crx.registry.governance.service import Governance

    return Governance


def _current_dataset(task: str, concept: str) -> str | None:
    from crx.registry.workflows.evaluate import current_dataset

    return current_dataset(task, concept)


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

    @cached_property
    def governance(self) -> Governance:
        """Aliases, approvals, policies, deprecations, roles, tokens and lineage over this
        catalogue; imported and built on first use, so `crx show` and `crx list` load none of
        it."""
        return _governance_class()(self.catalog, _current_dataset)

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

    # -- the catalogue (rows and blobs): the `Catalog` methods themselves -----------------
    # Each is the Catalog method of the same name, bound to this registry's catalogue, with
    # its signature, types and docstring (see `crx.registry.catalog.service`).

    # lifecycle
    init = _catalog(Catalog.init)
    upgrade = _catalog(Catalog.upgrade)

    # models
    register_model = _catalog(Catalog.register_model)
    get_model = _catalog(Catalog.get_model)
    list_models = _catalog(Catalog.list_models)

    # concepts
    register_concept = _catalog(Catalog.register_concept)
    mark_for_use = _catalog(Catalog.mark_for_use)
    get_concept = _catalog(Catalog.get_concept)
    concept_versions = _catalog(Catalog.concept_versions)
    list_concepts = _catalog(Catalog.list_concepts)
    load_pairs = _catalog(Catalog.load_pairs)

    # vectors
    register_vector = _catalog(Catalog.register_vector)
    save_vector = _catalog(Catalog.save_vector)
    find_vector = _catalog(Catalog.find_vector)
    get_vector = _catalog(Catalog.get_vector)
    load_vector = _catalog(Catalog.load_vector)
    list_vectors = _catalog(Catalog.list_vectors)
    concepts_on = _catalog(Catalog.concepts_on)

    # maps
    save_map = _catalog(Catalog.save_map)
    get_map = _catalog(Catalog.get_map)
    get_maps = _catalog(Catalog.get_maps)
    map_anchors = _catalog(Catalog.map_anchors)
    load_map = _catalog(Catalog.load_map)
    list_maps = _catalog(Catalog.list_maps)

    # evaluations
    record_evaluation = _catalog(Catalog.record_evaluation)
    list_evaluations = _catalog(Catalog.list_evaluations)

    # audit and store
    audit_events = _catalog(Catalog.audit_events)

    # -- governance: the `Governance` methods themselves (`crx.registry.governance`) --------

    set_alias = _governance(lambda g: g.set_alias)
    get_alias = _governance(lambda g: g.get_alias)
    delete_alias = _governance(lambda g: g.delete_alias)
    list_aliases = _governance(lambda g: g.list_aliases)
    alias_history = _governance(lambda g: g.alias_history)
    approve = _governance(lambda g: g.approve)
    reject = _governance(lambda g: g.reject)
    list_approvals = _governance(lambda g: g.list_approvals)
    promote = _governance(lambda g: g.promote)
    deprecate = _governance(lambda g: g.deprecate)
    list_deprecations = _governance(lambda g: g.list_deprecations)
    put_policy = _governance(lambda g: g.put_policy)
    delete_policy = _governance(lambda g: g.delete_policy)
    list_policies = _governance(lambda g: g.list_policies)
    governing_policy = _governance(lambda g: g.governing_policy)
    get_policy = _governance(lambda g: g.get_policy)
    alias_protected = _governance(lambda g: g.alias_protected)
    audit = _governance(lambda g: g.audit)
    lineage = _governance(lambda g: g.lineage)
    ensure_roles = _governance(lambda g: g.ensure_roles)
    add_user = _governance(lambda g: g.add_user)
    add_gateway = _governance(lambda g: g.add_gateway)
    create_token = _governance(lambda g: g.create_token)
    list_tokens = _governance(lambda g: g.list_tokens)
    revoke_token = _governance(lambda g: g.revoke_token)
    tokens_configured = _governance(lambda g: g.tokens_configured)
    authenticate_token = _governance(lambda g: g.authenticate_token)
    token_writes_served = _governance(lambda g: g.token_writes_served)

    @staticmethod
    def acting_for(user: str) -> AbstractContextManager[None]:
        """Record ``user`` as the actor of the calls made inside (this thread or task only):
        on SQLite the actor and label, on PostgreSQL the label beside the role, and, when
        connected as a gateway, that user's role (`crx.registry.audit.acting_for`)."""
        return audit.acting_for(user)

    verify_store = _catalog(Catalog.verify_store)
    gc_store = _catalog(Catalog.gc_store)

    # -- the ConTrans steps (torch; imported on first use) --------------------------------

    def use_loading(
        self,
        settings: LoadSettings | None = None,
        *,
        device: str | None = None,
        dtype: str | None = None,
        max_memory: str | Mapping[Any, Any] | None = None,
        offload_folder: str | Path | None = None,
    ) -> LoadSettings:
        """Load every model from now on with ``settings`` (or those built from the text
        fields, ``max_memory="0=20GiB,cpu=64GiB"``): device, dtype, memory budget, offload
        folder; see `crx.registry.engine.loading.LoadSettings`. A device torch cannot use is
        refused now, before anything loads or is recorded."""
        from crx.registry.engine.loading import LoadSettings

        if settings is None:
            settings = LoadSettings.parse(
                device=device, dtype=dtype, max_memory=max_memory, offload_folder=offload_folder
            )
        self.workspace.use(settings)
        return settings

    def load_model(self, name: str) -> LoadedModel:
        """Load a registered model for hooks (`LoadedModel`), cached for this registry object;
        where and as what: `use_loading` (default: CPU float32; CUDA bf16)."""
        return self.workspace.load(name)

    def extract(self, concept_ref: str, model: str, **options: Any) -> Registered[VectorRecord]:
        """Extract (or reuse) a concept vector on a model; see `crx.registry.workflows.extract`."""
        from crx.registry.workflows.extract import extract

        return extract(self.workspace, concept_ref, model, **options)

    def fit(self, source: str, target: str, **options: Any) -> list[MapRecord]:
        """Fit and record affine maps; see `crx.registry.workflows.fit`."""
        from crx.registry.workflows.fit import fit

        return fit(self.workspace, source, target, **options)

    def bank(self) -> list[BankConcept]:
        """The concept bank shipped with crx (`crx.registry.workflows.bank`)."""
        from crx.registry.workflows.bank import bank_index

        return bank_index()

    def extract_bank(self, model: str, **options: Any) -> list[tuple[VectorRecord, bool]]:
        """Register the concept bank and extract it on ``model`` (``crx bank extract``):
        ``(vector, created)`` per concept; see `crx.registry.workflows.bank.extract_bank`."""
        from crx.registry.workflows.bank import extract_bank

        return extract_bank(self.workspace, model, **options)

    def transplant(
        self, concept_ref: str, source: str, target: str, **options: Any
    ) -> Registered[VectorRecord]:
        """Map a source vector into the target; see `crx.registry.workflows.transplant`."""
        from crx.registry.workflows.transplant import transplant

        return transplant(self.workspace, concept_ref, source, target, **options)

    def evaluate(self, concept_ref: str, model: str, **options: Any) -> list[EvaluationRecord]:
        """Evaluate a concept's vector on a model (``crx evaluate``); see
        `crx.registry.workflows.evaluate.evaluate` for the options (task, data, alphas...).
        α is relative to the layer's mean residual norm (default 0.05, 0.1, 0.2, 0.4);
        ``normalize=False`` makes it absolute (then ``alphas`` must be given)."""
        from crx.registry.workflows.evaluate import evaluate

        return evaluate(self.workspace, concept_ref, model, **options)

    def evaluate_emotion(self, emotion: str, model: str, **options: Any) -> list[EvaluationRecord]:
        """Six-shot emotion accuracy of the bare model (``vector_id=None``) or a vector at each
        α (× the layer's mean residual norm; ``normalize=False``: absolute)."""
        from crx.registry.workflows.evaluate import evaluate_emotion

        return evaluate_emotion(self.workspace, emotion, model, **options)

    def evaluate_truthfulqa(
        self, model: str, data: str | Path, **options: Any
    ) -> list[EvaluationRecord]:
        """TruthfulQA MC1/MC2 of the bare model (``vector_id=None``) or a vector at each α
        (× the layer's mean residual norm; ``normalize=False``: absolute)."""
        from crx.registry.workflows.evaluate import evaluate_truthfulqa

        return evaluate_truthfulqa(self.workspace, model, data, **options)

    def export_vector(
        self,
        ref: str | int,
        fmt: str = "safetensors",
        out: str | Path | None = None,
        **options: Any,
    ) -> ExportReport:
        """Write vector ``ref`` (an id, or ``CONCEPT[@V|@ALIAS]`` with ``model``) for other
        tools, with the layers and strength of its best evaluation baked in (or ``layers``,
        ``alpha``, ``normalize``, ``from_evaluation``, ``raw``); see
        `crx.registry.workflows.export`."""
        from crx.registry.workflows.export import export_vector

        return export_vector(self.workspace, ref, fmt, out, **options)

    def generate(self, model: str, prompt: str, **options: Any) -> dict[str, str]:
        """Base and steered greedy continuations; see `crx.registry.workflows.generate`. With
        ``concept``, it steers with the vector, layer and α `plan` chooses for it on ``model``."""
        from crx.registry.workflows.generate import generate

        return generate(self.workspace, model, prompt, **options)

    @contextmanager
    def steer(
        self,
        model: Any,
        vector: int | np.ndarray,
        *,
        layer: int | None = None,
        alpha: float = 0.1,
        scope: str = "all",
        normalize: bool = True,
    ) -> Iterator[None]:
        """Steer a loaded model (from `load_model`) with a vector id or array while open.

        Forward hooks add the vector to that block's output; they are removed on exit,
        exceptions included, and the model is never mutated. α is relative to the layer's mean
        residual norm (the added vector is ``alpha * norm * v / |v|``; 0.1, the default, is a
        tenth of a typical residual); ``normalize=False`` adds ``alpha * v[layer]`` as is.
        ``layer`` defaults to relative depth 0.75.
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

    def plot_evaluations(self, records: Sequence[EvaluationRecord], out: str | Path) -> Path:
        """A PNG of α against the task's primary metric for every vector of the concept
        evaluated on the model and dataset of ``records`` (what `evaluate` returned), the base
        model as a line; see `crx.registry.workflows.figures`."""
        from crx.registry.workflows.figures import evaluation_plot

        return evaluation_plot(self.catalog, records, out)

    def plot_maps(self, source: str, target: str, out: str | Path) -> Path:
        """A PNG heat-map of the held-out R² of the newest fit ``source`` → ``target`` over
        source × target layers, the chosen pairs marked (`crx.registry.plot.map_r2_figure`)."""
        from crx.registry.workflows.figures import maps_plot

        return maps_plot(self.catalog, source, target, out)

    def map_grid(self, source: str, target: str) -> dict[str, Any]:
        """The newest fit ``source`` → ``target``: recipe, R² grid, chosen pairs (``crx show
        maps``; `crx.registry.workflows.figures.map_grid`)."""
        from crx.registry.workflows.figures import map_grid

        return map_grid(self.catalog, source, target)

    @staticmethod
    def check_plot_path(out: str | Path) -> Path:
        """Refuse, before any work, a plot path that is not a ``.png`` in an existing folder."""
        from crx.registry.workflows.figures import check_png

        return check_png(out)

    def available_models(self) -> list[dict[str, Any]]:
        """The real models crx can pull (``crx models available``), and whether each is here."""
        from crx.registry.workflows.pull import available

        return available()

    def pull_model(
        self, name: str, *, progress: StagedProgress | None = None, keep_gguf: bool = False
    ) -> PullResult:
        """Download, check, convert once and register a model crx knows (``crx models pull``)."""
        from crx.registry.workflows.pull import pull_model

        return pull_model(self.catalog, name, progress=progress, keep_gguf=keep_gguf)

    @staticmethod
    def progress_unit(stage: str) -> str:
        """What the counts of a progress stage are (``"B"`` for bytes); see
        `crx.registry.progress`."""
        from crx.registry.progress import unit

        return unit(stage)

    def register_emotion(
        self, name: str, emotion: str, *, description: str | None = None, use: bool = False
    ) -> Registered[ConceptVersionRecord]:
        """Register concept ``name`` from crx's own RepE scenarios of ``emotion`` (one of
        ``crx.registry.engine.emotion.EMOTIONS``), exactly as ``crx demo`` does: the training
        half's contrast pairs in ConTrans' template; the held-out half is what `evaluate` scores."""
        from crx.registry.workflows.demo import register_emotion

        return register_emotion(self.catalog, name, emotion, description=description, use=use)

    def demo_estimate(self, emotions: Sequence[str] | None = None) -> DemoEstimate:
        """What ``crx demo`` measured to take and need, and which slow steps are done here
        (``emotions``, as `demo` takes them, are checked first)."""
        from crx.registry.workflows.demo import estimate

        return estimate(self.workspace, emotions)

    def demo(
        self,
        *,
        emotions: Sequence[str] | None = None,
        out_dir: Path | None = None,
        progress: StagedProgress | None = None,
    ) -> DemoResult:
        """``crx demo``: six emotions SmolLM2 → Gemma-3, both maps, evaluated; see
        `crx.registry.workflows.demo`. ``out_dir`` defaults to ``$CRX_HOME/demo``."""
        from crx.registry.workflows.demo import run

        out = out_dir if out_dir is not None else config.crx_home() / "demo"
        return run(self.workspace, emotions=emotions, out_dir=out, progress=progress)

    # -- plots (matplotlib, imported on first use): `crx serve`'s images -------------------

    @staticmethod
    def alpha_plot(
        series: dict[str, dict[float, float]],
        *,
        base: float | None,
        metric: str,
        title: str,
        normalize: bool = True,
        fmt: str = "png",
    ) -> bytes:
        """`crx.registry.plot.alpha_figure` (metric against α, one line per series) as PNG or
        SVG bytes."""
        from crx.registry import plot

        return plot.rendered(
            lambda: plot.alpha_figure(
                series, base=base, metric=metric, title=title, normalize=normalize
            ),
            fmt,
        )

    def maps_image(
        self, source: str, target: str, fmt: str = "png", *, map_id: int | None = None
    ) -> bytes:
        """The R² heat-map of `plot_maps` (the newest fit ``source`` → ``target``, or the fit
        of map ``map_id``) as PNG or SVG bytes."""
        from crx.registry import plot
        from crx.registry.workflows.figures import maps_figure

        return plot.rendered(lambda: maps_figure(self.catalog, source, target, map_id), fmt)

    @staticmethod
    def map_fits(maps: Sequence[MapRecord]) -> list[list[MapRecord]]:
        """``maps`` grouped by fit (solver, corpus, layer pairs), the newest fit first."""
        from crx.registry.workflows.figures import fits

        return fits(maps)

    # -- the resolver ---------------------------------------------------------------------

    def plan(
        self,
        target: str,
        concepts: Sequence[str] = (),
        *,
        max_hops: int = 3,
        min_r2: float = 0.2,
        measure: bool = False,
        alias: str | None = None,
    ) -> TransplantPlan:
        """The transplant plan for ``target``; see `crx.registry.resolve.planner`. Reads only.

        Each concept's ``prod`` alias on the target decides its route (``alias``: another alias
        instead); deprecated objects are never chosen."""
        from crx.registry.resolve.planner import make_plan

        return make_plan(
            self.catalog,
            target,
            concepts,
            max_hops=max_hops,
            min_r2=min_r2,
            measure=measure,
            alias=alias,
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

    def save_diff(
        self, path: str | Path, out: str | Path, *, prune: bool = False, force: bool = False
    ) -> list[Change]:
        """`diff`, saved to ``out`` for a later ``apply(out)`` that refuses if anything moved."""
        from crx.registry.declare.saved import save_diff

        return save_diff(self.catalog, path, out, prune=prune, force=force)

    def save_plan(self, plan: TransplantPlan, out: str | Path, *, force: bool = False) -> Path:
        """Write a plan document (``crx plan -o``); an existing ``out`` needs ``force``."""
        from crx.registry.outputs import write_text

        return write_text(out, plan.model_dump_json(indent=2) + "\n", force=force)

    def apply(
        self, path: str | Path, *, prune: bool = False, stage: Stage | None = None
    ) -> ApplyReport:
        """Make the registry match the spec files at ``path`` (or a diff saved by `save_diff`):
        compute what is missing, then write every row in one transaction."""
        from crx.registry.declare.apply import apply_path

        return apply_path(self.workspace, path, prune=prune, stage=stage)
