"""How the N paired rows are split into train / validation / test (:func:`split_indices`).

By default 80/10/10 in file order, as ConTrans does. The fit uses train only, the choice of λ and
of the source layer (``"auto"``) uses validation only, and the reported ``r2``/``mse``/``cosine``
use test only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from crx.registry.engine.fit.checks import check_int
from crx.registry.errors import InvalidInput

DEFAULT_SPLIT: tuple[float, float, float] = (0.8, 0.1, 0.1)


def split_indices(
    n: int,
    fractions: Sequence[float] = DEFAULT_SPLIT,
    *,
    shuffle: bool = False,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of the train, validation and test splits of ``n`` rows.

    The training split takes ``round(n·f_train)`` rows, the test split ``round(n·f_test)``
    (halves round up; a zero fraction gives an empty split) and validation the rest. Without
    ``shuffle`` the splits are consecutive runs in file order, as ConTrans does (2,000 rows →
    1,600/200/200); with it, rows are permuted by ``numpy.random.default_rng(seed)`` first and
    each split is returned sorted.
    """
    check_int(n, "the number of rows", minimum=0)
    f_train, _, f_test = check_fractions(fractions)
    cut1 = min(n, int(np.floor(n * f_train + 0.5)))
    cut2 = max(cut1, n - int(np.floor(n * f_test + 0.5)))
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    parts = (order[:cut1], order[cut1:cut2], order[cut2:])
    return tuple(np.sort(p).astype(np.int64) for p in parts)  # type: ignore[return-value]


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three non-negative fractions summing to 1 (within 1e-6), the first non-zero."""
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise InvalidInput(f"split must be three fractions, got {fractions!r}") from None
    if len(values) != 3 or not all(np.isfinite(f) and f >= 0.0 for f in values):
        raise InvalidInput(f"split must be three non-negative fractions, got {fractions!r}")
    if abs(sum(values) - 1.0) > 1e-6 or values[0] == 0.0:
        raise InvalidInput(
            f"split fractions must sum to 1 with a non-empty training part, got {fractions!r}"
        )
    return values[0], values[1], values[2]
