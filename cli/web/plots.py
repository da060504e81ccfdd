"""The catalogue's images: a vector's metric against α from its recorded evaluations, and a
model pair's held-out R² over source × target layers from its fitted maps.

The data comes from the facade's lists; the drawing is the library's (`Registry.alpha_plot`,
`Registry.maps_image`, the figure ``crx demo`` draws), as PNG or SVG.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fastapi.responses import Response

from crx.registry.errors import InvalidInput

if TYPE_CHECKING:
    from crx.registry import Registry
    from crx.schemas.records import EvaluationRecord, MapRecord

MEDIA = {"png": "image/png", "svg": "image/svg+xml"}
#: The metric a task is judged by, as the planner reads it (others are drawn too).
PRIMARY = ("token_accuracy", "mc2")


def image(content: bytes, fmt: str) -> Response:
    # The images change with the registry: a browser asks again each time.
    return Response(content, media_type=MEDIA[fmt], headers={"Cache-Control": "no-cache"})


def _format(fmt: str) -> str:
    if fmt not in MEDIA:
        raise InvalidInput(f"unknown image format {fmt!r} (png or svg)")
    return fmt


def evaluations_of(reg: Registry, vector_id: int, model: str) -> list[EvaluationRecord]:
    """The vector's evaluations on ``model``, in the order recorded."""
    return reg.list_evaluations(model=model, vector_id=vector_id, limit=None).items


def bare_model_rows(
    reg: Registry, model: str, by_vector: dict[int, list[EvaluationRecord]]
) -> list[EvaluationRecord]:
    """The bare model's evaluations on ``model`` for the tasks the vectors were evaluated on."""
    tasks = sorted({e.task for rows in by_vector.values() for e in rows})
    return [
        e
        for task in tasks
        for e in reg.list_evaluations(model=model, task=task, limit=None).items
        if e.vector_id is None
    ]


def _primary(metrics: Sequence[str]) -> str:
    return next((m for m in PRIMARY if m in metrics), sorted(metrics)[0])


def alpha_image(reg: Registry, vector_id: int, fmt: str) -> bytes:
    """One line per task/metric (α → value, the latest row at each α) for the vector on its
    model; the dashed line is the bare model on the primary metric's task and data."""
    _format(fmt)
    vector = reg.get_vector(vector_id)
    rows = [e for e in evaluations_of(reg, vector_id, vector.model) if e.alpha is not None]
    series: dict[str, dict[float, float]] = defaultdict(dict)
    for e in rows:
        series[f"{e.task}/{e.metric}"][float(e.alpha or 0.0)] = e.value
    base = None
    metric = "value"
    normalize = True
    if rows:
        metric = _primary([e.metric for e in rows])
        chosen = [e for e in rows if e.metric == metric]
        # Rows recorded without settings.normalize measured α as absolute (see README).
        normalize = bool(chosen[-1].settings.get("normalize", False))
        task, dataset = chosen[-1].task, chosen[-1].dataset_oid
        bare = [
            e
            for e in bare_model_rows(reg, vector.model, {vector_id: chosen})
            if e.metric == metric and e.task == task and e.dataset_oid == dataset
        ]
        base = bare[-1].value if bare else None
    title = (
        f"vector {vector.id}: {vector.concept}@{vector.concept_version} on {vector.model} "
        f"({vector.origin})"
    )
    return reg.alpha_plot(
        dict(series), base=base, metric=metric, title=title, normalize=normalize, fmt=fmt
    )


def latest_maps(maps: Sequence[MapRecord]) -> dict[tuple[int, int], MapRecord]:
    """The newest map of each (source layer, target layer) pair."""
    out: dict[tuple[int, int], MapRecord] = {}
    for m in sorted(maps, key=lambda m: m.id):
        out[(m.source_layer, m.target_layer)] = m
    return out


def maps_image(
    reg: Registry, source: str, target: str, fmt: str, map_id: int | None = None
) -> bytes:
    """The heat-map ``crx show maps --plot`` draws (the newest fit, or map ``map_id``'s fit;
    chosen pairs circled)."""
    return reg.maps_image(source, target, _format(fmt), map_id=map_id)
