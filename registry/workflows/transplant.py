"""Transplanting: a source model's concept vector mapped into a target through fitted maps.

`map_layers` is the one per-layer mapping (``v_t[lt] = W · v_s[ls]``; the bias cancels for a
difference of states) and `lineage_key` the one identity of a mapped vector, shared by
``crx transplant``, ``crx apply`` and plan execution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from crx.registry.errors import InvalidInput, NoMapBetween, NoVectorOn
from crx.registry.progress import StagedProgress, staged
from crx.registry.workflows.anchors import leak_error, leak_fix, split_leaky
from crx.schemas.records import MapRecord, Registered, VectorRecord

if TYPE_CHECKING:
    from crx.registry.workflows.workspace import Workspace


def _r2(m: MapRecord) -> float:
    return m.r2 if m.r2 is not None else float("-inf")


def choose_maps(
    maps: Sequence[MapRecord], *, layer: int | None, solver: str | None, pairs: str | None = None
) -> dict[int, MapRecord]:
    """Per target layer, the map with the best held-out R² (optionally one layer / solver)."""
    chosen: dict[int, MapRecord] = {}
    for m in maps:
        if layer is not None and m.target_layer != layer:
            continue
        if solver is not None and m.solver != solver:
            continue
        if pairs is not None and m.solver_settings.get("pairs") != pairs:
            continue
        best = chosen.get(m.target_layer)
        if best is None or _r2(m) > _r2(best):
            chosen[m.target_layer] = m
    return chosen


def map_layers(
    source: np.ndarray,
    weights: Mapping[int, tuple[np.ndarray, int]],
    n_layers: int,
    d_model: int,
) -> np.ndarray:
    """The ``[n_layers, d_model]`` target vector: row ``lt`` = ``W · source[ls]`` for each
    ``lt: (W, ls)`` of ``weights``; the other rows stay zero."""
    from crx.registry.engine.fit import map_vector

    out = np.zeros((n_layers, d_model), dtype=np.float32)
    for lt, (weight, ls) in sorted(weights.items()):
        out[lt] = map_vector(weight, source[ls])
    return out


def lineage_key(source_vector_id: int | None, map_ids: Sequence[int]) -> str:
    """The identity of a mapped vector among its concept version's vectors on the target."""
    return f"v{source_vector_id}:m" + ",".join(map(str, map_ids))


def transplant(
    ws: Workspace,
    concept_ref: str,
    source: str,
    target: str,
    *,
    layer: int | None = None,
    solver: str | None = None,
    vector_id: int | None = None,
    progress: StagedProgress | None = None,
) -> Registered[VectorRecord]:
    """Map the source model's vector of a concept into the target with the stored maps.

    Reports the stage ``transplant C S -> T (solver)``, counting the maps loaded and applied.
    """
    catalog = ws.catalog
    concept = catalog.get_concept(concept_ref, source)
    src, tgt = catalog.get_model(source), catalog.get_model(target)
    # An alias of the concept on the source names the source vector.
    vector_id = vector_id if vector_id is not None else catalog.aliased_vector(concept_ref, source)
    if vector_id is not None:
        source_vector = catalog.get_vector(vector_id)
        if source_vector.model != src.name or source_vector.concept_version_id != concept.id:
            raise InvalidInput(f"vector {vector_id} is not a vector of {concept.ref} on {src.name}")
    else:
        found = catalog.find_vector(concept, src, origin="extracted")
        if found is None:
            raise NoVectorOn(concept.ref, src.name)
        source_vector = found
    if layer is not None and not 0 <= layer < tgt.n_layers:
        raise InvalidInput(f"layer {layer} is out of range for {tgt.name} ({tgt.n_layers} layers)")
    registered = catalog.list_maps(source=src.name, target=tgt.name, limit=0).items
    # anchored maps fitted on this concept (or its texts) are never candidates for it
    usable, leaky = split_leaky(catalog, concept, registered)
    chosen = choose_maps(usable, layer=layer, solver=solver)
    if not chosen and choose_maps(registered, layer=layer, solver=solver):
        raise leak_error(concept, leaky, leak_fix(concept.concept, src.name, tgt.name))
    if not chosen:
        raise NoMapBetween(src.name, tgt.name, layer)
    solvers = ",".join(sorted({m.solver for m in chosen.values()}))
    report = staged(progress, f"transplant {concept.ref} {src.name} -> {tgt.name} ({solvers})")
    if report is not None:
        report(0, len(chosen))
    weights = {}
    for done, (lt, m) in enumerate(chosen.items(), start=1):
        weights[lt] = (catalog.load_map(m.id)[0], m.source_layer)
        if report is not None:
            report(done, len(chosen))
    out = map_layers(catalog.load_vector(source_vector.id), weights, tgt.n_layers, tgt.d_model)
    map_ids = [chosen[lt].id for lt in sorted(chosen)]
    return catalog.save_vector(
        concept,
        tgt,
        out,
        origin="mapped",
        token_position=source_vector.token_position,
        estimator=source_vector.estimator,
        layers=sorted(chosen),
        lineage_key=lineage_key(source_vector.id, map_ids),
        source_vector_id=source_vector.id,
        map_ids=map_ids,
        settings={
            "maps": {str(lt): chosen[lt].id for lt in sorted(chosen)},
            "source_layers": {str(lt): chosen[lt].source_layer for lt in sorted(chosen)},
        },
    )
