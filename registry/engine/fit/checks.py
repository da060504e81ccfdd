"""Argument checks shared by the fit's modules: integers, and the arrays callers pass in.

Each turns a caller's value into a checked one or raises :class:`~registry.errors.InvalidInput`
(:class:`~registry.errors.TensorShapeError` for a wrong shape), with a message naming ``what``.
"""

from __future__ import annotations

import numpy as np
import torch

from crx.registry.errors import InvalidInput, TensorShapeError


def as_states(a: object, what: str) -> torch.Tensor:
    """Residual states ``[n_texts, n_layers, d_model]`` (numpy or torch) as a CPU tensor."""
    if isinstance(a, torch.Tensor):
        t = a.detach().cpu()
    else:
        arr = np.asarray(a)
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
        ):
            raise InvalidInput(f"{what} must be a real-valued array, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex() or t.dtype == torch.bool:
        raise InvalidInput(f"{what} must be a real-valued array, got dtype {t.dtype}")
    if t.ndim != 3 or min(t.shape) == 0:
        raise TensorShapeError(what, tuple(t.shape), "[n_texts, n_layers, d_model], none empty")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise InvalidInput(f"{what} contains NaN or infinite values")
    return t


def to_numpy(a: object, what: str) -> np.ndarray:
    """A real-valued numpy array or torch tensor as a numpy array, any shape."""
    arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidInput(f"{what} must be a real-valued array, got dtype {arr.dtype}")
    return arr


def check_int(value: object, what: str, *, minimum: int) -> None:
    """``value`` is an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidInput(f"{what} must be an integer, got {value!r}")
    if value < minimum:
        raise InvalidInput(f"{what} must be at least {minimum}, got {value}")
