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

One eigendecomposition of the corpus's Gram matrix per source block (:class:`CorpusBasis`)
serves every target block fitted from it and every (w, λ, fold): the anchors enter through the
Woodbury identity (:class:`_Problem`), so validation costs products with the K anchors instead
of an eigendecomposition per fold and weight; and since the folds only change which anchor
rows combine, every held-out prediction at one (w, λ) comes out of a single product
(:func:`_held_out_coefficients`).
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


def _normalised(
    vs: torch.Tensor, vt: torch.Tensor, groups: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Each anchor pair divided by ``‖v_s‖``; pairs with a zero source vector dropped."""
    norms = vs.norm(dim=1, keepdim=True)
    keep = norms[:, 0] > 0
    kept = [g for g, k in zip(groups, keep.tolist(), strict=True) if k]
    return vs[keep] / norms[keep], vt[keep] / norms[keep], kept


def _row_cosines(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Cosines of matching rows, ``[..., k]`` for ``[..., k, d]``."""
    tiny = torch.finfo(torch.float64).tiny
    denom = (pred.norm(dim=-1) * true.norm(dim=-1)).clamp(min=tiny)
    return (pred * true).sum(-1) / denom


@dataclass(frozen=True)
class CorpusBasis:
    """A source block's centred training states ``Xc`` and the eigendecomposition
    ``XcᵀXc/n = U·diag(e)·Uᵀ``: the same for every target block fitted from that block, so
    a fit computes it once per source block (`of`) and passes it to each `solve_anchored`."""

    xc: torch.Tensor
    e: torch.Tensor
    u: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor) -> CorpusBasis:
        xc = x.to(torch.float64)
        xc = xc - xc.mean(0)
        e, u = torch.linalg.eigh(xc.T @ xc / xc.shape[0])
        return cls(xc, e.clamp(min=0.0), u)


class _Problem:
    """One (source block, target block) pair in the eigenbasis of the corpus's Gram matrix.

    ``C = XcᵀXc/n = U·diag(e)·Uᵀ`` once; every (w, λ, fold) is then solved with the Woodbury
    identity in that basis: ``(D + s²·ZᵀZ)⁻¹ = D⁻¹ − D⁻¹Zᵀ(I/s² + Z·D⁻¹·Zᵀ)⁻¹Z·D⁻¹`` with
    ``D = diag(e + λ_abs)`` and ``Z`` the anchors' rows in the basis (``s² = w_abs/K``), so a
    fold costs products with the K anchors, not an eigendecomposition of ``ds × ds``.
    Without a corpus (or at ``w = inf``) ``e = 0`` and ``U = I``: the anchors alone.
    """

    def __init__(self, corpus: CorpusBasis | None, y: torch.Tensor | None, ds: int) -> None:
        self.ds = ds
        if corpus is None or y is None:
            self.e: torch.Tensor | None = None
            self.u = self.p_rot = None
            self.c_trace = 0.0
            return
        self.e, self.u = corpus.e, corpus.u
        yc = y - y.mean(0)
        self.p_rot = corpus.u.T @ (corpus.xc.T @ yc / yc.shape[0])  # Uᵀ·XcᵀYc/n, [ds, dt]
        self.c_trace = float(self.e.sum())

    def basis(self, weight: float) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(e, U, UᵀP)`` of the corpus part at ``weight`` (zeros and None: the anchors alone)."""
        if self.e is None or math.isinf(weight):
            return torch.zeros(self.ds, dtype=torch.float64), None, None
        return self.e, self.u, self.p_rot

    def weight_abs(self, weight: float) -> float:
        """``w_abs``: unit anchors have ``tr(VsᵀVs/K) = 1``, so ``w · tr(C)``."""
        return math.inf if self.e is None or math.isinf(weight) else weight * self.c_trace

    def scale(self, weight: float) -> float:
        """λ's unit at ``weight``: the mean eigenvalue of the combined Gram matrix."""
        if self.e is None or math.isinf(weight):
            return 1.0 / self.ds
        return (self.c_trace + self.weight_abs(weight)) / self.ds or 1.0


def _shrunk_solution(
    d: torch.Tensor,
    z: torch.Tensor,
    vt: torch.Tensor,
    p_rot: torch.Tensor | None,
    s2: float,
) -> torch.Tensor:
    """``W̃ = (D + s²ZᵀZ)⁻¹ (UᵀP + s²·ZᵀVt)`` in the eigenbasis, by Woodbury (``d = diag D⁻¹``)."""
    rhs = s2 * (z.T @ vt) if p_rot is None else p_rot + s2 * (z.T @ vt)
    dr = d[:, None] * rhs
    if s2 == 0.0:
        return dr
    inner = torch.eye(z.shape[0], dtype=z.dtype) / s2 + (z * d) @ z.T
    return dr - d[:, None] * (z.T @ torch.linalg.solve(inner, z @ dr))


