"""The paper's figure: emotion accuracy against α for base, transplanted and native vectors;
and the held-out R² of a model pair's maps as a heat-map (`crx serve`'s maps page)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from crx.registry.errors import InvalidInput

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
    import matplotlib.pyplot as plt

    fig = alpha_figure(
        series, base=base, metric=metric, title=title, alphas=alphas, normalize=normalize
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def r2_heatmap_figure(
    r2: dict[tuple[int, int], float | None],
    *,
    source_layers: int,
    target_layers: int,
    title: str,
) -> Figure:
    """Held-out R² of each fitted map, source layer (rows) × target layer (columns); a pair
    without a map (or without an R²) is left blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.full((source_layers, target_layers), np.nan)
    for (source, target), value in r2.items():
        if value is not None and 0 <= source < source_layers and 0 <= target < target_layers:
            grid[source, target] = value
    width = min(12.0, 3 + 0.35 * target_layers)
    height = min(12.0, 2.5 + 0.3 * source_layers)
    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    # R² is at most 1; a bad fit can be far below 0, so the scale stops at -1.
    image = ax.imshow(grid, cmap="viridis", vmin=-1.0, vmax=1.0, origin="lower", aspect="auto")
    ax.set_xlabel("target layer")
    ax.set_ylabel("source layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="held-out R²")
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
