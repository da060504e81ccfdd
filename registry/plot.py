"""Figures: accuracy against α (the paper's figure; ``crx evaluate --plot``, ``crx demo``) and
the held-out R² of the maps over source × target layers (``crx show maps --plot``).

Each figure has a function that draws plain data (`alpha_figure`, `map_r2_figure`) and one that
builds that data from recorded rows (`evaluation_series`, `map_r2_grid`), so the web catalogue
can draw the same pictures and a test can check that what is drawn is what was recorded.
matplotlib is imported only when a figure is drawn; `rendered` gives a figure as PNG or SVG
bytes (``crx serve``'s images), one figure at a time.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crx.registry.errors import InvalidInput
from crx.schemas.records import EvaluationRecord, MapRecord

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def alpha_label(normalize: bool) -> str:
    """The α axis label: ``α (× residual norm)`` or ``α (absolute)``."""
    return "α (× residual norm)" if normalize else "α (absolute)"


def alpha_figure(
    series: dict[str, dict[float, float]],
    *,
    base: float | None,
    metric: str,
    title: str,
    alphas: Sequence[float] | None = None,
    normalize: bool = True,
) -> Figure:
    """One line per series (α → accuracy), the base model as a dashed line.

    The α axis says which α it is: ``normalize`` (crx's default) is α × the layer's mean
    residual norm, else absolute."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, points in series.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=label)
    if base is not None:
        ax.axhline(base, linestyle="--", color="grey", label="base (no vector)")
    if alphas:
        ax.set_xticks(list(alphas))
    ax.set_xlabel(alpha_label(normalize))
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def accuracy_vs_alpha(
    series: dict[str, dict[float, float]],
    *,
    base: float | None,
    metric: str,
    title: str,
    out: str | Path,
    alphas: Sequence[float] | None = None,
    normalize: bool = True,
) -> Path:
    """`alpha_figure`, written to ``out`` as a PNG."""
    fig = alpha_figure(
        series, base=base, metric=metric, title=title, alphas=alphas, normalize=normalize
    )
    return save_png(fig, out)


def save_png(fig: Figure, out: str | Path) -> Path:
    """Write ``fig`` to ``out`` as a PNG (its folder created) and free it."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out


# -- evaluations: α against a metric, one line per (vector, layer) ---------------------------


def evaluation_series(
    records: Sequence[EvaluationRecord],
    metric: str,
    *,
    normalize: bool,
    labels: dict[int, str] | None = None,
) -> tuple[dict[str, dict[float, float]], float | None]:
    """``(series, base)`` for `alpha_figure` from evaluation rows of one model and dataset.

    One series per (vector, steered layer): α → ``metric``, of the rows whose α is relative
    (``normalize``) or absolute as asked; where α was evaluated more than once, the newest row
    counts. ``base`` is the newest bare-model row's value (None without one). ``labels`` names
    the vectors (default ``vector ID``)."""
    newest: dict[tuple[int, int | None, float], EvaluationRecord] = {}
    base: EvaluationRecord | None = None
    for r in sorted(records, key=lambda r: r.id):
        if r.metric != metric:
            continue
        if r.vector_id is None:
            base = r
        elif r.alpha is not None and bool(r.settings.get("normalize")) == normalize:
            layer = r.layers[0] if r.layers else None
            newest[(r.vector_id, layer, float(r.alpha))] = r
    series: dict[str, dict[float, float]] = {}
    for (vector_id, layer, alpha), r in sorted(newest.items(), key=lambda kv: kv[0][:2]):
        name = (labels or {}).get(vector_id, f"vector {vector_id}")
        label = name if layer is None else f"{name}, layer {layer}"
        series.setdefault(label, {})[alpha] = r.value
    return series, None if base is None else base.value


# -- maps: held-out R² over source × target layers ---------------------------------------------


@dataclass
class R2Grid:
    """Held-out R² per (source layer, target layer) of one fit, and the pairs it chose."""

    matrix: list[list[float]]  # [source layer][target layer]; NaN where nothing was measured
    chosen: list[tuple[int, int]] = field(default_factory=list)  # (source, target) pairs
    split: str = "test"  # which held-out split the values are R² on: "validation" or "test"


def _r2(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def map_r2_grid(maps: Sequence[MapRecord], n_source: int, n_target: int) -> R2Grid:
    """The R² grid of one fit's maps (same solver, corpus and layer-pair choice).

    An ``auto`` fit measured every source layer for each target on the validation split
    (``solver_settings.auto_val_r2``) and kept the best: the grid is that validation R², and the
    kept maps are the chosen pairs. Otherwise (``all`` or explicit pairs) each map is one cell,
    its test R², and the chosen pair of a target layer is its best source layer."""
    matrix = [[math.nan] * n_target for _ in range(n_source)]
    swept = [m for m in maps if isinstance(m.solver_settings.get("auto_val_r2"), list)]
    if swept:
        for m in swept:
            for source, value in enumerate(m.solver_settings["auto_val_r2"][:n_source]):
                matrix[source][m.target_layer] = _r2(value)
        chosen = sorted({(m.source_layer, m.target_layer) for m in swept})
        return R2Grid(matrix, chosen, "validation")
    best: dict[int, tuple[float, int]] = {}
    for m in maps:
        value = _r2(m.r2)
        matrix[m.source_layer][m.target_layer] = value
        if not math.isnan(value) and value > best.get(m.target_layer, (-math.inf, 0))[0]:
            best[m.target_layer] = (value, m.source_layer)
    return R2Grid(matrix, sorted((s, t) for t, (_, s) in best.items()), "test")


def map_r2_figure(
    grid: R2Grid | Sequence[Sequence[float]],
    *,
    source: str,
    target: str,
    title: str,
    chosen: Sequence[tuple[int, int]] | None = None,
    split: str | None = None,
) -> Figure:
    """A heat-map of R² over source layers (x) × target layers (y), the chosen pairs circled.

    ``grid`` is an `R2Grid` or a plain ``[source][target]`` matrix (NaN: not measured, drawn
    blank); ``chosen`` and ``split`` override the grid's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if isinstance(grid, R2Grid):
        matrix, chosen, split = grid.matrix, grid.chosen if chosen is None else chosen, split
        split = split or grid.split
    else:
        matrix = [list(row) for row in grid]
    values = np.asarray(matrix, dtype=float).T  # rows: target layers, columns: source layers
    n_target, n_source = values.shape
    fig, ax = plt.subplots(figsize=(6.4, 5.2), dpi=120)
    finite = values[np.isfinite(values)]
    low = min(0.0, float(finite.min())) if finite.size else 0.0
    image = ax.imshow(
        np.ma.masked_invalid(values),
        origin="lower",
        aspect="auto",
        cmap="viridis",
        vmin=low,
        vmax=1.0,
        interpolation="nearest",
    )
    colorbar = fig.colorbar(image, ax=ax)
    colorbar.set_label(f"held-out R² ({split or 'held-out'} split)")
    if chosen:
        ax.scatter(
            [s for s, _ in chosen],
            [t for _, t in chosen],
            s=28,
            facecolors="none",
            edgecolors="red",
            linewidths=1.2,
            label=f"chosen pairs ({len(chosen)})",
        )
        # Below the axes: inside, it would hide cells.
        ax.legend(loc="upper right", bbox_to_anchor=(1.0, -0.1), fontsize=8, frameon=False)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"source layer ({source}, {n_source} blocks)")
    ax.set_ylabel(f"target layer ({target}, {n_target} blocks)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


# pyplot keeps global state: a server drawing in several threads draws one figure at a time.
_PYPLOT = threading.Lock()


def rendered(make: Callable[[], Figure], fmt: str = "png") -> bytes:
    """The figure ``make`` draws, as ``png`` or ``svg`` bytes (the figure is closed)."""
    import io

    import matplotlib.pyplot as plt

    if fmt not in ("png", "svg"):
        raise InvalidInput(f"unknown image format {fmt!r} (png or svg)")
    out = io.BytesIO()
    with _PYPLOT:
        fig = make()
        try:
            fig.savefig(out, format=fmt)
        finally:
            plt.close(fig)
    return out.getvalue()
