"""Finding and ranking the routes that put one concept into a registered target model.

Routes, for a target T and a steering layer ``lt`` of T:

* **native**: a vector extracted (or imported) on T itself;
* **transplanted**: a vector already mapped into T by ``crx transplant`` (or a plan);
* **direct**: a vector on a source S and a fitted map S → T ending at ``lt``;
* **multi-hop**: S → U → … → T through maps whose layers chain.

Maps are walked backwards from ``(T, lt)`` by a best-first search on ``−log R²`` (so the chain
with the best product of held-out R² to each (model, layer) is found first), up to
``max_hops`` maps, skipping maps whose R² is below ``min_r2`` and deprecated maps (and maps
leaving a deprecated model), and anchored maps (whether one may carry a concept depends on the
concept: they enter plans through the vectors transplanted with them). The threshold holds for
transplanted vectors too: one mapped through a map under it is left out, unless it is
evaluated on T or an alias names it (its evidence then says why it stays). ``lt`` is the layer
at relative depth 0.75 when maps reach it, else the reached layer nearest to it.

Ranking (best first), explained in each plan: a route with recorded evaluations on T beats one
without, and evaluated routes compare by their best primary metric; among unevaluated routes a
native vector comes first (no map loses anything), then the higher fit R², then fewer hops (so a
direct map beats a chain of equal fit), then an existing vector before one still to map; the
last tie-breakers are the lower source vector id, then the lower vector id. The "why" sentence
of a tie names the tie-breaker that decided it.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from crx.registry.resolve.alpha import best_alpha, default_alpha
from crx.registry.resolve.compose import estimated_r2
from crx.registry.resolve.view import (
    CatalogView,
    Deprecations,
    EvaluationFact,
    MapFact,
    ModelFact,
    VectorFact,
)
from crx.registry.workflows.evaluate import default_layer
from crx.schemas.plan import MapHop, Route

DEFAULT_MAX_HOPS = 3
DEFAULT_MIN_R2 = 0.2
SOURCE_ORIGINS = ("extracted", "imported")


@dataclass
class Chain:
    """A best path of maps from some (model, layer) to the target's steering layer."""

    maps: list[MapFact]  # in route order: the first map leaves the source
    cost: float  # −Σ log R²

    @property
    def r2(self) -> float:
        return math.exp(-self.cost)


