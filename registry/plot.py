"""The paper's figure: emotion accuracy against α for base, transplanted and native vectors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

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
