"""The concept-anchored solver: a map fitted on corpus states *and* paired concept vectors.

A team's registry holds many concepts extracted natively on both models; each such pair of
vectors ``(v_s, v_t)`` at a (source block, target block) pair says how one model's concept
direction lines up with the other's (Huang et al., ACL 2025, fit maps from such pairs alone).
This solver adds them to the ridge fit of :mod:`.ridge` as weighted rows:

    minimise  ‖Xc·Wᵀ − Yc‖²/n  +  w_abs · ‖Vs·Wᵀ − Vt‖²/K  +  λ_abs · ‖W‖²

``Xc``, ``Yc``: the centred corpus states of the training split; ``Vs``, ``Vt``: the K anchor
vectors, each pair divided by ``‖v_s‖`` (so every concept counts the same whatever its norm; the
map is linear, so dividing both sides keeps the relation). ``w`` is given relative to the
corpus's total variance (``w_abs = w · tr(XcᵀXc/n) / tr(VsᵀVs/K)``: ``w = 1`` gives the anchors as
much weight as the corpus), ``λ`` relative to the mean eigenvalue of the combined Gram matrix, as
in ridge. ``w = inf`` is the anchors alone (no corpus rows: L-Cross style); no corpus at all
(``x is None``) is the same.

``w`` and ``λ`` are chosen by **leave-concepts-out** validation: the anchors are cut into folds by
their *group* (concepts built from shared texts are one group, so no fold validates on a concept
whose texts it trained on); each fold's map is fitted without its anchors and scored by the mean
cosine between ``W·v_s`` and ``v_t`` on them; the (w, λ) with the best mean over every held-out
anchor wins (ties: the smaller w, then the larger λ). Steering adds a direction scaled to the
residual norm, so the direction, the cosine, is what a transplant needs of a map.

Per (w, fold) one eigendecomposition of the combined Gram matrix serves every λ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from crx.registry.errors import InvalidInput

#: Anchor weights relative to the corpus's variance; ``inf`` is the anchors alone.
DEFAULT_WEIGHTS: tuple[float, ...] = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, math.inf)
#: Penalties relative to the mean eigenvalue of the combined Gram matrix.
DEFAULT_ANCHOR_LAMBDAS: tuple[float, ...] = tuple(10.0**k for k in range(-4, 3))
DEFAULT_FOLDS = 5
#: The fewest anchor groups leave-concepts-out validation can work with.
MIN_ANCHOR_GROUPS = 4
SELECTION = "best mean leave-concepts-out cosine(W v_s, v_t) over held-out anchors"


@dataclass(frozen=True)
class Anchors:
    """Paired concept vectors for a fit: ``source`` ``[K, Ls, ds]``, ``target`` ``[K, Lt, dt]``
    (numpy or torch), and each concept's group (concepts sharing texts share a group)."""

    source: Any
    target: Any
    groups: Sequence[str]

    def at(self, ls: int, lt: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The anchors' rows at source block ``ls`` and target block ``lt``."""
        return torch.as_tensor(self.source[:, ls]), torch.as_tensor(self.target[:, lt])


@dataclass(frozen=True)
class AnchoredSolution:
    """The chosen map ``Wᵀ`` ``[ds, dt]`` (float64) with its validation table.

    ``cv_cosine[i, j]``: mean held-out cosine at ``weights[i]``, ``lambdas[j]``.
    """

    wt: torch.Tensor
    weight: float
    lam: float
    lam_abs: float
    weight_abs: float
    cv_cosine: np.ndarray
    weights: tuple[float, ...]
    lambdas: tuple[float, ...]
    n_anchors: int
    n_groups: int
    folds: int

    def settings(self) -> dict[str, Any]:
        """What a map row records about the choice (JSON-serialisable; inf as "inf")."""
        return {
            "anchor_weight": _json(self.weight),
            "anchor_weight_abs": _json(self.weight_abs),
            "lambda": self.lam,
            "lambda_abs": self.lam_abs,
            "anchor_weight_grid": [_json(w) for w in self.weights],
            "anchor_lambda_grid": list(self.lambdas),
            "anchor_cv_cosine": [[_json(c) for c in row] for row in self.cv_cosine.tolist()],
            "anchor_cv_best": _json(float(np.nanmax(self.cv_cosine))),
            "n_anchors": self.n_anchors,
            "n_anchor_groups": self.n_groups,
            "anchor_folds": self.folds,
            "anchor_selection": SELECTION,
        }


def _json(x: float) -> float | str | None:
    if math.isinf(x):
        return "inf"
    return float(x) if math.isfinite(x) else None


def fold_of(groups: Sequence[str], folds: int) -> np.ndarray:
    """Each anchor's fold: groups sorted by name, dealt round-robin (reproducible)."""
    names = sorted(set(groups))
    index = {g: i % folds for i, g in enumerate(names)}
    return np.array([index[g] for g in groups], dtype=np.int64)


def _normalised(vs: torch.Tensor, vt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    norms = vs.norm(dim=1, keepdim=True)
    keep = norms[:, 0] > 0
    return vs[keep] / norms[keep], vt[keep] / norms[keep]


def _row_cosines(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Cosines of matching rows, ``[..., k]`` for ``[..., k, d]``."""
    tiny = torch.finfo(torch.float64).tiny
    denom = (pred.norm(dim=-1) * true.norm(dim=-1)).clamp(min=tiny)
    return (pred * true).sum(-1) / denom


class _Problem:
    """The sums of one (source block, target block) pair that every (w, λ, fold) shares."""

    def __init__(self, x: torch.Tensor | None, y: torch.Tensor | None) -> None:
        if x is None or y is None:
            self.c = self.p = None
            self.c_trace = 0.0
            self.x_mean = self.y_mean = None
            return
        self.x_mean, self.y_mean = x.mean(0), y.mean(0)
        xc, yc = x - self.x_mean, y - self.y_mean
        n = x.shape[0]
        self.c = xc.T @ xc / n  # [ds, ds]
        self.p = xc.T @ yc / n  # [ds, dt]
        self.c_trace = float(torch.trace(self.c))

    def system(
        self, weight: float, vs: torch.Tensor, vt: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(M, R, w_abs)``: the Gram matrix and right-hand side for anchor weight ``weight``."""
        a = vs.T @ vs / vs.shape[0]
        q = vs.T @ vt / vs.shape[0]
        if self.c is None or math.isinf(weight):
            return a, q, math.inf
        assert self.p is not None
        if weight == 0.0:
            return self.c, self.p, 0.0
        w_abs = weight * self.c_trace / max(float(torch.trace(a)), 1e-300)
        return self.c + w_abs * a, self.p + w_abs * q, w_abs


def _solutions(
    m: torch.Tensor, r: torch.Tensor, lambdas: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """``(V, e, VᵀR, scale)`` for ``Wᵀ(λ) = V·diag(1/(e + λ·scale))·VᵀR``."""
    e, v = torch.linalg.eigh(m)
    e = e.clamp(min=0.0)
    scale = float(e.mean()) or 1.0
    return v, e, v.T @ r, scale


def solve_anchored(
    x: torch.Tensor | None,
    y: torch.Tensor | None,
    source_anchors: torch.Tensor,
    target_anchors: torch.Tensor,
    groups: Sequence[str],
    *,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    lambdas: Sequence[float] = DEFAULT_ANCHOR_LAMBDAS,
    folds: int = DEFAULT_FOLDS,
) -> AnchoredSolution:
    """Choose ``w`` and ``λ`` by leave-concepts-out validation, then fit on every anchor.

    ``x`` ``[n, ds]``, ``y`` ``[n, dt]``: the corpus's training rows (None: anchors only);
    ``source_anchors`` ``[K, ds]``, ``target_anchors`` ``[K, dt]`` and ``groups`` (``K`` names):
    the paired concept vectors at this layer pair.
    """
    vs_all, vt_all = source_anchors.to(torch.float64), target_anchors.to(torch.float64)
    if vs_all.shape[0] != vt_all.shape[0] or vs_all.shape[0] != len(groups):
        raise InvalidInput("the anchors' source rows, target rows and groups must be as many")
    keep = vs_all.norm(dim=1) > 0
    groups = [g for g, k in zip(groups, keep.tolist(), strict=True) if k]
    vs, vt = _normalised(vs_all, vt_all)
    n_groups = len(set(groups))
    if n_groups < MIN_ANCHOR_GROUPS:
        raise InvalidInput(
            f"the anchored solver needs concepts extracted on both models from at least "
            f"{MIN_ANCHOR_GROUPS} independent sets of texts, found {n_groups}: extract the concept "
            "bank on both models first (`crx bank extract --model M`)"
        )
    problem = _Problem(
        None if x is None else x.to(torch.float64), None if y is None else y.to(torch.float64)
    )
    weights = tuple(float(w) for w in weights) if problem.c is not None else (math.inf,)
    lambdas = tuple(float(lam) for lam in lambdas)
    folds = min(folds, n_groups)
    fold = torch.from_numpy(fold_of(groups, folds))
    lam_t = torch.tensor(lambdas, dtype=torch.float64)
    sums = torch.zeros(len(weights), len(lambdas), dtype=torch.float64)
    for f in range(folds):
        train, held = fold != f, fold == f
        for i, weight in enumerate(weights):
            m, r, _ = problem.system(weight, vs[train], vt[train])
            v, e, vr, scale = _solutions(m, r, lambdas)
            z = vs[held] @ v  # [k, ds]
            shrink = 1.0 / (e[None, :] + lam_t[:, None] * scale)  # [G, ds]
            pred = (z[None, :, :] * shrink[:, None, :]) @ vr  # [G, k, dt]
            sums[i] += _row_cosines(pred, vt[held][None]).sum(-1)
    cv = (sums / vs.shape[0]).numpy()
    # best mean cosine; ties (to 1e-9) to the smaller weight, then the larger λ (smoother map)
    best = max(
        ((i, j) for i in range(len(weights)) for j in range(len(lambdas))),
        key=lambda ij: (round(float(cv[ij]), 9), -ij[0], ij[1]),
    )
    weight, lam = weights[best[0]], lambdas[best[1]]
    m, r, w_abs = problem.system(weight, vs, vt)
    v, e, vr, scale = _solutions(m, r, lambdas)
    wt = v @ (vr / (e + lam * scale)[:, None])
    return AnchoredSolution(
        wt=wt,
        weight=weight,
        lam=lam,
        lam_abs=lam * scale,
        weight_abs=w_abs,
        cv_cosine=cv,
        weights=weights,
        lambdas=lambdas,
        n_anchors=int(vs.shape[0]),
        n_groups=n_groups,
        folds=folds,
    )
