"""What a fit returns and how it is used: :class:`FittedMap` and :func:`map_vector`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from crx.registry.engine.fit.checks import to_numpy
from crx.registry.errors import TensorShapeError


@dataclass(frozen=True)
class FittedMap:
    """``target ≈ weight · source + bias`` at one (source block, target block) pair.

    ``r2``, ``mse`` and ``cosine`` are on the held-out test split; ``r2_train`` and ``r2_val``
    on the train and validation splits (NaN where a split is empty). ``settings`` records how the
    map was made (solver, λ and its grid, centring, split, seed, definitions ...) and is
    JSON-serialisable.
    """

    source_layer: int
    target_layer: int
    weight: np.ndarray  # [dt, ds] float32
    bias: np.ndarray | None  # [dt] float32; None for lstsq-svd
    r2: float
    mse: float
    cosine: float
    r2_train: float
    r2_val: float
    n_train: int
    n_val: int
    n_test: int
    settings: dict[str, Any]


def map_vector(weight: np.ndarray | torch.Tensor, v: np.ndarray | torch.Tensor) -> np.ndarray:
    """Map a source-space vector (or a stack ``[k, ds]``) to the target: ``v_t = W · v_s``.

    The bias is left out on purpose: a concept vector is a difference of two activations, and
    ``(W·a + b) − (W·c + b) = W·(a − c)``. Computed in float64, returned in the inputs' common
    float dtype (float32 for float32 inputs).
    """
    w = to_numpy(weight, "the map weight")
    x = to_numpy(v, "the vector")
    if w.ndim != 2:
        raise TensorShapeError("the map weight", tuple(w.shape), "[d_target, d_source]")
    if x.ndim not in (1, 2) or x.shape[-1] != w.shape[1]:
        raise TensorShapeError("the vector", tuple(x.shape), f"[{w.shape[1]}] or [k, {w.shape[1]}]")
    out_dtype = np.result_type(w.dtype, x.dtype)
    if not np.issubdtype(out_dtype, np.floating):
        out_dtype = np.dtype(np.float64)
    w64, x64 = w.astype(np.float64), x.astype(np.float64)
    out = w64 @ x64 if x.ndim == 1 else x64 @ w64.T
    return out.astype(out_dtype)
