"""Concept vectors from contrast pairs: mean difference (ConTrans) or PCA (RepE).

Both read the residual stream of every block in batched passes (`capture`), the positives' and
the negatives' each with their own shared prefix. ``mean``:
``v[l] = mean_i(pos_i[l] - neg_i[l])``, exactly ConTrans' "refine" step. ``pca``: per layer, the
first principal component of the pair differences (RepE), its sign fixed so positives project
higher than their negatives on average, and scaled to the mean projection of the differences so
its norm is comparable with ``mean``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from crx.registry.engine.capture import Progress, residual_states
from crx.registry.engine.loading import LoadedModel
from crx.registry.errors import InvalidInput
from crx.registry.pairs import ContrastPair

METHODS = ("mean", "pca")
ESTIMATOR_NAMES = {"mean": "mean_diff", "pca": "pca"}


def render(template: str, text: str) -> str:
    return template.replace("{text}", text)


def _offset(progress: Progress, done_before: int, total: int) -> Progress:
    """``progress`` for one of several passes, counted over all of them."""
    return lambda done, _: progress(done_before + done, total)


def mean_difference(positive: Any, negative: Any) -> Any:
    """``[n, L, d]`` x 2 → ``[L, d]``: the mean of the pairwise differences."""
    return (positive - negative).mean(dim=0)


def pca_direction(positive: Any, negative: Any) -> Any:
    """``[n, L, d]`` x 2 → ``[L, d]``: first PC of the differences, sign- and scale-fixed."""
    import torch

    diffs = (positive - negative).double()
    centred = diffs - diffs.mean(dim=0, keepdim=True)
    # One batched SVD over layers: [L, n, d] → right singular vectors [L, d, d]'s first row.
    _, _, vh = torch.linalg.svd(centred.transpose(0, 1), full_matrices=False)
    direction = vh[:, 0, :]  # [L, d], unit norm
    # Signed mean projection: multiplying by it flips the direction where positives would
    # project lower, and scales it to the typical size of a difference.
    projection = torch.einsum("nld,ld->nl", diffs, direction).mean(dim=0)  # [L]
    return (direction * projection.unsqueeze(-1)).float()


def _check(pair_sets: Sequence[Sequence[ContrastPair]], method: str) -> None:
    if method not in METHODS:
        raise InvalidInput(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if not pair_sets or any(not pairs for pairs in pair_sets):
        raise InvalidInput("no contrast pairs to extract from")
    if method == "pca" and any(len(pairs) < 2 for pairs in pair_sets):
        raise InvalidInput("pca needs at least 2 contrast pairs")


def extract_vectors(
    loaded: LoadedModel,
    pair_sets: Sequence[Sequence[ContrastPair]],
    *,
    template: str = "{text}",
    method: str = "mean",
    token: str = "last",
    batch_size: int = 32,
    layers: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> list[np.ndarray]:
    """The ``[n_layers, d_model]`` concept vector of each of ``pair_sets``, all in one template.

    Every set's positives go through one pass and every set's negatives through another, so many
    small sets (the concept bank's 24 pairs each) fill whole length-sorted batches, where a pass
    per set would run half-empty, unevenly padded ones. Each vector equals `extract_vector` of its
    set alone to float tolerance (batching only moves rounding). ``layers``: only those blocks
    (rows in that order, the pass stopping after the deepest).
    """
    _check(pair_sets, method)
    # Positives and negatives in separate passes: each side often shares a longer prefix (a
    # persona sentence, say) than the two together, and the shared prefix runs only once.
    total = sum(len(pairs) for pairs in pair_sets)
    sides = []
    for k, side in enumerate(("positive", "negative")):
        texts = [render(template, getattr(p, side)) for pairs in pair_sets for p in pairs]
        sides.append(
            residual_states(
                loaded,
                texts,
                layers=layers,
                token=token,
                batch_size=batch_size,
                progress=None if progress is None else _offset(progress, k * total, 2 * total),
            )
        )
    positive, negative = sides
    estimate = mean_difference if method == "mean" else pca_direction
    vectors, start = [], 0
    for pairs in pair_sets:
        end = start + len(pairs)
        vectors.append(estimate(positive[start:end], negative[start:end]).numpy())
        start = end
    return [v.astype(np.float32) for v in vectors]


def extract_vector(
    loaded: LoadedModel,
    pairs: Sequence[ContrastPair],
    *,
    template: str = "{text}",
    method: str = "mean",
    token: str = "last",
    batch_size: int = 32,
    progress: Progress | None = None,
) -> np.ndarray:
    """The ``[n_layers, d_model]`` concept vector of ``pairs`` on ``loaded``."""
    return extract_vectors(
        loaded,
        [pairs],
        template=template,
        method=method,
        token=token,
        batch_size=batch_size,
        progress=progress,
    )[0]