@dataclass
class MapSearch:
    """Best chains of maps into (target, layer), computed once and shared by every concept."""

    view: CatalogView
    target: ModelFact
    max_hops: int = DEFAULT_MAX_HOPS
    min_r2: float = DEFAULT_MIN_R2
    deprecated: Deprecations = field(default_factory=Deprecations)
    _chains: dict[int, dict[tuple[int, int], Chain]] = field(default_factory=dict)
    poor: dict[int, float] = field(default_factory=dict)  # source model → best refused R²
    # Deprecated maps (and maps from deprecated models) the search met and did not follow:
    # map → why, said in the plan of every concept that looked for a route through maps.
    skipped: dict[int, str] = field(default_factory=dict)

    _layers: list[int] | None = None
    _reachable: set[int] | None = None
    _by_model: dict[int, dict[int, list[tuple[int, Chain]]]] = field(default_factory=dict)
    _usable: dict[int, dict[int, list[MapFact]]] = field(default_factory=dict)

    def steering_layers(self) -> list[int]:
        """Target layers some map reaches, the one nearest depth 0.75 first."""
        if self._layers is None:
            preferred = default_layer(self.target.n_layers)
            reached = {m.target_layer for m in self.view.maps_into(self.target.id)}
            self._layers = sorted(reached, key=lambda layer: (abs(layer - preferred), layer))
        return self._layers

    def chains(self, layer: int) -> dict[tuple[int, int], Chain]:
        """(source model, source layer) → the best chain into (target, ``layer``)."""
        if layer not in self._chains:
            self._chains[layer] = self._search(layer)
        return self._chains[layer]

    def reachable(self) -> set[int]:
        """Models with a chain of maps into the target at some steering layer."""
        if self._reachable is None:
            self._reachable = {m for layer in self.steering_layers() for m, _ in self.chains(layer)}
        return self._reachable

    def chains_from(self, layer: int, model_id: int) -> list[tuple[int, Chain]]:
        """(source layer, chain) of every chain from ``model_id`` into (target, ``layer``)."""
        if layer not in self._by_model:
            grouped: dict[int, list[tuple[int, Chain]]] = {}
            for (source, source_layer), chain in self.chains(layer).items():
                grouped.setdefault(source, []).append((source_layer, chain))
            self._by_model[layer] = grouped
        return self._by_model[layer].get(model_id, [])

    def _search(self, layer: int) -> dict[tuple[int, int], Chain]:
        start = (self.target.id, layer)
        best: dict[tuple[int, int], Chain] = {start: Chain([], 0.0)}
        heap: list[tuple[float, int, int, int]] = [(0.0, 0, self.target.id, layer)]
        done: set[tuple[int, int]] = set()
        while heap:
            cost, hops, model_id, at_layer = heapq.heappop(heap)
            node = (model_id, at_layer)
            if node in done:
                continue
            done.add(node)
            if hops >= self.max_hops:
                continue
            chain = best[node]
            visited = {m.source_model_id for m in chain.maps} | {self.target.id}
            for edge in self._maps_into(model_id, at_layer):
                if edge.source_model_id in visited:
                    continue
                if edge.r2 is None or edge.r2 < self.min_r2 or edge.r2 <= 0:
                    score = edge.r2 if edge.r2 is not None else float("nan")
                    previous = self.poor.get(edge.source_model_id, float("-inf"))
                    if not math.isnan(score) and score > previous:
                        self.poor[edge.source_model_id] = score
                    continue
                nxt = (edge.source_model_id, edge.source_layer)
                new_cost = cost - math.log(edge.r2)
                old = best.get(nxt)
                if old is None or (new_cost, hops + 1) < (old.cost, len(old.maps)):
                    best[nxt] = Chain([edge, *chain.maps], new_cost)
                    heapq.heappush(heap, (new_cost, hops + 1, *nxt))
        del best[start]
        return best

    def _maps_into(self, model_id: int, layer: int) -> list[MapFact]:
        """The maps into (``model_id``, ``layer``) still in use: deprecated maps and maps leaving
        a deprecated model are dropped (and noted) once per model, not once per layer searched,
        and the rest grouped by target layer once (a search visits every layer of a model)."""
        by_layer = self._usable.get(model_id)
        if by_layer is None:
            # Anchored maps are fitted on concepts, so whether one may carry a concept depends on
            # the concept (`workflows.anchors.leaks`): they are not edges of this search, shared
            # by every concept; a vector transplanted through them (`crx transplant --solver
            # anchored`, which checks) is ranked by its evaluations like any other.
            usable = [m for m in self.view.maps_into(model_id) if m.solver != "anchored"]
            if self.deprecated:
                maps, models = self.deprecated.ids("map"), self.deprecated.ids("model")
                usable = [
                    edge
                    for edge in usable
                    if (edge.id not in maps and edge.source_model_id not in models)
                    or not self._deprecated(edge)  # notes why
                ]
            by_layer = {}
            for edge in usable:
                by_layer.setdefault(edge.target_layer, []).append(edge)
            self._usable[model_id] = by_layer
        return by_layer.get(layer, [])

    def _deprecated(self, edge: MapFact) -> bool:
        """Whether ``edge`` is out of use (deprecated, or from a deprecated model), noted."""
        why = self.deprecated.reason("map", edge.id)
        if why is not None:
            self.skipped[edge.id] = f"map {edge.id} is deprecated ({why})"
            return True
        why = self.deprecated.reason("model", edge.source_model_id)
        if why is not None:
            name = self.view.model(edge.source_model_id).name
            self.skipped[edge.id] = (
                f"map {edge.id} leaves model {name}, which is deprecated ({why})"
            )
            return True
        return False

    def skipped_reasons(self) -> list[str]:
        return [f"{why}: routes through it are not used" for why in self.skipped.values()]


