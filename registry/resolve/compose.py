"""Composing affine maps along a route S → U → … → T, and measuring a composed map's fit.

Two maps ``y = W1·x + b1`` (S → U) and ``z = W2·y + b2`` (U → T) compose to
``z = (W2·W1)·x + (W2·b1 + b2)``. A concept vector is a difference of states, so only the
weight product acts on it. A chain's held-out R² is estimated as the product of its hops' R²
(each hop keeps that fraction of the variance it is given: a heuristic, marked as such), and
measured exactly when the calibration states of both ends are cached on this machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from crx.registry.catalog.service import Catalog
    from crx.schemas.plan import MapHop


def compose(
    maps: Sequence[tuple[np.ndarray, np.ndarray | None]],
) -> tuple[np.ndarray, np.ndarray]:
    """``[(W1, b1), (W2, b2), ...]`` in route order (source first) → ``(W, b)``, in float64."""
    if not maps:
        raise ValueError("compose needs at least one map")
    weight = np.asarray(maps[0][0], dtype=np.float64)
    first_bias = maps[0][1]
    bias = np.zeros(weight.shape[0]) if first_bias is None else np.asarray(first_bias, np.float64)
    for w_next, b_next in maps[1:]:
        w = np.asarray(w_next, dtype=np.float64)
        if w.shape[1] != weight.shape[0]:
            raise ValueError(f"cannot chain a map of shape {w.shape} after one of {weight.shape}")
        weight = w @ weight
        bias = w @ bias + (0.0 if b_next is None else np.asarray(b_next, np.float64))
    return weight, bias


def estimated_r2(hop_r2: Sequence[float | None]) -> float | None:
    """Product of the hops' held-out R² (None if any hop has none, or any is ≤ 0)."""
    product = 1.0
    for r2 in hop_r2:
        if r2 is None or r2 <= 0:
            return None
        product *= r2
    return product


def load_route(catalog: Catalog, hops: Sequence[MapHop]) -> tuple[np.ndarray, np.ndarray]:
    """The composed ``(W, b)`` of a planned route, refusing maps refitted since planning."""
    from crx.registry.errors import InvalidInput

    loaded = []
    for hop in hops:
        record = catalog.get_map(hop.map_id)
        if record.oid != hop.oid:
            raise InvalidInput(
                f"map {hop.map_id} ({hop.source_model} → {hop.target_model}) was refitted "
                "after the plan was made: run `crx plan` again"
            )
        loaded.append(catalog.load_map(hop.map_id))
    return compose(loaded)


def measured_r2(catalog: Catalog, hops: Sequence[MapHop]) -> float | None:
    """Held-out R² of the composed route on cached calibration states, or None if not cached.

    Uses the corpus and the test split of the last hop's fit, and the states `crx fit` cached
    for the route's two ends (in any load dtype); nothing is loaded or run when they are not
    both on this machine.
    """
    from crx.registry.engine.fit import split_indices
    from crx.registry.workflows.corpus import cached_states_holding

    first, last = catalog.get_map(hops[0].map_id), catalog.get_map(hops[-1].map_id)
    if last.corpus_oid is None:
        return None
    ls, lt = hops[0].source_layer, hops[-1].target_layer
    # in whichever dtype each end's states were captured (`crx fit --dtype`)
    source = cached_states_holding(catalog.get_model(first.source_model), last.corpus_oid, ls)
    target = cached_states_holding(catalog.get_model(last.target_model), last.corpus_oid, lt)
    if source is None or target is None or source.shape[0] != target.shape[0]:
        return None
    settings = last.solver_settings
    _, _, test = split_indices(
        int(source.shape[0]),
        settings.get("split", (0.8, 0.1, 0.1)),
        shuffle=bool(settings.get("shuffle", False)),
        seed=int(settings.get("seed", 0)),
    )
    if len(test) < 2:
        return None
    weight, bias = load_route(catalog, hops)
    x = source.layer(ls)[test].double().numpy()  # one layer of each read, not all of them
    y = target.layer(lt)[test].double().numpy()
    predicted = x @ weight.T + bias
    total = float(((y - y.mean(axis=0)) ** 2).sum())
    return 1.0 - float(((y - predicted) ** 2).sum()) / total if total > 0 else None
