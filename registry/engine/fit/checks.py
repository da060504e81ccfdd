"""Argument checks shared by the fit's modules: integers, and the states callers pass in.

Each turns a caller's value into a checked one or raises :class:`~registry.errors.InvalidInput`
(:class:`~registry.errors.TensorShapeError` for a wrong shape), with a message naming ``what``.

States are read one layer at a time (:class:`LayeredStates`): a whole ``[n, L, d]`` array is
one kind of them, per-layer shards on disk another, so a fit holds one layer, not all of them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from crx.registry.errors import InvalidInput, TensorShapeError


@runtime_checkable
class LayeredStates(Protocol):
    """Residual states ``[n_texts, n_layers, d_model]`` that hand out one layer at a time."""

    @property
    def shape(self) -> tuple[int, int, int]: ...

    def layer(self, index: int) -> torch.Tensor:
        """Block ``index``'s states, ``[n_texts, d_model]``, a float CPU tensor."""
        ...


class TensorStates:
    """A whole ``[n, L, d]`` tensor as :class:`LayeredStates` (a layer is a view)."""

    def __init__(self, states: torch.Tensor) -> None:
        self.states = states

    @property
    def shape(self) -> tuple[int, int, int]:
        n, layers, d = self.states.shape
        return int(n), int(layers), int(d)

    def layer(self, index: int) -> torch.Tensor:
        return self.states[:, index]


class _CheckedLayers:
    """Lazy states checked as each layer is read: finite values of the announced shape."""

    def __init__(self, states: LayeredStates, what: str) -> None:
        self.states, self.what = states, what
        self.shape = states.shape

    def layer(self, index: int) -> torch.Tensor:
        t = self.states.layer(index)
        expected = (self.shape[0], self.shape[2])
        if tuple(t.shape) != expected:
            raise TensorShapeError(f"{self.what} at layer {index}", tuple(t.shape), str(expected))
        if not bool(torch.isfinite(t).all()):
            raise InvalidInput(f"{self.what} contains NaN or infinite values (layer {index})")
        return t


def as_states(a: object, what: str) -> LayeredStates:
    """Residual states ``[n_texts, n_layers, d_model]`` (numpy, torch or
    :class:`LayeredStates`), checked, as :class:`LayeredStates` on the CPU."""
    if isinstance(a, LayeredStates) and not isinstance(a, torch.Tensor | np.ndarray):
        shape = tuple(a.shape)
        if len(shape) != 3 or min(shape) == 0:
            raise TensorShapeError(what, shape, "[n_texts, n_layers, d_model], none empty")
        return _CheckedLayers(a, what)
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
    return TensorStates(t)


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
