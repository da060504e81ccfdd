"""What every solver shares: the solver, λ and precision options, the split states (:class:`Data`)
and the interface a solver implements for one source block (:class:`Source`).

Two solvers: ``"ridge"`` (the default, :mod:`.ridge`) and ConTrans' ``"lstsq-svd"``
(:mod:`.lstsq`). Precision applies to the ridge sweep only: ``"float32"`` (its default) or
``"float64"``; ``lstsq-svd`` is always float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from crx.registry.errors import InvalidInput

SOLVERS: tuple[str, ...] = ("ridge", "lstsq-svd")
PRECISIONS: tuple[str, ...] = ("float64", "float32")
#: Ridge penalties relative to the mean eigenvalue of the centred training covariance.
DEFAULT_LAMBDAS: tuple[float, ...] = tuple(10.0**k for k in range(-6, 3))


def resolve_precision(solver: str, precision: str | None) -> str:
    """``precision`` checked against ``solver``, or the solver's default when it is None."""
    if precision is None:
        return "float32" if solver == "ridge" else "float64"
    if precision not in PRECISIONS:
        raise InvalidInput(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "float64" and solver != "ridge":
        raise InvalidInput(f"precision {precision} applies to the ridge solver only")
    return precision


def resolve_lambdas(lambdas: Sequence[float] | None, solver: str) -> tuple[float, ...]:
    """The λ grid, sorted and without repeats: :data:`DEFAULT_LAMBDAS` when None; ``(0.0,)``
    for a solver without λ."""
    if solver != "ridge":
        if lambdas is not None:
            raise InvalidInput(f"lambdas apply to the ridge solver only, not to {solver!r}")
        return (0.0,)
    if lambdas is None:
        return DEFAULT_LAMBDAS
    try:
        values = [float(x) for x in lambdas]
    except (TypeError, ValueError):
        raise InvalidInput(f"lambdas must be positive numbers, got {lambdas!r}") from None
    if not values or not all(np.isfinite(x) and x > 0.0 for x in values):
        raise InvalidInput(f"lambdas must be a non-empty list of positive numbers, got {values}")
    return tuple(sorted(set(values)))


class Data:
    """The split states; targets converted to float64 once and kept as ``[n, Lt, dt]``.

    ``work`` is the dtype of the per-pair products; ``yc_work`` holds the centred targets in it.
    """

    def __init__(
        self,
        xs: torch.Tensor,
        ys: torch.Tensor,
        tr: np.ndarray,
        va: np.ndarray,
        te: np.ndarray,
        work: torch.dtype = torch.float64,
    ) -> None:
        self.xs, self.work = xs, work
        self.n_src, self.n_tgt, self.dt = xs.shape[1], ys.shape[1], ys.shape[2]
        self.idx = {
            "train": torch.from_numpy(tr),
            "val": torch.from_numpy(va),
            "test": torch.from_numpy(te),
        }
        self.n_train, self.n_val, self.n_test = len(tr), len(va), len(te)
        self.y = {part: ys[i].to(torch.float64) for part, i in self.idx.items()}
        self.y_mean = self.y["train"].mean(0)  # [Lt, dt]
        #: training and validation targets centred by the *training* mean
        self.yc = {part: self.y[part] - self.y_mean for part in ("train", "val")}
        self.yc_work = {part: y.to(work) for part, y in self.yc.items()}
        yv = self.y["val"]
        #: per target layer, Σ (y − ȳ_val)² over validation rows and dims
        self.sst_val = ((yv - yv.mean(0)) ** 2).sum(dim=(0, 2)) if self.n_val else None
        #: per target layer, Σ (y − ȳ_train)² over the training and the validation rows
        self.ss_centred = {part: (self.yc[part] ** 2).sum(dim=(0, 2)) for part in self.yc}

    def x(self, ls: int, part: str) -> torch.Tensor:
        return self.xs[self.idx[part], ls].to(torch.float64)

    def y_cols(self, part: str, targets: list[int], centred: bool) -> torch.Tensor:
        """``[n, len(targets)·dt]``; a view when ``targets`` is every layer in order."""
        y = self.yc[part] if centred else self.y[part]
        if targets != list(range(self.n_tgt)):
            y = y[:, targets]
        return y.reshape(y.shape[0], -1)


class Source:
    """What one source block offers every target block: scores, solutions, predictions."""

    def __init__(self, data: Data, ls: int) -> None:
        self.data, self.ls = data, ls
        self.x_part = {part: data.x(ls, part) for part in ("train", "val", "test")}

    def validation_scores(self, targets: list[int], grid: tuple[float, ...]) -> np.ndarray:
        """Validation R², ``[len(targets), len(grid)]``."""
        raise NotImplementedError

    def solve(
        self, lt: int, lam: float
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
        """``(Wᵀ [ds, dt], b [dt] or None, settings)``."""
        raise NotImplementedError

    def train_r2(self, lt: int, lam: float) -> float:
        raise NotImplementedError

    def predict(
        self, wt: torch.Tensor, bias: torch.Tensor | None, lt: int, part: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self.x_part[part] @ wt
        if bias is not None:
            pred = pred + bias
        return self.data.y[part][:, lt], pred