def _hops(view: CatalogView, maps: Sequence[MapFact]) -> list[MapHop]:
    models = view.models({m.source_model_id for m in maps} | {m.target_model_id for m in maps})
    return [
        MapHop(
            map_id=m.id,
            oid=m.oid,
            source_model=models[m.source_model_id].name,
            target_model=models[m.target_model_id].name,
            source_layer=m.source_layer,
            target_layer=m.target_layer,
            solver=m.solver,
            r2=m.r2,
        )
        for m in maps
    ]


def _existing_route(
    view: CatalogView,
    target: ModelFact,
    vector: VectorFact,
    evaluations: Sequence[EvaluationFact],
    by_id: dict[int, VectorFact],
) -> Route | None:
    """A vector already on the target (native or transplanted) as a route."""
    choice, evaluated_layer = best_alpha(vector.id, evaluations)
    layers = sorted(vector.layers) if vector.layers is not None else None
    preferred = default_layer(target.n_layers)
    if evaluated_layer is not None:
        layer = evaluated_layer
    elif layers is None or preferred in layers:
        layer = preferred
    elif layers:
        layer = min(layers, key=lambda x: (abs(x - preferred), x))
    else:
        return None
    if vector.origin in SOURCE_ORIGINS:
        return Route(
            kind="native",
            source_model=target.name,
            source_vector_id=vector.id,
            vector_id=vector.id,
            layer=layer,
            alpha=choice,
            evidence=[f"vector {vector.id} was {vector.origin} on {target.name} itself"],
        )
    # A vector a plan mapped through a chain has that one layer and the chain's maps in order;
    # `crx transplant` maps every layer through one map each (settings["maps"]).
    if vector.layers == (layer,) and len(vector.map_ids) > 1:
        ids: list[int] = list(vector.map_ids)
    else:
        single = vector.maps_by_layer.get(str(layer))
        ids = [single] if single is not None else []
    maps = view.maps(ids)
    chain = [maps[i] for i in ids if i in maps]
    source = by_id.get(vector.source_vector_id or -1)
    source_name = view.model(source.model_id).name if source else "?"
    hops = _hops(view, chain)
    return Route(
        kind="transplanted",
        source_model=source_name,
        source_vector_id=vector.source_vector_id or vector.id,
        vector_id=vector.id,
        layer=layer,
        hops=hops,
        fit_r2=hops[0].r2 if len(hops) == 1 else estimated_r2([h.r2 for h in hops]),
        fit_r2_estimated=len(hops) > 1,
        alpha=choice,
        evidence=[
            f"vector {vector.id} was mapped into {target.name} from vector "
            f"{vector.source_vector_id}",
            *([_describe_chain(hops)] if hops else []),
        ],
    )


def _describe_chain(hops: Sequence[MapHop]) -> str:
    steps = [f"{hops[0].source_model} L{hops[0].source_layer}"]
    for h in hops:
        r2 = "?" if h.r2 is None else f"{h.r2:.3f}"
        steps.append(f"{h.target_model} L{h.target_layer} (map {h.map_id}, R² {r2})")
    return " → ".join(steps)


def _poor_hops(hops: Sequence[MapHop], min_r2: float) -> str | None:
    """``map 3 (R² -0.416)`` for the hops the search would refuse (under ``min_r2``), or None."""
    poor = [h for h in hops if h.r2 is None or h.r2 < min_r2 or h.r2 <= 0]
    if not poor:
        return None
    return ", ".join(
        f"map {h.map_id} (R² {'unknown' if h.r2 is None else f'{h.r2:.3f}'})" for h in poor
    )


