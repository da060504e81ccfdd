"""Affine maps between two models' residual streams: ConTrans step 2, pure linear algebra.

Input: the last-token states of the same N texts in both models, ``X`` ``[N, Ls, ds]`` (source,
every decoder block) and ``Y`` ``[N, Lt, dt]`` (target, every decoder block). Output: one
:class:`FittedMap` ``target ≈ W·source + b`` per chosen (source layer, target layer) pair, with
metrics on rows the fit never saw. No model, no file, no database: numpy or torch in, numpy out.

Layer indices are **0-based decoder block indices** (block ``i``'s output). ConTrans' code indexes
``hidden_states``, where 0 is the embedding output, so its hidden-state ``h`` is our block
``h - 1``: its fixed pair 24 → 30 for LLaMA 7B (32 blocks) → 13B (40 blocks) is our 23 → 29.

Split (:func:`split_indices`): train / validation / test, by default 80/10/10 in file order as
ConTrans does. The fit uses train only, the choice of λ and of the source layer (``"auto"``) uses
validation only, and the reported ``r2``/``mse``/``cosine`` use test only.

Solvers:

``"lstsq-svd"``
    ConTrans' exact solver: no centring, no bias, ``Wᵀ = pinv(X_train) · Y_train``, the
    minimum-norm least-squares solution through an SVD pseudo-inverse whose singular values below
    ``max(n, ds) · eps(float64) · s_max`` count as zero (torch's and numpy's default cut-off).
``"ridge"`` (default)
    Centre X and Y by their training means, solve ``(XcᵀXc + λ_abs·n·I) Wᵀ = XcᵀYc`` and set
    ``b = ȳ − W·x̄``. λ is given *relative* to the mean eigenvalue of ``C = XcᵀXc/n``
    (``λ_abs = λ · tr(C)/ds``), so one grid (default ``1e-6 … 1e2``, one value a decade) fits
    every model's scale; the λ with the best validation R² is kept, per pair. Speed: per source
    layer one eigendecomposition ``C = V·diag(e)·Vᵀ`` serves every λ and every target layer
    (``Wᵀ = V·diag(1/(e + λ_abs))·P_t`` with ``P_t = Vᵀ·XcᵀYc_t/n``), and the validation error
    of every λ comes from two small Gram matrices instead of a prediction per λ (see
    ``_RidgeSource.validation_scores``), so an all-pairs sweep costs a few matrix products per
    pair instead of one SVD per pair (``benchmarks/fit_bench.py``).

Precision of the ridge sweep: ``"float32"`` (default) keeps the Gram matrix, its
eigendecomposition and every sum in float64 but runs the per-pair matrix products (``P_t``,
``W``, the validation products, the test predictions) in float32, on centred data; ``"float64"``
does everything in float64. float32 is ~1.7× faster; on the real SmolLM2 → Gemma-3 and
Qwen 0.5B → 1.5B corpus states it chose the same λ on all 540 / 672 pairs, with held-out R²
within 1e-7 and weights within 2e-6 (relative to the largest) of float64
(``benchmarks/fit_bench.py`` measures both). ``lstsq-svd`` is always float64.

Metrics (:data:`R2_DEFINITION`, :data:`COSINE_DEFINITION`), all summed in float64:
R² = 1 − Σ_ij (y_ij − ŷ_ij)² / Σ_ij (y_ij − ȳ_j)², summed over the split's rows i and all output
dimensions j, with ȳ_j the mean *of that split* (so it is the fraction of the split's total
variance explained, and a map that only predicts the split's mean scores 0); ``mse`` = mean of
(y − ŷ)² over rows and dimensions; ``cosine`` = mean over rows of cos(ŷ_i − ȳ_train, y_i − ȳ_train).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from crx.registry.errors import InvalidInput, TensorShapeError

SOLVERS: tuple[str, ...] = ("ridge", "lstsq-svd")
PRECISIONS: tuple[str, ...] = ("float64", "float32")
DEFAULT_SPLIT: tuple[float, float, float] = (0.8, 0.1, 0.1)
#: Ridge penalties relative to the mean eigenvalue of the centred training covariance.
DEFAULT_LAMBDAS: tuple[float, ...] = tuple(10.0**k for k in range(-6, 3))
R2_DEFINITION = (
    "1 - sum_ij (y_ij - yhat_ij)^2 / sum_ij (y_ij - mean_i y_ij)^2 over the split's rows i and "
    "all output dims j; the mean is the split's own"
)
COSINE_DEFINITION = "mean_i cos(yhat_i - mean_train(y), y_i - mean_train(y))"
#: Validation R² values closer than this count as a tie when ``"auto"`` picks a source layer.
AUTO_TIE_TOLERANCE = 1e-9

Progress = Callable[[int, int], None]


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


# -- public helpers -------------------------------------------------------------------------


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
    _check_int(n, "the number of rows", minimum=0)
    f_train, _, f_test = _check_fractions(fractions)
    cut1 = min(n, int(np.floor(n * f_train + 0.5)))
    cut2 = max(cut1, n - int(np.floor(n * f_test + 0.5)))
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    parts = (order[:cut1], order[cut1:cut2], order[cut2:])
    return tuple(np.sort(p).astype(np.int64) for p in parts)  # type: ignore[return-value]


def resolve_precision(solver: str, precision: str | None) -> str:
    """``precision`` checked against ``solver``, or the solver's default when it is None."""
    if precision is None:
        return "float32" if solver == "ridge" else "float64"
    if precision not in PRECISIONS:
        raise InvalidInput(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "float64" and solver != "ridge":
        raise InvalidInput(f"precision {precision} applies to the ridge solver only")
    return precision


def relative_depth_pair(n_source_layers: int, n_target_layers: int, target_layer: int) -> int:
    """The source block at the same relative depth as ``target_layer`` (ConTrans' pair rule).

    Relative depth of 0-based block ``i`` of ``L`` is ``(i + 1)/L`` (the last block is depth 1),
    which is ConTrans' ``hidden_states`` index ``h``/L with ``h = i + 1``. The source block is
    ``round((lt + 1)·Ls/Lt) − 1`` (halves round up, clamped to the source's blocks), computed in
    integers. ConTrans' 24 → 30 (hidden-state indices, 32 → 40 layers, depth 0.75) is
    ``relative_depth_pair(32, 40, 29) == 23``; SmolLM2 (30) → Gemma-3-270m (18) block 13 gives 22.
    """
    _check_int(n_source_layers, "the number of source layers", minimum=1)
    _check_int(n_target_layers, "the number of target layers", minimum=1)
    _check_int(target_layer, "the target layer", minimum=0)
    if target_layer >= n_target_layers:
        raise InvalidInput(
            f"target layer {target_layer} is out of range: the target has {n_target_layers} "
            f"layers (0..{n_target_layers - 1})"
        )
    hidden = (2 * (target_layer + 1) * n_source_layers + n_target_layers) // (2 * n_target_layers)
    return min(max(hidden - 1, 0), n_source_layers - 1)


def map_vector(weight: np.ndarray | torch.Tensor, v: np.ndarray | torch.Tensor) -> np.ndarray:
    """Map a source-space vector (or a stack ``[k, ds]``) to the target: ``v_t = W · v_s``.

    The bias is left out on purpose: a concept vector is a difference of two activations, and
    ``(W·a + b) − (W·c + b) = W·(a − c)``. Computed in float64, returned in the inputs' common
    float dtype (float32 for float32 inputs).
    """
    w = _to_numpy(weight, "the map weight")
    x = _to_numpy(v, "the vector")
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


# -- the fit --------------------------------------------------------------------------------


def fit_pairs(
    X: np.ndarray | torch.Tensor,
    Y: np.ndarray | torch.Tensor,
    pairs: list[tuple[int, int]] | str = "auto",
    *,
    solver: str = "ridge",
    lambdas: Sequence[float] | None = None,
    split: Sequence[float] = DEFAULT_SPLIT,
    shuffle: bool = False,
    seed: int = 0,
    precision: str | None = None,
    progress: Progress | None = None,
) -> list[FittedMap]:
    """Fit ``Y[:, lt] ≈ W · X[:, ls] + b`` for the chosen layer pairs.

    ``pairs``: an explicit list of ``(source block, target block)`` (maps come back in that
    order); ``"all"``: every pair, ordered by source then target block; ``"auto"``: for each
    target block (in order) the source block with the best *validation* R², ties (within
    :data:`AUTO_TIE_TOLERANCE`) going to the closest relative depth (``(ls+1)/Ls`` vs
    ``(lt+1)/Lt``), then the shallower block. The validation R² of every candidate source block
    is kept in ``settings["auto_val_r2"]``.

    ``lambdas`` (ridge only): the grid of relative penalties (see the module docstring); one
    value skips the validation search. ``precision``: the dtype of the ridge sweep's per-pair
    products, ``"float32"`` (the ridge default) or ``"float64"``; ``lstsq-svd`` is float64 only
    (module docstring). ``progress(done, total)`` is called after each unit of
    work: a source layer (scoring or fitting) or, in the second pass of ``"auto"``, a map.

    Raises :class:`~registry.errors.InvalidInput` for arrays that are not ``[N, L, d]`` or
    disagree on N, non-finite values, an unknown solver, a layer out of range, or splits too
    small to fit and select on.
    """
    if solver not in SOLVERS:
        raise InvalidInput(f"unknown solver {solver!r}: choose one of {', '.join(SOLVERS)}")
    precision = resolve_precision(solver, precision)
    xs = _as_states(X, "the source states X")
    ys = _as_states(Y, "the target states Y")
    if xs.shape[0] != ys.shape[0]:
        raise InvalidInput(
            f"the source states have {xs.shape[0]} rows and the target states {ys.shape[0]}: "
            "X and Y must hold the same texts, in the same order"
        )
    n, n_src, _ = xs.shape
    n_tgt = ys.shape[1]
    mode, explicit = _resolve_pairs(pairs, n_src, n_tgt)
    grid = _resolve_lambdas(lambdas, solver)
    fractions = _check_fractions(split)
    tr, va, te = split_indices(n, fractions, shuffle=shuffle, seed=seed)
    if len(tr) < 2:
        raise InvalidInput(f"the training split has {len(tr)} rows of {n}: at least 2 are needed")
    needs_val = mode == "auto" or len(grid) > 1
    if needs_val and len(va) == 0:
        why = "choosing the source layer" if mode == "auto" else "choosing λ"
        raise InvalidInput(f"the validation split is empty, but {why} needs it: give it rows")

    data = _Data(xs, ys, tr, va, te, getattr(torch, precision))
    base_settings: dict[str, Any] = {
        "solver": solver,
        "centring": solver == "ridge",
        "bias": solver == "ridge",
        "pairs": mode,
        "split": [float(f) for f in fractions],
        "shuffle": bool(shuffle),
        "seed": int(seed),
        "n_train": len(tr),
        "n_val": len(va),
        "n_test": len(te),
        "layer_index": "0-based decoder block (hidden_states index - 1)",
        "r2_definition": R2_DEFINITION,
        "cosine_definition": COSINE_DEFINITION,
        "dtype": precision,
    }
    if precision != "float64":
        base_settings["dtype_note"] = (
            "per-pair products in float32 on centred data; Gram, eigendecomposition and sums in "
            "float64"
        )
    if solver == "ridge":
        base_settings["lambda_grid"] = list(grid)
        base_settings["lambda_relative_to"] = "mean eigenvalue of Xc^T Xc / n (train)"
        base_settings["lambda_selection"] = "best validation R2 per pair" if len(grid) > 1 else None

    if mode == "auto":
        return _fit_auto(data, solver, grid, base_settings, progress)
    by_source: dict[int, list[int]] = {}
    for ls, lt in explicit:
        by_source.setdefault(ls, []).append(lt)
    fitted: dict[tuple[int, int], FittedMap] = {}
    for done, (ls, targets) in enumerate(by_source.items(), start=1):
        for fm in _fit_source(data, solver, grid, ls, targets, None, base_settings):
            fitted[(fm.source_layer, fm.target_layer)] = fm
        if progress is not None:
            progress(done, len(by_source))
    return [fitted[p] for p in explicit]


def _fit_auto(
    data: _Data,
    solver: str,
    grid: tuple[float, ...],
    base_settings: dict[str, Any],
    progress: Progress | None,
) -> list[FittedMap]:
    n_src, n_tgt = data.n_src, data.n_tgt
    total, done = n_src + n_tgt, 0
    all_targets = list(range(n_tgt))
    val_r2 = np.full((n_src, n_tgt), np.nan)
    best_lam = np.full((n_src, n_tgt), np.nan)
    by_lambda = np.full((n_src, n_tgt, len(grid)), np.nan)
    for ls in range(n_src):
        source = _make_source(data, solver, ls)
        scores = source.validation_scores(all_targets, grid)  # [n_tgt, n_grid]
        by_lambda[ls] = scores
        pick = _pick_lambda(scores)
        val_r2[ls] = scores[np.arange(n_tgt), pick]
        best_lam[ls] = np.asarray(grid)[pick]
        done += 1
        if progress is not None:
            progress(done, total)

    chosen: dict[int, list[int]] = {}
    for lt in range(n_tgt):
        chosen.setdefault(_pick_source(val_r2[:, lt], n_src, n_tgt, lt), []).append(lt)
    fitted: dict[int, FittedMap] = {}
    for ls, targets in chosen.items():
        lam = {lt: float(best_lam[ls, lt]) for lt in targets}
        known = {lt: float(val_r2[ls, lt]) for lt in targets}
        for fm in _fit_source(data, solver, grid, ls, targets, (lam, known), base_settings):
            extra = {
                "auto_val_r2": [_json_float(r) for r in val_r2[:, fm.target_layer]],
                "auto_selection": "best validation R2, ties by relative depth",
                "relative_depth_source_layer": relative_depth_pair(n_src, n_tgt, fm.target_layer),
            }
            if solver == "ridge" and len(grid) > 1:
                extra["val_r2_by_lambda"] = [_json_float(r) for r in by_lambda[ls, fm.target_layer]]
            fitted[fm.target_layer] = _with_settings(fm, extra)
            done += 1
            if progress is not None:
                progress(done, total)
    return [fitted[lt] for lt in range(n_tgt)]


def _fit_source(
    data: _Data,
    solver: str,
    grid: tuple[float, ...],
    ls: int,
    targets: list[int],
    chosen: tuple[dict[int, float], dict[int, float]] | None,
    base_settings: dict[str, Any],
) -> list[FittedMap]:
    """Every map from source block ``ls`` to ``targets``.

    ``chosen``: λ and validation R² per target, already known (``"auto"``'s second pass);
    otherwise λ is picked on validation here.
    """
    source = _make_source(data, solver, ls)
    scores: np.ndarray | None = None
    val_known: dict[int, float] = {}
    if chosen is not None:
        lambdas, val_known = chosen
    else:
        if len(grid) > 1:
            scores = source.validation_scores(targets, grid)
            picks = _pick_lambda(scores)
            val_known = {lt: float(scores[i, picks[i]]) for i, lt in enumerate(targets)}
        else:
            picks = np.zeros(len(targets), dtype=np.int64)
        lambdas = {lt: grid[int(k)] for lt, k in zip(targets, picks, strict=True)}
    out = []
    for i, lt in enumerate(targets):
        wt, bias, info = source.solve(lt, lambdas[lt])  # wt: [ds, dt], bias float64
        # the validation search already computed it (exactly, up to rounding)
        r2_val = val_known.get(lt)
        if r2_val is None:
            r2_val = _r2(*source.predict(wt, bias, lt, "val"))
        r2, mse, cosine = _test_metrics(*source.predict(wt, bias, lt, "test"), data.y_mean[lt])
        settings = dict(base_settings)
        settings.update(info)
        if scores is not None:
            settings["val_r2_by_lambda"] = [_json_float(r) for r in scores[i]]
        out.append(
            FittedMap(
                source_layer=ls,
                target_layer=lt,
                weight=np.ascontiguousarray(wt.T.to(torch.float32).numpy()),
                bias=None if bias is None else bias.to(torch.float32).numpy().copy(),
                r2=r2,
                mse=mse,
                cosine=cosine,
                r2_train=source.train_r2(lt, lambdas[lt]),
                r2_val=r2_val,
                n_train=data.n_train,
                n_val=data.n_val,
                n_test=data.n_test,
                settings=settings,
            )
        )
    return out


# -- per-source-layer solvers ---------------------------------------------------------------


class _Data:
    """The split states; targets converted to float64 once and kept as ``[n, Lt, dt]``.

    ``work`` is the dtype of the per-pair products; ``yc_work`` holds the centred targets in it.
    """

    def __init__(
        self,
        xs: torch.Tensor,
        ys: torch.Tensor,
        tr: np.ndarray,
        va: np.ndarray,
        te: np.ndarray,
        work: torch.dtype = torch.float64,
    ) -> None:
        self.xs, self.work = xs, work
        self.n_src, self.n_tgt, self.dt = xs.shape[1], ys.shape[1], ys.shape[2]
        self.idx = {
            "train": torch.from_numpy(tr),
            "val": torch.from_numpy(va),
            "test": torch.from_numpy(te),
        }
        self.n_train, self.n_val, self.n_test = len(tr), len(va), len(te)
        self.y = {part: ys[i].to(torch.float64) for part, i in self.idx.items()}
        self.y_mean = self.y["train"].mean(0)  # [Lt, dt]
        #: training and validation targets centred by the *training* mean
        self.yc = {part: self.y[part] - self.y_mean for part in ("train", "val")}
        self.yc_work = {part: y.to(work) for part, y in self.yc.items()}
        yv = self.y["val"]
        #: per target layer, Σ (y − ȳ_val)² over validation rows and dims
        self.sst_val = ((yv - yv.mean(0)) ** 2).sum(dim=(0, 2)) if self.n_val else None
        #: per target layer, Σ (y − ȳ_train)² over the training and the validation rows
        self.ss_centred = {part: (self.yc[part] ** 2).sum(dim=(0, 2)) for part in self.yc}

    def x(self, ls: int, part: str) -> torch.Tensor:
        return self.xs[self.idx[part], ls].to(torch.float64)

    def y_cols(self, part: str, targets: list[int], centred: bool) -> torch.Tensor:
        """``[n, len(targets)·dt]``; a view when ``targets`` is every layer in order."""
        y = self.yc[part] if centred else self.y[part]
        if targets != list(range(self.n_tgt)):
            y = y[:, targets]
        return y.reshape(y.shape[0], -1)


class _Source:
    """What one source block offers every target block: scores, solutions, predictions."""

    def __init__(self, data: _Data, ls: int) -> None:
        self.data, self.ls = data, ls
        self.x_part = {part: data.x(ls, part) for part in ("train", "val", "test")}

    def validation_scores(self, targets: list[int], grid: tuple[float, ...]) -> np.ndarray:
        """Validation R², ``[len(targets), len(grid)]``."""
        raise NotImplementedError

    def solve(
        self, lt: int, lam: float
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
        """``(Wᵀ [ds, dt], b [dt] or None, settings)``."""
        raise NotImplementedError

    def train_r2(self, lt: int, lam: float) -> float:
        raise NotImplementedError

    def predict(
        self, wt: torch.Tensor, bias: torch.Tensor | None, lt: int, part: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self.x_part[part] @ wt
        if bias is not None:
            pred = pred + bias
        return self.data.y[part][:, lt], pred


def _make_source(data: _Data, solver: str, ls: int) -> _Source:
    return _RidgeSource(data, ls) if solver == "ridge" else _SvdSource(data, ls)


class _RidgeSource(_Source):
    """One eigendecomposition ``XcᵀXc/n = V·diag(e)·Vᵀ`` shared by every λ and target."""

    def __init__(self, data: _Data, ls: int) -> None:
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
        self._p: dict[int, torch.Tensor] = {}

    def _shrink(self, lam: float) -> torch.Tensor:
        return 1.0 / (self.e + lam * self.scale)

    def _proj(self, lt: int) -> torch.Tensor:
        """``P_t = Vᵀ·XcᵀYc_t/n`` for target block ``lt``, ``[ds, dt]``, in the work dtype."""
        # One target at a time on purpose: the same flops as one product over every target's
        # columns, but each result is a few MB that the allocator reuses, where [ds, Lt·dt]
        # temporaries are fresh pages on every source layer (measured ~1.5× slower overall).
        if lt not in self._p:
            self._p[lt] = (self.z_train.T @ self.data.yc_work["train"][:, lt]).div_(self.n)
        return self._p[lt]

    def validation_scores(self, targets: list[int], grid: tuple[float, ...]) -> np.ndarray:
        # For target t with Wᵀ = V·D·P_t (D = diag(1/(e + λ_abs))) and Z = (X_val − x̄)·V:
        #   SSE_t(λ) = ‖Yc_t‖² − 2·Σ_k d_k·Σ_j (ZᵀYc_t)_kj·(P_t)_kj + dᵀ·(ZᵀZ ⊙ P_t·P_tᵀ)·d,
        # so the grid costs O(ds²) per λ once ZᵀYc_t and P_t·P_tᵀ are formed: λ is nearly
        # free, where predicting the validation rows would cost n_val·ds·dt per λ and target.
        data = self.data
        z = (self.x_part["val"] - self.x_mean) @ self.v  # [n_val, ds]
        gram = z.T @ z
        z_work = z.to(data.work)
        shrink = torch.stack([self._shrink(lam) for lam in grid], dim=1)  # [ds, G]
        blocks = _symmetric_blocks(z.shape[1])
        out = torch.empty(len(targets), len(grid), dtype=torch.float64)
        for i, lt in enumerate(targets):
            p = self._proj(lt)
            cross = (z_work.T @ data.yc_work["val"][:, lt]).mul_(p).sum(1).double()  # [ds]
            quad = torch.zeros(len(grid), dtype=torch.float64)
            for k, bk in enumerate(blocks):
                for bl in blocks[k:]:
                    h = (p[bk] @ p[bl].T).double().mul_(gram[bk, bl])
                    term = ((h @ shrink[bl]) * shrink[bk]).sum(0)
                    quad += term if bk == bl else 2.0 * term
            out[i] = data.ss_centred["val"][lt] - 2.0 * (cross @ shrink) + quad
        assert data.sst_val is not None
        return _r2_from(out.clamp(min=0.0), data.sst_val[targets][:, None])

    def solve(
        self, lt: int, lam: float
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
        p = self._proj(lt)
        # W = (D·P)ᵀ·Vᵀ is computed as [dt, ds] directly, the layout the map is stored in;
        # Wᵀ is its transposed view.
        wt = ((self._shrink(lam).to(p.dtype)[:, None] * p).T @ self.v_work.T).T
        bias = self.data.y_mean[lt] - (self.x_mean.to(wt.dtype) @ wt).double()
        return wt, bias, {"lambda": float(lam), "lambda_abs": float(lam * self.scale)}

    def predict(
        self, wt: torch.Tensor, bias: torch.Tensor | None, lt: int, part: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The centred form x·W + b = (x − x̄)·W + ȳ: in float32 the uncentred product would
        # lose the digits the large mean of residual states cancels out of it.
        centred = (self.x_part[part] - self.x_mean).to(wt.dtype)
        return self.data.y[part][:, lt], (centred @ wt).double() + self.data.y_mean[lt]

    def train_r2(self, lt: int, lam: float) -> float:
        # ‖Yc − Z·D·P‖² = ‖Yc‖² − n·Σ_k (2·d_k − e_k·d_k²)·P_kj², as ZᵀZ = n·E and ZᵀYc = n·P.
        p, d = self._proj(lt), self._shrink(lam)
        sst = float(self.data.ss_centred["train"][lt])
        squares = p.square().sum(1).double()
        sse = sst - self.n * float((2.0 * d - self.e * d**2) @ squares)
        return _r2_value(max(sse, 0.0), sst)


class _SvdSource(_Source):
    """ConTrans' solver: one thin SVD of the uncentred training rows, ``Wᵀ = pinv(X)·Y``."""

    def __init__(self, data: _Data, ls: int) -> None:
        super().__init__(data, ls)
        xtr = self.x_part["train"]
        u, s, vh = torch.linalg.svd(xtr, full_matrices=False)
        cutoff = float(s.max()) * max(xtr.shape) * torch.finfo(torch.float64).eps
        rank = int((s > cutoff).sum())
        self.u, self.s, self.q = u[:, :rank], s[:rank], vh[:rank].T
        self.rank, self.cutoff = rank, cutoff
        self._g: dict[int, torch.Tensor] = {}

    def _coords(self, lt: int) -> torch.Tensor:
        """``G = Uᵀ·Y_train`` for target ``lt``, ``[rank, dt]``."""
        if lt not in self._g:
            self._g[lt] = self.u.T @ self.data.y["train"][:, lt]
        return self._g[lt]

    def validation_scores(self, targets: list[int], grid: tuple[float, ...]) -> np.ndarray:
        data, dt = self.data, self.data.dt
        # X_val·pinv(X_train) first ([n_val, n_train]): cheaper than forming every Wᵀ.
        k = ((self.x_part["val"] @ self.q) / self.s) @ self.u.T
        pred = k @ data.y_cols("train", targets, centred=False)
        resid = data.y_cols("val", targets, centred=False) - pred
        sse = (resid**2).sum(0).reshape(len(targets), dt).sum(1)
        assert data.sst_val is not None
        return _r2_from(sse, data.sst_val[targets])[:, None].repeat(len(grid), axis=1)

    def solve(
        self, lt: int, lam: float
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
        wt = self.q @ (self._coords(lt) / self.s[:, None])
        return wt, None, {"rank": self.rank, "singular_value_cutoff": self.cutoff}

    def train_r2(self, lt: int, lam: float) -> float:
        # The training prediction is U·Uᵀ·Y, so SSE = ‖Y‖² − ‖Uᵀ·Y‖².
        y = self.data.y["train"][:, lt]
        sse = float((y**2).sum()) - float((self._coords(lt) ** 2).sum())
        sst = float(((y - y.mean(0)) ** 2).sum())
        return _r2_value(max(sse, 0.0), sst)


def _symmetric_blocks(d: int) -> list[slice]:
    """Row blocks for a symmetric product ``P·Pᵀ`` built from its upper triangle of blocks.

    Three blocks compute 6 of 9 block products (two thirds of the flops); blocks stay ≥ 128
    rows so each product is still an efficient matrix multiply.
    """
    n_blocks = max(1, min(3, d // 128))
    edges = [d * i // n_blocks for i in range(n_blocks + 1)]
    return [slice(edges[i], edges[i + 1]) for i in range(n_blocks)]


# -- selection ------------------------------------------------------------------------------


def _pick_lambda(scores: np.ndarray) -> np.ndarray:
    """Per row, the column with the best score; ties go to the larger λ (the later column)."""
    s = np.where(np.isnan(scores), -np.inf, scores)[:, ::-1]
    return np.asarray(s.shape[1] - 1 - np.argmax(s, axis=1), dtype=np.int64)


def _pick_source(val_r2: np.ndarray, n_src: int, n_tgt: int, lt: int) -> int:
    """Best validation R²; near-ties to the closest relative depth, then the shallower block."""
    if np.all(np.isnan(val_r2)):
        return relative_depth_pair(n_src, n_tgt, lt)
    best = np.nanmax(val_r2)
    candidates = [ls for ls in range(n_src) if val_r2[ls] >= best - AUTO_TIE_TOLERANCE]
    # |(ls+1)/Ls − (lt+1)/Lt| scaled by Ls·Lt, so it is an exact integer
    return min(candidates, key=lambda ls: (abs((ls + 1) * n_tgt - (lt + 1) * n_src), ls))


# -- metrics --------------------------------------------------------------------------------


def _r2_value(sse: float, sst: float) -> float:
    return 1.0 - sse / sst if sst > 0.0 else float("nan")


def _r2_from(sse: torch.Tensor, sst: torch.Tensor) -> np.ndarray:
    sse_np, sst_np = sse.numpy(), np.asarray(sst.numpy(), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sst_np > 0.0, 1.0 - sse_np / sst_np, np.nan)


def _sse(y: torch.Tensor, pred: torch.Tensor) -> float:
    return float(torch.sub(y, pred).square_().sum())


def _sst(y: torch.Tensor) -> float:
    return float(torch.sub(y, y.mean(0)).square_().sum())


def _r2(y: torch.Tensor, pred: torch.Tensor) -> float:
    return _r2_value(_sse(y, pred), _sst(y)) if y.shape[0] else float("nan")


def _test_metrics(
    y: torch.Tensor, pred: torch.Tensor, centre: torch.Tensor
) -> tuple[float, float, float]:
    """R², MSE and cosine (module docstring) of ``pred`` against ``y``, one residual for all."""
    if y.shape[0] == 0:
        return float("nan"), float("nan"), float("nan")
    sse = _sse(y, pred)
    a, b = pred - centre, y - centre
    norms = (a.norm(dim=1) * b.norm(dim=1)).clamp(min=torch.finfo(torch.float64).tiny)
    cosine = float(((a * b).sum(1) / norms).mean())
    return _r2_value(sse, _sst(y)), sse / y.numel(), cosine


# -- input checks ---------------------------------------------------------------------------


def _as_states(a: object, what: str) -> torch.Tensor:
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


def _resolve_pairs(pairs: object, n_src: int, n_tgt: int) -> tuple[str, list[tuple[int, int]]]:
    if isinstance(pairs, str):
        if pairs == "auto":
            return "auto", []
        if pairs == "all":
            return "all", [(ls, lt) for ls in range(n_src) for lt in range(n_tgt)]
        raise InvalidInput(
            f"pairs must be 'auto', 'all' or a list of (source layer, target layer), got {pairs!r}"
        )
    try:
        items = list(pairs)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidInput(
            f"pairs must be 'auto', 'all' or a list of (source layer, target layer), got {pairs!r}"
        ) from None
    if not items:
        raise InvalidInput("no layer pairs given")
    out: list[tuple[int, int]] = []
    for item in items:
        try:
            ls, lt = item
        except (TypeError, ValueError):
            raise InvalidInput(
                f"layer pair {item!r} is not a (source layer, target layer) pair"
            ) from None
        for layer, side, count in ((ls, "source", n_src), (lt, "target", n_tgt)):
            if isinstance(layer, bool) or not isinstance(layer, int | np.integer):
                raise InvalidInput(f"{side} layer {layer!r} in pair {item!r} is not an integer")
            if not 0 <= layer < count:
                raise InvalidInput(
                    f"{side} layer {layer} in pair ({ls}, {lt}) is out of range: the {side} "
                    f"has {count} layers (0..{count - 1})"
                )
        pair = (int(ls), int(lt))
        if pair in out:
            raise InvalidInput(f"layer pair {pair} is listed twice")
        out.append(pair)
    return "explicit", out


def _resolve_lambdas(lambdas: Sequence[float] | None, solver: str) -> tuple[float, ...]:
    if solver != "ridge":
        if lambdas is not None:
            raise InvalidInput(f"lambdas apply to the ridge solver only, not to {solver!r}")
        return (0.0,)
    if lambdas is None:
        return DEFAULT_LAMBDAS
    try:
        values = [float(x) for x in lambdas]
    except (TypeError, ValueError):
        raise InvalidInput(f"lambdas must be positive numbers, got {lambdas!r}") from None
    if not values or not all(np.isfinite(x) and x > 0.0 for x in values):
        raise InvalidInput(f"lambdas must be a non-empty list of positive numbers, got {values}")
    return tuple(sorted(set(values)))


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
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


def _check_int(value: object, what: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidInput(f"{what} must be an integer, got {value!r}")
    if value < minimum:
        raise InvalidInput(f"{what} must be at least {minimum}, got {value}")


def _to_numpy(a: object, what: str) -> np.ndarray:
    arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidInput(f"{what} must be a real-valued array, got dtype {arr.dtype}")
    return arr


def _json_float(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _with_settings(fm: FittedMap, extra: dict[str, Any]) -> FittedMap:
    return dataclasses.replace(fm, settings={**fm.settings, **extra})
