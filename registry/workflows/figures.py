"""The figures of ``crx evaluate --plot`` and ``crx show maps --plot``, from recorded rows.

What is drawn is read back from the catalogue (not the numbers a run kept in memory), so a
figure shows every vector evaluated on the same model and dataset, earlier runs included. The
drawing itself is `crx.registry.plot`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crx.registry import plot
from crx.registry.catalog.service import Catalog
from crx.registry.errors import InvalidInput
from crx.registry.outputs import atomic_output
from crx.registry.resolve.alpha import primary_metric
from crx.schemas.records import EvaluationRecord, MapRecord, ModelRecord

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def check_png(out: str | Path) -> Path:
    """``out`` as a path a figure may be written to: a ``.png`` in a folder that exists."""
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise InvalidInput(f"a plot is a PNG file: {out} does not end in .png")
    if not path.parent.is_dir():
        raise InvalidInput(f"folder {path.parent} does not exist")
    return path


def _write(fig: object, out: Path) -> Path:
    # A .png named on the command line is replaced by the newer figure (rerunning is the
    # point); anything that is not a regular file is refused (`atomic_output`).
    with atomic_output(out, force=True) as temp:
        plot.save_png(fig, temp)  # type: ignore[arg-type]
    return out


def _vector_label(catalog: Catalog, vector_id: int) -> tuple[str, str]:
    """(concept name, legend label) of a vector: where it came from, in a few words."""
    v = catalog.get_vector(vector_id)
    if v.origin == "mapped" and v.source_vector_id is not None:
        source = catalog.get_vector(v.source_vector_id)
        return v.concept, f"vector {v.id}: transplanted from {source.model}"
    return v.concept, f"vector {v.id}: {'native' if v.origin == 'extracted' else v.origin}"


def _dataset_text(record: EvaluationRecord) -> str:
    s = record.settings
    if record.task == "emotion":
        return f"{s.get('emotion', '?')} held-out scenarios (n={record.n})"
    oid = (record.dataset_oid or "?")[:12]
    return f"TruthfulQA {oid} (n={record.n}{', primer' if s.get('primer') else ''})"


@dataclass
class EvaluationFigure:
    """What `evaluation_plot` draws, read back from the recorded rows."""

    series: dict[str, dict[float, float]]  # legend label -> α -> metric value
    base: float | None
    metric: str
    normalize: bool
    title: str


def evaluation_data(catalog: Catalog, records: Sequence[EvaluationRecord]) -> EvaluationFigure:
    """The series of every vector of the same concept evaluated on the model and dataset of
    ``records`` (what one `evaluate` returned), in the α mode they were evaluated in."""
    if not records:
        raise InvalidInput("nothing was evaluated: no plot to draw")
    first = next((r for r in records if r.vector_id is not None), records[0])
    normalize = bool(first.settings.get("normalize", True))
    recorded = [
        r
        for r in catalog.list_evaluations(model=first.model, task=first.task, limit=0).items
        if r.dataset_oid == first.dataset_oid
    ]
    labels: dict[int, str] = {}
    concept = None if first.vector_id is None else _vector_label(catalog, first.vector_id)[0]
    for vector_id in sorted({r.vector_id for r in recorded if r.vector_id is not None}):
        name, label = _vector_label(catalog, vector_id)
        if concept is None or name == concept:
            labels[vector_id] = label
    shown = [r for r in recorded if r.vector_id is None or r.vector_id in labels]
    metric = primary_metric(first.task, [r.metric for r in shown])
    series, base = plot.evaluation_series(shown, metric, normalize=normalize, labels=labels)
    title = f"{concept or 'base model'} on {first.model}: {first.task}, {_dataset_text(first)}"
    return EvaluationFigure(series, base, metric, normalize, title)


def evaluation_plot(catalog: Catalog, records: Sequence[EvaluationRecord], out: str | Path) -> Path:
    """`evaluation_data` drawn by `crx.registry.plot.alpha_figure` into ``out`` (a PNG)."""
    path = check_png(out)
    data = evaluation_data(catalog, records)
    fig = plot.alpha_figure(
        data.series,
        base=data.base,
        metric=data.metric.replace("_", " "),
        title=data.title,
        alphas=sorted({a for points in data.series.values() for a in points}),
        normalize=data.normalize,
    )
    return _write(fig, path)


def _recipe(m: MapRecord) -> tuple[str, str | None, object, object]:
    # One fit: one solver, corpus, layer-pair choice and dtype.
    s = m.solver_settings
    return (m.solver, m.corpus_oid, s.get("pairs"), s.get("dtype"))


def fits(maps: Sequence[MapRecord]) -> list[list[MapRecord]]:
    """``maps`` grouped by fit, the newest fit first."""
    groups: dict[tuple[str, str | None, object, object], list[MapRecord]] = {}
    for m in sorted(maps, key=lambda m: m.id, reverse=True):
        groups.setdefault(_recipe(m), []).append(m)
    return list(groups.values())


def newest_fit(maps: Sequence[MapRecord], map_id: int | None = None) -> list[MapRecord]:
    """The maps of the newest fit among ``maps``, or of the fit map ``map_id`` belongs to."""
    for fit in fits(maps):
        if map_id is None or any(m.id == map_id for m in fit):
            return fit
    return []


def _fit_grid(
    catalog: Catalog, source: str, target: str, map_id: int | None = None
) -> tuple[ModelRecord, ModelRecord, list[MapRecord], plot.R2Grid]:
    src, tgt = catalog.get_model(source), catalog.get_model(target)
    maps = catalog.list_maps(source=src.name, target=tgt.name, limit=0).items
    fit = newest_fit(maps, map_id)
    if not fit:
        which = f"map {map_id}" if map_id is not None else "maps"
        raise InvalidInput(f"no {which} from {src.name} to {tgt.name} (see `crx fit`)")
    return src, tgt, fit, plot.map_r2_grid(fit, src.n_layers, tgt.n_layers)


def map_grid(catalog: Catalog, source: str, target: str) -> dict[str, Any]:
    """The newest fit source → target as ``crx show maps`` prints it: its recipe, the R² grid
    (``[source layer][target layer]``, None where not measured) and the chosen pairs."""
    src, tgt, fit, grid = _fit_grid(catalog, source, target)
    m = fit[0]
    by_pair = {(x.source_layer, x.target_layer): x for x in fit}
    return {
        "source": src.name,
        "target": tgt.name,
        "solver": m.solver,
        "pairs": m.solver_settings.get("pairs"),
        "corpus_oid": m.corpus_oid,
        "n_maps": len(fit),
        "split": grid.split,
        "chosen": [
            {
                "source_layer": s,
                "target_layer": t,
                "r2": grid.matrix[s][t] if math.isfinite(grid.matrix[s][t]) else None,
                "map_id": by_pair[(s, t)].id if (s, t) in by_pair else None,
                "test_r2": by_pair[(s, t)].r2 if (s, t) in by_pair else None,
            }
            for s, t in grid.chosen
        ],
        "matrix": [[v if math.isfinite(v) else None for v in row] for row in grid.matrix],
    }


def maps_figure(catalog: Catalog, source: str, target: str, map_id: int | None = None) -> Figure:
    """The held-out R² heat-map of the newest fit source → target (or of map ``map_id``'s
    fit), its chosen pairs marked (``crx show maps --plot`` and ``crx serve``'s maps page)."""
    src, tgt, fit, grid = _fit_grid(catalog, source, target, map_id)
    m = fit[0]
    corpus = (m.corpus_oid or "?")[:12]
    title = (
        f"{src.name} → {tgt.name}: {m.solver} maps, pairs={m.solver_settings.get('pairs', '?')}"
        f"\ncorpus {corpus}, R² on the {grid.split} split (circled: chosen pairs)"
    )
    return plot.map_r2_figure(grid, source=src.name, target=tgt.name, title=title)


def maps_plot(catalog: Catalog, source: str, target: str, out: str | Path) -> Path:
    """`maps_figure` as a PNG file."""
    path = check_png(out)
    return _write(maps_figure(catalog, source, target), path)
