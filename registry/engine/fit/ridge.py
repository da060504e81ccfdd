"""The ridge solver (the default) and its λ sweep: :class:`RidgeSource`.

Centre X and Y by their training means, solve ``(XcᵀXc + λ_abs·n·I) Wᵀ = XcᵀYc`` and set
``b = ȳ − W·x̄``. λ is given *relative* to the mean eigenvalue of ``C = XcᵀXc/n``
(``λ_abs = λ · tr(C)/ds``), so one grid (default ``1e-6 … 1e2``, one value a decade) fits every
model's scale; the λ with the best validation R² is kept, per pair. Speed: per source layer one
eigendecomposition ``C = V·diag(e)·Vᵀ`` serves every λ and every target layer
(``Wᵀ = V·diag(1/(e + λ_abs))·P_t`` with ``P_t = Vᵀ·XcᵀYc_t/n``), and the validation error of
every λ comes from two small Gram matrices instead of a prediction per λ (see
:meth:`RidgeSource.validation_scores`), so an all-pairs sweep costs a few matrix products per
pair instead of one SVD per pair (``benchmarks/fit_bench.py``).

Precision of the sweep: ``"float32"`` (default) keeps the Gram matrix, its eigendecomposition and
every sum in float64 but runs the per-pair matrix products (``P_t``, ``W``, the validation
products, the test predictions) in float32, on centred data; ``"float64"`` does everything in
float64. float32 is ~1.7× faster; on the real SmolLM2 → Gemma-3 and Qwen 0.5B → 1.5B corpus
states it chose the same λ on all 540 / 672 pairs, with held-out R² within 1e-7 and weights
within 2e-6 (relative to the largest) of float64 (``benchmarks/fit_bench.py`` measures both).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from crx.registry.engine.fit.metrics import r2_from, r2_value
from crx.registry.engine.fit.solvers import Data, Source


class RidgeSource(Source):
    """One eigendecomposition ``XcᵀXc/n = V·diag(e)·Vᵀ`` shared by every λ and target."""

    def __init__(self, data: Data, ls: int) -> None:
        super().__init__(data, ls)
        xtr = self.x_part["train"]
        self.n = xtr.shape[0]
        self.x_mean = xtr.mean(0)
        xc = xtr - self.x_mean
        e, v = torch.linalg.eigh(xc.T @ xc / self.n)
        self.e, self.v = e.clamp(min=0.0), v
        scale = float(self.e.mean())
        self.scale = scale if scale > 0.0 else 1.0
        work = data.work
        #: training rows in the eigenbasis (z_trainᵀ z_train = n·diag(e)), in the work dtype
        self.v_work = v.to(work)
        self.z_train = xc.to(work) @ self.v_work
        del self.x_part["train"]  # z_train holds what is needed of it: less memory per source
        self._p: dict[int, torch.Tensor] = {}
        self._val: tuple[tuple[float, ...], torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def forget(self, lt: int) -> None:
        self._p.pop(lt, None)

    def _shrink(self, lam: float) -> torch.Tensor:
        return 1.0 / (self.e + lam * self.scale)

    def _proj(self, lt: int, keep: bool = True) -> torch.Tensor:
        """``P_t = Vᵀ·XcᵀYc_t/n`` for target block ``lt``, ``[ds, dt]``, in the work dtype."""
        # One target at a time on purpose: the same flops as one product over every target's
        # columns, but each result is a few MB that the allocator reuses, where [ds, Lt·dt]
        # temporaries are fresh pages on every source layer (measured ~1.5× slower overall).
        p = self._p.get(lt)
        if p is None:
            p = (self.z_train.T @ self.data.target(lt).yc_work["train"]).div_(self.n)
            if keep:
                self._p[lt] = p
        return p

    def validation_scores(
        self, targets: list[int], grid: tuple[float, ...], keep: bool = True
    ) -> np.ndarray:
        # For target t with Wᵀ = V·D·P_t (D = diag(1/(e + λ_abs))) and Z = (X_val − x̄)·V:
        #   SSE_t(λ) = ‖Yc_t‖² − 2·Σ_k d_k·Σ_j (ZᵀYc_t)_kj·(P_t)_kj + dᵀ·(ZᵀZ ⊙ P_t·P_tᵀ)·d,
        # so the grid costs O(ds²) per λ once ZᵀYc_t and P_t·P_tᵀ are formed: λ is nearly
        # free, where predicting the validation rows would cost n_val·ds·dt per λ and target.
        data = self.data
        if self._val is None or self._val[0] != grid:
            # the validation rows in the eigenbasis serve every target: made once per source
            z = (self.x_part["val"] - self.x_mean) @ self.v  # [n_val, ds]
            shrink = torch.stack([self._shrink(lam) for lam in grid], dim=1)  # [ds, G]
            self._val = (grid, z.T @ z, z.to(data.work), shrink)
        _, gram, z_work, shrink = self._val
        blocks = _symmetric_blocks(z_work.shape[1])
        out = torch.empty(len(targets), len(grid), dtype=torch.float64)
        sst = torch.empty(len(targets), dtype=torch.float64)
        for i, lt in enumerate(targets):
            p, target = self._proj(lt, keep), data.target(lt)
            cross = (z_work.T @ target.yc_work["val"]).mul_(p).sum(1).double()  # [ds]
            quad = torch.zeros(len(grid), dtype=torch.float64)
            for k, bk in enumerate(blocks):
                for bl in blocks[k:]:
                    h = (p[bk] @ p[bl].T).double().mul_(gram[bk, bl])
                    term = ((h @ shrink[bl]) * shrink[bk]).sum(0)
                    quad += term if bk == bl else 2.0 * term
            out[i] = target.ss_centred["val"] - 2.0 * (cross @ shrink) + quad
            assert target.sst_val is not None
            sst[i] = target.sst_val
        return r2_from(out.clamp(min=0.0), sst[:, None])

    def solve(
        self, lt: int, lam: float
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
        p = self._proj(lt)
        # W = (D·P)ᵀ·Vᵀ is computed as [dt, ds] directly, the layout the map is stored in;
        # Wᵀ is its transposed view.
        wt = ((self._shrink(lam).to(p.dtype)[:, None] * p).T @ self.v_work.T).T
        bias = self.data.target(lt).mean - (self.x_mean.to(wt.dtype) @ wt).double()
        return wt, bias, {"lambda": float(lam), "lambda_abs": float(lam * self.scale)}

    def predict(
        self, wt: torch.Tensor, bias: torch.Tensor | None, lt: int, part: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The centred form x·W + b = (x − x̄)·W + ȳ: in float32 the uncentred product would
        # lose the digits the large mean of residual states cancels out of it.
        centred = (self.x_part[part] - self.x_mean).to(wt.dtype)
        target = self.data.target(lt)
        return target.y[part], (centred @ wt).double() + target.mean

    def train_r2(self, lt: int, lam: float) -> float:
        # ‖Yc − Z·D·P‖² = ‖Yc‖² − n·Σ_k (2·d_k − e_k·d_k²)·P_kj², as ZᵀZ = n·E and ZᵀYc = n·P.
        p, d = self._proj(lt), self._shrink(lam)
        sst = float(self.data.target(lt).ss_centred["train"])
        squares = p.square().sum(1).double()
        sse = sst - self.n * float((2.0 * d - self.e * d**2) @ squares)
        return r2_value(max(sse, 0.0), sst)


def _symmetric_blocks(d: int) -> list[slice]:
    """Row blocks for a symmetric product ``P·Pᵀ`` built from its upper triangle of blocks.

    Three blocks compute 6 of 9 block products (two thirds of the flops); blocks stay ≥ 128
    rows so each product is still an efficient matrix multiply.
    """
    n_blocks = max(1, min(3, d // 128))
    edges = [d * i // n_blocks for i in range(n_blocks + 1)]
    return [slice(edges[i], edges[i + 1]) for i in range(n_blocks)]
