"""ConTrans' exact solver, ``"lstsq-svd"``: :class:`SvdSource`.

No centring, no bias, ``Wᵀ = pinv(X_train) · Y_train``, the minimum-norm least-squares solution
through an SVD pseudo-inverse whose singular values below ``max(n, ds) · eps(float64) · s_max``
count as zero (torch's and numpy's default cut-off). Always float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from crx.registry.engine.fit.metrics import r2_from, r2_value
from crx.registry.engine.fit.solvers import Data, Source


class SvdSource(Source):
    """ConTrans' solver: one thin SVD of the uncentred training rows, ``Wᵀ = pinv(X)·Y``."""

    def __init__(self, data: Data, ls: int) -> None:
        super().__init__(data, ls)
        xtr = self.x_part["train"]
        u, s, vh = torch.linalg.svd(xtr, full_matrices=False)
        cutoff = float(s.max()) * max(xtr.shape) * torch.finfo(torch.float64).eps
        rank = int((s > cutoff).sum())
        self.u, self.s, self.q = u[:, :rank], s[:rank], vh[:rank].T
        self.rank, self.cutoff = rank, cutoff
        del self.x_part["train"]  # u, s and q hold what is needed of it: less memory per source
        self._g: dict[int, torch.Tensor] = {}
        self._k: torch.Tensor | None = None

    def forget(self, lt: int) -> None:
        self._g.pop(lt, None)

    def _coords(self, lt: int) -> torch.Tensor:
        """``G = Uᵀ·Y_train`` for target ``lt``, ``[rank, dt]``."""
        if lt not in self._g:
            self._g[lt] = self.u.T @ self.data.target(lt).y["train"]
        return self._g[lt]

    def validation_scores(
        self, targets: list[int], grid: tuple[float, ...], keep: bool = True
    ) -> np.ndarray:
        # X_val·pinv(X_train) first ([n_val, n_train]): cheaper than forming every Wᵀ; made
        # once per source, it serves every target
        if self._k is None:
            self._k = ((self.x_part["val"] @ self.q) / self.s) @ self.u.T
        k = self._k
        sse = torch.empty(len(targets), dtype=torch.float64)
        sst = torch.empty(len(targets), dtype=torch.float64)
        for i, lt in enumerate(targets):  # one target block at a time: bounded memory
            target = self.data.target(lt)
            resid = target.y["val"] - k @ target.y["train"]
            sse[i] = (resid**2).sum(0).sum()
            assert target.sst_val is not None
            sst[i] = target.sst_val
        return r2_from(sse, sst)[:, None].repeat(len(grid), axis=1)

    def solve(
        self, lt: int, lam: float
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
        wt = self.q @ (self._coords(lt) / self.s[:, None])
        return wt, None, {"rank": self.rank, "singular_value_cutoff": self.cutoff}

    def train_r2(self, lt: int, lam: float) -> float:
        # The training prediction is U·Uᵀ·Y, so SSE = ‖Y‖² − ‖Uᵀ·Y‖².
        y = self.data.target(lt).y["train"]
        sse = float((y**2).sum()) - float((self._coords(lt) ** 2).sum())
        sst = float(((y - y.mean(0)) ** 2).sum())
        return r2_value(max(sse, 0.0), sst)