def candidate_routes(
    view: CatalogView,
    search: MapSearch,
    vectors: Sequence[VectorFact],
    evaluations: Sequence[EvaluationFact],
    kept: Mapping[int, str] | None = None,
) -> tuple[list[Route], list[str]]:
    """Every route of one concept into ``search.target``, best first, and refusals.

    ``--min-r2`` holds for every route through maps: a vector already mapped into the target
    through a map under it is left out (with the reason) unless it is evaluated on the target
    (its evaluation, not the fit, is then the evidence) or ``kept`` names it (vector id → why,
    e.g. an alias names it); a kept one says so in its evidence."""
    target = search.target
    kept = kept or {}
    by_id = {v.id: v for v in vectors}
    routes: list[Route] = []
    reasons: list[str] = []
    existing_lineage: set[tuple[int, tuple[int, ...]]] = set()
    for vector in vectors:
        if vector.model_id != target.id:
            continue
        if vector.d_model != target.d_model:
            reasons.append(
                f"vector {vector.id} has {vector.d_model} dimensions, {target.name} has "
                f"{target.d_model}: dimensions mismatch"
            )
            continue
        route = _existing_route(view, target, vector, evaluations, by_id)
        poor_maps = None if route is None else _poor_hops(route.hops, search.min_r2)
        if route is not None and poor_maps is not None:
            under = f"{poor_maps} under --min-r2 {search.min_r2:g}"
            if route.alpha.evaluated or vector.id in kept:
                why = (
                    f"it is evaluated on {target.name} (the evidence, not the fit)"
                    if route.alpha.evaluated
                    else kept[vector.id]
                )
                note = f"mapped through {under}: vector {vector.id} stays a candidate, since {why}"
                route = route.model_copy(update={"evidence": [*route.evidence, note]})
            else:
                reasons.append(
                    f"vector {vector.id} was mapped through {under}: not used until it is "
                    f"evaluated on {target.name}"
                )
                route = None
        if route is not None:
            routes.append(route)
            if route.kind == "transplanted":
                existing_lineage.add((route.source_vector_id, tuple(h.map_id for h in route.hops)))
    sources = [v for v in vectors if v.model_id != target.id and v.origin in SOURCE_ORIGINS]
    source_models = view.models({v.model_id for v in sources})
    reached: set[int] = set()
    reachable = search.reachable()
    candidates = [v for v in sources if v.model_id in reachable]
    for layer in search.steering_layers() if candidates else []:
        for vector in candidates:
            if vector.model_id in reached:
                continue
            model = source_models[vector.model_id]
            if vector.d_model != model.d_model:
                reasons.append(f"vector {vector.id} does not match {model.name}'s dimensions")
                continue
            options = [
                (chain, source_layer)
                for source_layer, chain in search.chains_from(layer, vector.model_id)
                if vector.has_layer(source_layer)
            ]
            if not options:
                continue
            chain, _ = min(options, key=lambda o: (o[0].cost, len(o[0].maps), o[1]))
            hops = _hops(view, chain.maps)
            reached.add(vector.model_id)
            if (vector.id, tuple(h.map_id for h in hops)) in existing_lineage:
                continue  # already mapped: the transplanted route above stands for it
            direct = len(hops) == 1
            routes.append(
                Route(
                    kind="direct" if direct else "multi-hop",
                    source_model=model.name,
                    source_vector_id=vector.id,
                    layer=layer,
                    hops=hops,
                    fit_r2=hops[0].r2 if direct else estimated_r2([h.r2 for h in hops]),
                    fit_r2_estimated=not direct,
                    alpha=default_alpha(),
                    evidence=[_describe_chain(hops)],
                )
            )
    for vector in sources:
        if vector.model_id in reached:
            continue
        name = source_models[vector.model_id].name
        poor = search.poor.get(vector.model_id)
        if poor is not None:
            reasons.append(
                f"the best map from {name} to {target.name} has R² {poor:.3f}, under the "
                f"threshold {search.min_r2:g}"
            )
        else:
            reasons.append(
                f"no chain of maps from {name} to {target.name} (within {search.max_hops} hops)"
            )
    routes.sort(key=rank_key)
    return routes, sorted(set(reasons))


