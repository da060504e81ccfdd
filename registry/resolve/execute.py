"""Carrying out a transplant plan: register its target vectors, or steer a model with all of it.

``execute_plan`` (``crx transplant --plan plan.json``) maps every route still to transplant
through its maps (composed for a chain) and registers the target vectors with lineage; routes
whose vector exists are reported as they are. Every route is computed and checked (maps must
still have the oids they had when planned, and nothing it uses may have been deprecated since)
before the first vector is registered, so a stale or broken plan registers nothing.

``steer_plan`` (``Registry.load_plan``) is a context manager that applies every concept of a
plan to a loaded target model at once, each at its own layer and α.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from crx.registry.db.tables import MAX_ROW_ID
from crx.registry.errors import InvalidInput, first_error
from crx.registry.inputs import read_text
from crx.registry.workflows.transplant import lineage_key
from crx.schemas.plan import ConceptPlan, PlanExecution, Route, TransplantPlan

if TYPE_CHECKING:
    from crx.registry.catalog.service import Catalog

MAX_PLAN_BYTES = 64 * 1024 * 1024  # a plan of thousands of concepts is a few MiB


def read_plan(source: str | Path | TransplantPlan | dict[str, Any]) -> TransplantPlan:
    """A plan from a file, a dict or a plan; anything else is a clear `InvalidInput`."""
    if isinstance(source, TransplantPlan):
        return source
    where = "the plan"
    if not isinstance(source, dict | str | Path):
        raise InvalidInput(f"{type(source).__name__} is not a plan, a plan file or a plan's JSON")
    if not isinstance(source, dict):
        where = str(source)
        if not Path(source).exists() and not Path(source).is_symlink():
            raise InvalidInput(f"plan file {where} does not exist")
        # a regular file of bounded size only (/dev/zero as a plan read until out of memory)
        text = read_text(source, limit=MAX_PLAN_BYTES, what="plan")
        try:
            source = json.loads(text)
            # a "\ud800" escape decodes to a lone surrogate, which no name or query can hold
            json.dumps(source, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(
                f"cannot read plan {where}: it holds text that is not UTF-8"
            ) from None
        except ValueError as exc:  # JSONDecodeError included
            raise InvalidInput(f"cannot read plan {where}: {exc}") from None
        except RecursionError:
            raise InvalidInput(f"cannot read plan {where}: nested too deeply") from None
    if not isinstance(source, dict) or source.get("kind") != "crx.transplant-plan":
        raise InvalidInput(f"{where} is not a crx transplant plan (made by `crx plan -o`)")
    if source.get("schema_version") != 1:
        raise InvalidInput(
            f"{where} has plan schema version {source.get('schema_version')!r}; "
            "this crx reads version 1"
        )
    try:
        return TransplantPlan.model_validate(source)
    except ValidationError as exc:
        raise InvalidInput(f"{where} is not a valid plan: {first_error(exc)}") from None


def route_vector(
    catalog: Catalog, concept: str, route: Route, n_layers: int, d_model: int
) -> np.ndarray:
    """The ``[n_layers, d_model]`` target vector of a route (only its layer is non-zero).

    A route through an anchored map fitted on ``concept`` (or its texts) is refused
    (`AnchorLeak`): a plan made before that map existed cannot carry the concept through it.
    """
    if route.vector_id is not None:
        return catalog.load_vector(route.vector_id)
    from crx.registry.resolve.compose import load_route
    from crx.registry.workflows.anchors import leak_fix, refuse_leaks
    from crx.registry.workflows.transplant import map_layers

    if any(h.solver == "anchored" for h in route.hops):
        version = catalog.get_concept(concept, route.source_model)
        maps = list(catalog.get_maps([h.map_id for h in route.hops]).values())
        fix = leak_fix(version.concept, route.source_model, route.hops[-1].target_model)
        refuse_leaks(catalog, version, maps, fix)
    source = catalog.load_vector(route.source_vector_id)
    weight, _bias = load_route(catalog, route.hops)  # the bias cancels for a difference of states
    return map_layers(
        source, {route.layer: (weight, route.hops[0].source_layer)}, n_layers, d_model
    )


def _check_target(catalog: Catalog, plan: TransplantPlan) -> Any:
    if not plan.target.registered:
        steps = "; ".join(s.command for s in plan.steps) or "register it"
        raise InvalidInput(
            f"the plan's target {plan.target.name} was not registered when it was planned: "
            f"run {steps}, then `crx plan` again"
        )
    target = catalog.get_model(plan.target.name)
    if target.id != plan.target.model_id:
        raise InvalidInput(
            f"model {target.name} was registered again since the plan was made: "
            "run `crx plan` again"
        )
    return target


def check_route(catalog: Catalog, concept: str, route: Route, target: Any) -> None:
    """Refuse a route that the registry does not back, before anything is computed.

    A plan file is untrusted input: every id, model, layer and hop it names is checked against
    the registry (the vector is one of this concept version on that model, each hop is the
    registered map it claims to be, the hops chain from the source vector's model and layer to
    the target at the route's layer).
    """
    where = f"the plan's route for {concept}"
    version = catalog.get_concept(concept)
    if not 0 <= route.layer < target.n_layers:
        raise InvalidInput(
            f"{where}: layer {route.layer} is out of range for {target.name} "
            f"({target.n_layers} layers)"
        )
    for vector_id in (route.source_vector_id, route.vector_id):
        if vector_id is not None and not 1 <= vector_id <= MAX_ROW_ID:
            raise InvalidInput(f"{where}: {vector_id} is not a vector id")
    if route.vector_id is not None:
        _check_vector(catalog, where, route.vector_id, version.id, target.name, route.layer)
        _check_not_deprecated(catalog, concept, route, version.id, target.name)
        return
    if not route.hops:
        raise InvalidInput(f"{where}: a route to transplant needs at least one map")
    first = route.hops[0]
    _check_vector(
        catalog, where, route.source_vector_id, version.id, first.source_model, first.source_layer
    )
    previous_model, previous_layer = first.source_model, first.source_layer
    for hop in route.hops:
        if not 1 <= hop.map_id <= MAX_ROW_ID:
            raise InvalidInput(f"{where}: {hop.map_id} is not a map id")
        registered = catalog.get_map(hop.map_id)
        claimed = (hop.source_model, hop.target_model, hop.source_layer, hop.target_layer)
        actual = (
            registered.source_model,
            registered.target_model,
            registered.source_layer,
            registered.target_layer,
        )
        if claimed != actual:
            raise InvalidInput(
                f"{where}: map {hop.map_id} is {actual[0]} layer {actual[2]} -> {actual[1]} "
                f"layer {actual[3]}, not what the plan says"
            )
        if (hop.source_model, hop.source_layer) != (previous_model, previous_layer):
            raise InvalidInput(f"{where}: map {hop.map_id} does not continue the route")
        previous_model, previous_layer = hop.target_model, hop.target_layer
    if (previous_model, previous_layer) != (target.name, route.layer):
        raise InvalidInput(
            f"{where}: its maps end at {previous_model} layer {previous_layer}, not at "
            f"{target.name} layer {route.layer}"
        )
    _check_not_deprecated(catalog, concept, route, version.id, target.name)


def _check_not_deprecated(
    catalog: Catalog, concept: str, route: Route, version_id: int, target: str
) -> None:
    """Refuse a route that uses something deprecated since the plan was made (the planner
    never chooses one): its concept version, vectors, maps or models."""
    from sqlalchemy import select

    from crx.registry.db.tables import SqlModel
    from crx.registry.errors import DeprecatedObject
    from crx.registry.governance.subjects import deprecated_ids

    model_names = {target, route.source_model}
    model_names |= {m for h in route.hops for m in (h.source_model, h.target_model)}
    vectors = [v for v in (route.vector_id, route.source_vector_id) if v is not None]
    with catalog.db.read() as session:
        rows = session.execute(
            select(SqlModel.id, SqlModel.name).where(SqlModel.name.in_(model_names))
        )
        models = {model_id: name for model_id, name in rows}
        checks = [
            ("concept_version", [version_id], lambda _: concept),
            ("vector", vectors, lambda i: f"vector {i}"),
            ("map", [h.map_id for h in route.hops], lambda i: f"map {i}"),
            ("model", sorted(models), lambda i: f"model {models[i]}"),
        ]
        for kind, ids, label in checks:
            gone = deprecated_ids(session, kind, ids)
            if gone:
                first = min(gone)
                raise DeprecatedObject(
                    label(first),
                    gone[first],
                    f"used by the plan's route for {concept} (deprecated after the plan was "
                    "made: run `crx plan` again)",
                )


def _check_vector(
    catalog: Catalog, where: str, vector_id: int, version_id: int, model: str, layer: int
) -> None:
    vector = catalog.get_vector(vector_id)
    if vector.concept_version_id != version_id or vector.model != model:
        raise InvalidInput(
            f"{where}: vector {vector_id} is {vector.concept}@{vector.concept_version} on "
            f"{vector.model}, not this concept on {model}"
        )
    if vector.layers is not None and layer not in vector.layers:
        raise InvalidInput(f"{where}: vector {vector_id} has no direction at layer {layer}")


def execute_plan(catalog: Catalog, source: Any) -> list[PlanExecution]:
    """Register the target vector of every route in the plan still to transplant."""
    plan = read_plan(source)
    target = _check_target(catalog, plan)
    for item in plan.concepts:
        if item.chosen is not None:
            check_route(catalog, item.concept, item.chosen, target)
    pending: list[tuple[ConceptPlan, Route, np.ndarray]] = []
    results: dict[str, PlanExecution] = {}
    for item in plan.concepts:
        route = item.chosen
        if route is None:
            results[item.concept] = PlanExecution(
                concept=item.concept, status="skipped", detail=item.why
            )
        elif route.vector_id is not None:
            results[item.concept] = PlanExecution(
                concept=item.concept,
                status="existing",
                vector_id=route.vector_id,
                layer=route.layer,
                alpha=route.alpha.alpha,
                normalize=route.alpha.normalize,
            )
        else:
            array = route_vector(catalog, item.concept, route, target.n_layers, target.d_model)
            pending.append((item, route, array))
    for item, route, array in pending:
        map_ids = [h.map_id for h in route.hops]
        saved = catalog.save_vector(
            item.concept,
            target.name,
            array,
            origin="mapped",
            layers=[route.layer],
            lineage_key=lineage_key(route.source_vector_id, map_ids),
            source_vector_id=route.source_vector_id,
            map_ids=map_ids,
            settings={
                "maps": {str(route.layer): map_ids[-1]},
                "route": route.kind,
                "source_layers": {str(route.layer): route.hops[0].source_layer},
                "planned_alpha": route.alpha.alpha,
                "planned_normalize": route.alpha.normalize,
            },
        )
        results[item.concept] = PlanExecution(
            concept=item.concept,
            status="registered" if saved.created else "existing",
            vector_id=saved.record.id,
            layer=route.layer,
            alpha=route.alpha.alpha,
            normalize=route.alpha.normalize,
            detail=f"{route.kind} from {route.source_model}",
        )
    return [results[item.concept] for item in plan.concepts]


@contextmanager
def steer_plan(catalog: Catalog, model: Any, source: Any, *, scope: str = "all") -> Iterator[None]:
    """Steer a loaded target model with every chosen route of a plan at once."""
    from crx.registry.engine.steer import steer
    from crx.registry.workflows.evaluate import reference_norm

    plan = read_plan(source)
    if model.name != plan.target.name:
        raise InvalidInput(f"the plan is for {plan.target.name}, not {model.name}")
    target = _check_target(catalog, plan)
    # Every norm is measured before any hook is installed: a norm measured with the first
    # concept's hook in place would include that concept's addition.
    prepared = []
    for item in plan.concepts:
        route = item.chosen
        if route is None:
            continue
        check_route(catalog, item.concept, route, target)
        array = route_vector(catalog, item.concept, route, target.n_layers, target.d_model)
        norm = reference_norm(model, route.layer) if route.alpha.normalize else None
        prepared.append((route, array, norm))
    with ExitStack() as stack:
        for route, array, norm in prepared:
            stack.enter_context(
                steer(
                    model.layers,
                    array,
                    layer=route.layer,
                    alpha=route.alpha.alpha,
                    scope=scope,
                    normalize=route.alpha.normalize,
                    reference_norm=norm,
                    d_model=target.d_model,
                )
            )
        yield
