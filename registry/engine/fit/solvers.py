"""What every solver shares: the solver, λ and precision options, the split states (:class:`Data`)
and the interface a solver implements for one source block (:class:`Source`).

Three solvers: ``"ridge"`` (the default, :mod:`.ridge`), ConTrans' ``"lstsq-svd"``
(:mod:`.lstsq`) and ``"anchored"`` (:mod:`.anchored`: ridge plus paired concept vectors as rows).
Precision applies to the ridge sweep only (the anchored solver's choice of source block runs
one): ``"float32"`` (its default) or ``"float64"``; ``lstsq-svd`` is always float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from crx.registry.engine.fit.checks import LayeredStates
from crx.registry.errors import InvalidInput

SOLVERS: tuple[str, ...] = ("ridge", "lstsq-svd", "anchored")
#: The solvers that run ridge's λ sweep (and so take its precision and λ grid).
RIDGE_SWEEP: tuple[str, ...] = ("ridge", "anchored")
PRECISIONS: tuple[str, ...] = ("float64", "float32")
#: Ridge penalties relative to the mean eigenvalue of the centred training covariance.
DEFAULT_LAMBDAS: tuple[float, ...] = tuple(10.0**k for k in range(-6, 3))


def resolve_precision(solver: str, precision: str | None) -> str:
    """``precision`` checked against ``solver``, or the solver's default when it is None."""
    if precision is None:
        return "float32" if solver in RIDGE_SWEEP else "float64"
    if precision not in PRECISIONS:
        raise InvalidInput(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "float64" and solver not in RIDGE_SWEEP:
        raise InvalidInput(f"precision {precision} applies to the ridge solver only")
    return precision


def resolve_lambdas(lambdas: Sequence[float] | None, solver: str) -> tuple[float, ...]:
    """The λ grid, sorted and without repeats: :data:`DEFAULT_LAMBDAS` when None; ``(0.0,)``
    for a solver without λ."""
    if solver not in RIDGE_SWEEP:
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


class Target:
    """One target block's split states in float64 and the sums every solver needs of them."""

    def __init__(self, ys: torch.Tensor, idx: dict[str, torch.Tensor], work: torch.dtype) -> None:
        self.y = {part: ys[i].to(torch.float64) for part, i in idx.items()}
        self.mean = self.y["train"].mean(0)  # [dt]
        #: training and validation targets centred by the *training* mean
        self.yc = {part: self.y[part] - self.mean for part in ("train", "val")}
        self.yc_work = {part: y.to(work) for part, y in self.yc.items()}
        yv = self.y["val"]
        #: Σ (y − ȳ_val)² over validation rows and dims
        self.sst_val = ((yv - yv.mean(0)) ** 2).sum() if len(yv) else None
        #: Σ (y − ȳ_train)² over the training and the validation rows
        self.ss_centred = {part: (y**2).sum() for part, y in self.yc.items()}


class Data:
    """The split states, read one layer at a time (:class:`~.checks.LayeredStates`).

    A source layer is read when a :class:`Source` is made for it; a target layer when a solver
    asks for it, converted to float64 once (:class:`Target`) and kept until another target
    layer is asked for, so the fit holds one target layer and the sources it has made (a block
    of them, `fitting.source_blocks`), never ``[n, L, d]``.
    ``work`` is the dtype of the per-pair products.
    """

    def __init__(
        self,
        xs: LayeredStates,
        ys: LayeredStates,
        tr: np.ndarray,
        va: np.ndarray,
        te: np.ndarray,
        work: torch.dtype = torch.float64,
    ) -> None:
        self.xs, self.ys, self.work = xs, ys, work
        self.n_src, self.n_tgt = xs.shape[1], ys.shape[1]
        self.ds, self.dt = xs.shape[2], ys.shape[2]
        self.idx = {
            "train": torch.from_numpy(tr),
            "val": torch.from_numpy(va),
            "test": torch.from_numpy(te),
        }
        self.n_train, self.n_val, self.n_test = len(tr), len(va), len(te)
        self._target: tuple[int, Target] | None = None

    def x(self, ls: int) -> dict[str, torch.Tensor]:
        """Source block ``ls``'s rows of each split, float64."""
        layer = self.xs.layer(ls)
        return {part: layer[i].to(torch.float64) for part, i in self.idx.items()}

    def target(self, lt: int) -> Target:
        """Target block ``lt`` (the last one asked for is kept; solvers ask target by target)."""
        if self._target is None or self._target[0] != lt:
            self._target = None  # the previous target's memory is free before the next is made
            self._target = (lt, Target(self.ys.layer(lt), self.idx, self.work))
        return self._target[1]


class Source:
    """What one source block offers every target block: scores, solutions, predictions."""

    def __init__(self, data: Data, ls: int) -> None:
        self.data, self.ls = data, ls
        self.x_part = data.x(ls)

    def validation_scores(
        self, targets: list[int], grid: tuple[float, ...], keep: bool = True
    ) -> np.ndarray:
        """Validation R², ``[len(targets), len(grid)]``; ``keep``: keep what `solve` can reuse
        (False when only the scores are wanted: less memory)."""
        raise NotImplementedError

    def solve(
        self, lt: int, lam: float
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
        """``(Wᵀ [ds, dt], b [dt] or None, settings)``."""
        raise NotImplementedError

    def train_r2(self, lt: int, lam: float) -> float:
        raise NotImplementedError

    def forget(self, lt: int) -> None:
        """Drop what was kept for target block ``lt`` (it is not asked for again)."""

    def predict(
        self, wt: torch.Tensor, bias: torch.Tensor | None, lt: int, part: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self.x_part[part] @ wt
        if bias is not None:
            pred = pred + bias
        return self.data.target(lt).y[part], pred