KIND_ORDER = {"native": 0, "transplanted": 1, "direct": 1, "multi-hop": 1}


def rank_key(route: Route) -> tuple[float | int, ...]:
    # The last items break ties between otherwise equal routes: the lower source vector id,
    # then the lower vector id (so a plan is the same on every run).
    last = (route.source_vector_id, route.vector_id if route.vector_id is not None else -1)
    if route.alpha.evaluated:
        return (0, -(route.alpha.value or 0.0), len(route.hops), *last)
    return (
        1,
        KIND_ORDER[route.kind],
        -(route.fit_r2 if route.fit_r2 is not None else -1.0),
        len(route.hops),
        0 if route.vector_id is not None else 1,
        *last,
    )


def _pair(a: float, b: float) -> tuple[str, str]:
    """``a`` and ``b`` to 3 decimals, or to 6 significant digits when 3 decimals look equal."""
    short = f"{a:.3f}", f"{b:.3f}"
    return short if short[0] != short[1] or a == b else (f"{a:.6g}", f"{b:.6g}")


def why_chosen(routes: Sequence[Route]) -> str:
    """One sentence on why the first route beat the second (a tie names its tie-breaker)."""
    best = routes[0]
    if len(routes) == 1:
        return f"the only route ({best.kind})"
    other = routes[1]
    if best.alpha.evaluated and not other.alpha.evaluated:
        return (
            f"{best.kind} route is evaluated on the target "
            f"({best.alpha.metric} {best.alpha.value:.3f}); the next ({other.kind}) is not"
        )
    if best.alpha.evaluated:
        a, b = _pair(best.alpha.value or 0.0, other.alpha.value or 0.0)
        if a != b:
            metric = best.alpha.metric
            return f"best evaluated {metric}: {a} against {b} for the next ({other.kind})"
        return (
            f"tie on evaluated {best.alpha.metric} ({a}) with the next ({other.kind}); "
            + _tie_breaker(best, other)
        )
    if best.kind == "native" and other.kind != "native":
        return "a native vector needs no map; nothing is evaluated to say otherwise"
    best_fit, other_fit = best.fit_r2, other.fit_r2
    if best_fit is not None and other_fit is None:
        return f"best fit: R² {best_fit:.3f}, and the next ({other.kind}) has no fit R²"
    if best_fit is not None and other_fit is not None and best_fit > other_fit:
        a, b = _pair(best_fit, other_fit)
        return f"best fit: R² {a} against {b} for the next ({other.kind})"
    if best_fit is None:
        tie = f"nothing evaluated and no fit to compare with the next ({other.kind})"
    else:
        tie = f"tie on fit R² {best_fit:.3f} with the next ({other.kind})"
    return f"{tie}; {_tie_breaker(best, other)}"


def _tie_breaker(best: Route, other: Route) -> str:
    """What `rank_key` decided on after score and fit: maps, existing vector, then ids."""
    if len(best.hops) < len(other.hops):
        return f"the tie-breaker is fewer maps ({len(best.hops)} against {len(other.hops)})"
    if not best.alpha.evaluated and best.vector_id is not None and other.vector_id is None:
        return (
            f"the tie-breaker is an existing vector: vector {best.vector_id} is already on the "
            "target, the next is still to map"
        )
    if best.source_vector_id != other.source_vector_id:
        return (
            f"the tie-breaker is the lower source vector id ({best.source_vector_id} against "
            f"{other.source_vector_id})"
        )
    if best.vector_id is not None and other.vector_id is not None:
        return (
            f"the tie-breaker is the lower vector id ({best.vector_id} against {other.vector_id})"
        )
    return "equal in every respect: the first listed"
