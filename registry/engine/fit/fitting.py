"""The fit itself, :func:`fit_pairs`: check the arguments, split the rows, run a solver per source
block, choose λ (and for ``"auto"`` the source block) on validation, score on test.

The solvers are in :mod:`.ridge` and :mod:`.lstsq`, the choices in :mod:`.selection`, the scores
in :mod:`.metrics`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from crx.registry.engine.fit.checks import LayeredStates, as_states
from crx.registry.engine.fit.lstsq import SvdSource
from crx.registry.engine.fit.maps import FittedMap
from crx.registry.engine.fit.metrics import COSINE_DEFINITION, R2_DEFINITION, held_out_metrics, r2
from crx.registry.engine.fit.ridge import RidgeSource
from crx.registry.engine.fit.selection import (
    pick_lambda,
    pick_source,
    relative_depth_pair,
    resolve_pairs,
)
from crx.registry.engine.fit.solvers import (
    SOLVERS,
    Data,
    Source,
    resolve_lambdas,
    resolve_precision,
)
from crx.registry.engine.fit.splits import DEFAULT_SPLIT, check_fractions, split_indices
from crx.registry.errors import InvalidInput
from crx.registry.progress import Progress


def fit_pairs(
    X: np.ndarray | torch.Tensor | LayeredStates,
    Y: np.ndarray | torch.Tensor | LayeredStates,
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

    ``X`` and ``Y``: ``[N, L, d]`` arrays or :class:`~.checks.LayeredStates` read a layer at a
    time (per-layer shards on disk); either way the fit holds about one layer of each in
    float64 at a time, and the results are the same.

    ``pairs``: an explicit list of ``(source block, target block)`` (maps come back in that
    order); ``"all"``: every pair, ordered by source then target block; ``"auto"``: for each
    target block (in order) the source block with the best *validation* R², ties (within
    :data:`~.selection.AUTO_TIE_TOLERANCE`) going to the closest relative depth (``(ls+1)/Ls``
    vs ``(lt+1)/Lt``), then the shallower block. The validation R² of every candidate source
    block is kept in ``settings["auto_val_r2"]``.

    ``lambdas`` (ridge only): the grid of relative penalties (see :mod:`.ridge`); one value
    skips the validation search. ``precision``: the dtype of the ridge sweep's per-pair
    products, ``"float32"`` (the ridge default) or ``"float64"``; ``lstsq-svd`` is float64 only
    (:mod:`.ridge`). ``progress(done, total)`` is called after each unit of work: a source
    layer (scoring or fitting) or, in the second pass of ``"auto"``, a map.

    Raises :class:`~registry.errors.InvalidInput` for arrays that are not ``[N, L, d]`` or
    disagree on N, non-finite values, an unknown solver, a layer out of range, or splits too
    small to fit and select on.
    """
    if solver not in SOLVERS:
        raise InvalidInput(f"unknown solver {solver!r}: choose one of {', '.join(SOLVERS)}")
    precision = resolve_precision(solver, precision)
    xs = as_states(X, "the source states X")
    ys = as_states(Y, "the target states Y")
    if xs.shape[0] != ys.shape[0]:
        raise InvalidInput(
            f"the source states have {xs.shape[0]} rows and the target states {ys.shape[0]}: "
            "X and Y must hold the same texts, in the same order"
        )
    n, n_src, _ = xs.shape
    n_tgt = ys.shape[1]
    mode, explicit = resolve_pairs(pairs, n_src, n_tgt)
    grid = resolve_lambdas(lambdas, solver)
    fractions = check_fractions(split)
    tr, va, te = split_indices(n, fractions, shuffle=shuffle, seed=seed)
    if len(tr) < 2:
        raise InvalidInput(f"the training split has {len(tr)} rows of {n}: at least 2 are needed")
    needs_val = mode == "auto" or len(grid) > 1
    if needs_val and len(va) == 0:
        why = "choosing the source layer" if mode == "auto" else "choosing λ"
        raise InvalidInput(f"the validation split is empty, but {why} needs it: give it rows")

    data = Data(xs, ys, tr, va, te, getattr(torch, precision))
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
    data: Data,
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
        # only the scores are kept of this pass: the chosen pairs are solved in the second
        scores = source.validation_scores(all_targets, grid, keep=False)  # [n_tgt, n_grid]
        by_lambda[ls] = scores
        pick = pick_lambda(scores)
        val_r2[ls] = scores[np.arange(n_tgt), pick]
        best_lam[ls] = np.asarray(grid)[pick]
        done += 1
        if progress is not None:
            progress(done, total)

    chosen: dict[int, list[int]] = {}
    for lt in range(n_tgt):
        chosen.setdefault(pick_source(val_r2[:, lt], n_src, n_tgt, lt), []).append(lt)
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
    data: Data,
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
            picks = pick_lambda(scores)
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
            r2_val = r2(*source.predict(wt, bias, lt, "val"))
        r2_test, mse, cosine = held_out_metrics(
            *source.predict(wt, bias, lt, "test"), data.target(lt).mean
        )
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
                r2=r2_test,
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


def _make_source(data: Data, solver: str, ls: int) -> Source:
    return RidgeSource(data, ls) if solver == "ridge" else SvdSource(data, ls)


def _json_float(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _with_settings(fm: FittedMap, extra: dict[str, Any]) -> FittedMap:
    return dataclasses.replace(fm, settings={**fm.settings, **extra})
