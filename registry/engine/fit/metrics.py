"""How a map is scored: R², MSE and cosine, their definitions, and the SSE/SST they share.

All summed in float64 (:data:`R2_DEFINITION`, :data:`COSINE_DEFINITION`):
R² = 1 − Σ_ij (y_ij − ŷ_ij)² / Σ_ij (y_ij − ȳ_j)², summed over the split's rows i and all output
dimensions j, with ȳ_j the mean *of that split* (so it is the fraction of the split's total
variance explained, and a map that only predicts the split's mean scores 0); ``mse`` = mean of
(y − ŷ)² over rows and dimensions; ``cosine`` = mean over rows of cos(ŷ_i − ȳ_train, y_i − ȳ_train).
An R² whose split has no variance (or no rows) is NaN.
"""

from __future__ import annotations

import numpy as np
import torch

R2_DEFINITION = (
    "1 - sum_ij (y_ij - yhat_ij)^2 / sum_ij (y_ij - mean_i y_ij)^2 over the split's rows i and "
    "all output dims j; the mean is the split's own"
)
COSINE_DEFINITION = "mean_i cos(yhat_i - mean_train(y), y_i - mean_train(y))"


def r2_value(sse: float, sst: float) -> float:
    """``1 − sse/sst``, NaN where ``sst`` is not positive."""
    return 1.0 - sse / sst if sst > 0.0 else float("nan")


def r2_from(sse: torch.Tensor, sst: torch.Tensor) -> np.ndarray:
    """:func:`r2_value` elementwise, for tensors of SSE and SST of the same shape."""
    sse_np, sst_np = sse.numpy(), np.asarray(sst.numpy(), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sst_np > 0.0, 1.0 - sse_np / sst_np, np.nan)


def _sse(y: torch.Tensor, pred: torch.Tensor) -> float:
    return float(torch.sub(y, pred).square_().sum())


def _sst(y: torch.Tensor) -> float:
    return float(torch.sub(y, y.mean(0)).square_().sum())


def r2(y: torch.Tensor, pred: torch.Tensor) -> float:
    """R² of ``pred`` against ``y`` (NaN for no rows)."""
    return r2_value(_sse(y, pred), _sst(y)) if y.shape[0] else float("nan")


def held_out_metrics(
    y: torch.Tensor, pred: torch.Tensor, centre: torch.Tensor
) -> tuple[float, float, float]:
    """R², MSE and cosine (module docstring) of ``pred`` against ``y``, one residual for all."""
    if y.shape[0] == 0:
        return float("nan"), float("nan"), float("nan")
    sse = _sse(y, pred)
    a, b = pred - centre, y - centre
    norms = (a.norm(dim=1) * b.norm(dim=1)).clamp(min=torch.finfo(torch.float64).tiny)
    cosine = float(((a * b).sum(1) / norms).mean())
    return r2_value(sse, _sst(y)), sse / y.numel(), cosine