def _held_out_coefficients(
    d: torch.Tensor,
    z_all: torch.Tensor,
    fold: torch.Tensor,
    folds: int,
    w_abs: float,
    p_rot: torch.Tensor | None,
) -> torch.Tensor:
    """Each anchor's prediction by the map fitted without its fold, as coefficients ``[K, K]``
    on ``Vt``'s rows (then ``[K, ds]`` on ``UᵀP``'s rows, with a corpus).

    Woodbury per fold (``d = diag D⁻¹``, ``G = Z·D⁻¹·Zᵀ``, ``S = I/s² + G_tt``):
    ``Z_h·W̃ = s²·(G_ht − X·G_tt)·Vt_t + (Z_h·D⁻¹ − X·Z_t·D⁻¹)·UᵀP`` with ``X = G_ht·S⁻¹``.
    """
    k_all = z_all.shape[0]
    zd = z_all * d
    gram = zd @ z_all.T
    on_vt = torch.zeros(k_all, k_all, dtype=torch.float64)
    on_zd = torch.zeros(k_all, k_all, dtype=torch.float64)  # on Z·D⁻¹'s rows, then UᵀP's
    for f in range(folds):
        held = torch.nonzero(fold == f)[:, 0]
        train = torch.nonzero(fold != f)[:, 0]
        k = train.numel()
        s2 = 1.0 / k if math.isinf(w_abs) else w_abs / k
        on_zd[held[:, None], held] = torch.eye(held.numel(), dtype=torch.float64)
        if s2 > 0.0:
            g_ht, g_tt = gram[held][:, train], gram[train][:, train]
            # X = G_ht·S⁻¹ as (S⁻¹·G_htᵀ)ᵀ: S is symmetric
            x = torch.linalg.solve(torch.eye(k, dtype=torch.float64) / s2 + g_tt, g_ht.T).T
            on_vt[held[:, None], train] = s2 * (g_ht - x @ g_tt)
            on_zd[held[:, None], train] = -x
    return on_vt if p_rot is None else torch.cat([on_vt, on_zd @ zd], 1)


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
    corpus: CorpusBasis | None = None,
) -> AnchoredSolution:
    """Choose ``w`` and ``λ`` by leave-concepts-out validation, then fit on every anchor.

    ``x`` ``[n, ds]``, ``y`` ``[n, dt]``: the corpus's training rows (None: anchors only);
    ``source_anchors`` ``[K, ds]``, ``target_anchors`` ``[K, dt]`` and ``groups`` (``K`` names):
    the paired concept vectors at this layer pair. ``corpus``: ``x``'s `CorpusBasis`, when the
    caller already has it (``x`` is then only checked against None).
    """
    vs_all, vt_all = source_anchors.to(torch.float64), target_anchors.to(torch.float64)
    if vs_all.shape[0] != vt_all.shape[0] or vs_all.shape[0] != len(groups):
        raise InvalidInput("the anchors' source rows, target rows and groups must be as many")
    vs, vt, groups = _normalised(vs_all, vt_all, groups)
    n_groups = len(set(groups))
    if n_groups < MIN_ANCHOR_GROUPS:
        raise InvalidInput(
            f"the anchored solver needs concepts extracted on both models from at least "
            f"{MIN_ANCHOR_GROUPS} independent sets of texts, found {n_groups}: extract the concept "
            "bank on both models first (`crx bank extract --model M`)"
        )
    if x is None:
        corpus = None  # anchors only
    elif corpus is None:
        corpus = CorpusBasis.of(x)
    problem = _Problem(corpus, None if y is None else y.to(torch.float64), vs.shape[1])
    weights = tuple(float(w) for w in weights) if problem.e is not None else (math.inf,)
    lambdas = tuple(float(lam) for lam in lambdas)
    folds = min(folds, n_groups)
    fold = torch.from_numpy(fold_of(groups, folds))
    sums = torch.zeros(len(weights), len(lambdas), dtype=torch.float64)
    k_all = vs.shape[0]
    z_corpus = vs if problem.u is None else vs @ problem.u  # the anchors in the corpus basis
    for i, weight in enumerate(weights):
        e, u, p_rot = problem.basis(weight)
        z_all = vs if u is None else z_corpus
        w_abs, scale = problem.weight_abs(weight), problem.scale(weight)
        # every held-out prediction is a combination of the anchors' target rows and (with a
        # corpus) of UᵀP's rows: the folds only set the coefficients, so each λ's predictions
        # of every held-out anchor come out of one product with these rows
        rows = vt if p_rot is None else torch.cat([vt, p_rot])
        coefficients = [
            _held_out_coefficients(1.0 / (e + lam * scale), z_all, fold, folds, w_abs, p_rot)
            for lam in lambdas
        ]
        pred = (torch.cat(coefficients) @ rows).view(len(lambdas), k_all, -1)
        sums[i] = _row_cosines(pred, vt).sum(-1)
    cv = (sums / k_all).numpy()
    # best mean cosine; ties (to 1e-9) to the smaller weight, then the larger λ (smoother map)
    best = max(
        ((i, j) for i in range(len(weights)) for j in range(len(lambdas))),
        key=lambda ij: (round(float(cv[ij]), 9), -ij[0], ij[1]),
    )
    weight, lam = weights[best[0]], lambdas[best[1]]
    e, u, p_rot = problem.basis(weight)
    w_abs, scale = problem.weight_abs(weight), problem.scale(weight)
    z_all = vs if u is None else z_corpus
    s2 = 1.0 / k_all if math.isinf(w_abs) else w_abs / k_all
    w_rot = _shrunk_solution(1.0 / (e + lam * scale), z_all, vt, p_rot, s2)
    wt = w_rot if u is None else u @ w_rot
    return AnchoredSolution(
        wt=wt,
        weight=weight,
        lam=lam,
        lam_abs=lam * scale,
        weight_abs=w_abs,
        cv_cosine=cv,
        weights=weights,
        lambdas=lambdas,
        n_anchors=k_all,
        n_groups=n_groups,
        folds=folds,
    )
