"""The fit itself, :func:`fit_pairs`: check the arguments, split the rows, run a solver per source
block, choose λ (and for ``"auto"`` the source block) on validation, score on test.

The solvers are in :mod:`.ridge` and :mod:`.lstsq`, the choices in :mod:`.selection`, the scores
in :mod:`.metrics`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from crx.registry.engine.fit.anchored import Anchors, CorpusBasis, solve_anchored
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
    anchors: Anchors | None = None,
    progress: Progress | None = None,
) -> list[FittedMap]:
    """Fit ``Y[:, lt] ≈ W · X[:, ls] + b`` for the chosen layer pairs.

    ``X`` and ``Y``: ``[N, L, d]`` arrays or :class:`~.checks.LayeredStates` read a layer at a
    time (per-layer shards on disk); either way the fit holds one target layer in float64 and
    a block of factorised source layers (:data:`SOURCE_BLOCK_BYTES`) at a time, and the results
    are the same bit for bit.

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

    ``anchors`` (the ``anchored`` solver only, which needs them): paired concept vectors of
    both models, fitted as extra rows with weight and λ chosen leaving concepts out
    (:mod:`.anchored`); ``"auto"`` picks each target block's source block as ridge does (best
    validation R² on the corpus), then fits the anchored map there.

    Raises :class:`~registry.errors.InvalidInput` for arrays that are not ``[N, L, d]`` or
    disagree on N, non-finite values, an unknown solver, a layer out of range, or splits too
    small to fit and select on.
    """
    if solver not in SOLVERS:
        raise InvalidInput(f"unknown solver {solver!r}: choose one of {', '.join(SOLVERS)}")
    precision = resolve_precision(solver, precision)
    if (solver == "anchored") != (anchors is not None):
        raise InvalidInput(
            "the anchored solver needs anchors (paired concept vectors)"
            if anchors is None
            else f"anchors apply to the anchored solver only, not to {solver!r}"
        )
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
        "centring": solver != "lstsq-svd",
        "bias": solver != "lstsq-svd",
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

    if anchors is not None:
        return _fit_anchored(data, anchors, mode, explicit, grid, base_settings, progress)
    if mode == "auto":
        return _fit_auto(data, solver, grid, base_settings, progress)
    by_source: dict[int, list[int]] = {}
    for ls, lt in explicit:
        by_source.setdefault(ls, []).append(lt)
    fitted: dict[tuple[int, int], FittedMap] = {}
    done = 0
    for block in source_blocks(data, list(by_source)):
        sources = [_make_source(data, solver, ls) for ls in block]
        for lt in sorted({lt for ls in block for lt in by_source[ls]}):
            for source in sources:
                if lt in by_source[source.ls]:
                    fm = _fit_pair(data, source, grid, lt, None, base_settings)
                    fitted[(source.ls, lt)] = fm
        del sources
        for _ in block:
            done += 1
            if progress is not None:
                progress(done, len(by_source))
    return [fitted[p] for p in explicit]


#: How much memory the source layers factorised together may take. The target layers stream
#: past a block of sources one at a time (each read and converted to float64 once per block),
#: so a bigger block reads the targets fewer times; results do not depend on it.
SOURCE_BLOCK_BYTES = 128 * 2**20


def source_blocks(data: Data, layers: list[int]) -> list[list[int]]:
    """``layers`` cut into runs whose sources fit in :data:`SOURCE_BLOCK_BYTES` together."""
    n, ds = data.n_train + data.n_val + data.n_test, data.ds
    # about what a source keeps: its rows (training ones as float32 in the eigenbasis, the
    # held-out ones in float64), the eigenbasis in two dtypes and the validation Gram matrix
    per_source = 8 * n * ds + 8 * 3 * ds * ds
    size = max(1, SOURCE_BLOCK_BYTES // per_source)
    return [layers[i : i + size] for i in range(0, len(layers), size)]


@dataclass
class _AutoScores:
    """The first pass of ``"auto"``: every pair's validation R² at its best λ."""

    val_r2: np.ndarray  # [n_src, n_tgt]
    best_lam: np.ndarray  # [n_src, n_tgt]
    by_lambda: np.ndarray  # [n_src, n_tgt, len(grid)]

    def source_for(self, lt: int) -> int:
        n_src, n_tgt = self.val_r2.shape
        return pick_source(self.val_r2[:, lt], n_src, n_tgt, lt)

    def choice_settings(self, lt: int) -> dict[str, Any]:
        n_src, n_tgt = self.val_r2.shape
        return {
            "auto_val_r2": [_json_float(r) for r in self.val_r2[:, lt]],
            "auto_selection": "best validation R2, ties by relative depth",
            "relative_depth_source_layer": relative_depth_pair(n_src, n_tgt, lt),
        }


def _auto_scores(
    data: Data, solver: str, grid: tuple[float, ...], progress: Progress | None, total: int
) -> _AutoScores:
    n_src, n_tgt = data.n_src, data.n_tgt
    done = 0
    val_r2 = np.full((n_src, n_tgt), np.nan)
    best_lam = np.full((n_src, n_tgt), np.nan)
    by_lambda = np.full((n_src, n_tgt, len(grid)), np.nan)
    for block in source_blocks(data, list(range(n_src))):
        sources = [_make_source(data, solver, ls) for ls in block]
        for lt in range(n_tgt):
            for source in sources:
                # only the scores are kept of this pass: the chosen pairs are solved in the next
                by_lambda[source.ls, lt] = source.validation_scores([lt], grid, keep=False)[0]
        del sources
        for ls in block:
            pick = pick_lambda(by_lambda[ls])
            val_r2[ls] = by_lambda[ls][np.arange(n_tgt), pick]
            best_lam[ls] = np.asarray(grid)[pick]
            done += 1
            if progress is not None:
                progress(done, total)
    return _AutoScores(val_r2, best_lam, by_lambda)


def _fit_auto(
    data: Data,
    solver: str,
    grid: tuple[float, ...],
    base_settings: dict[str, Any],
    progress: Progress | None,
) -> list[FittedMap]:
    n_src, n_tgt = data.n_src, data.n_tgt
    total, done = n_src + n_tgt, n_src
    scores = _auto_scores(data, solver, grid, progress, total)
    val_r2, best_lam, by_lambda = scores.val_r2, scores.best_lam, scores.by_lambda

    chosen: dict[int, list[int]] = {}
    for lt in range(n_tgt):
        chosen.setdefault(scores.source_for(lt), []).append(lt)
    fitted: dict[int, FittedMap] = {}
    for ls, targets in chosen.items():
        source = _make_source(data, solver, ls)
        for lt in targets:
            known = (float(best_lam[ls, lt]), float(val_r2[ls, lt]))
            fm = _fit_pair(data, source, grid, lt, known, base_settings)
            extra = scores.choice_settings(fm.target_layer)
            if solver == "ridge" and len(grid) > 1:
                extra["val_r2_by_lambda"] = [_json_float(r) for r in by_lambda[ls, fm.target_layer]]
            fitted[fm.target_layer] = _with_settings(fm, extra)
            done += 1
            if progress is not None:
                progress(done, total)
    return [fitted[lt] for lt in range(n_tgt)]


def _fit_pair(
    data: Data,
    source: Source,
    grid: tuple[float, ...],
    lt: int,
    chosen: tuple[float, float] | None,
    base_settings: dict[str, Any],
) -> FittedMap:
    """The map from ``source``'s block to target block ``lt``.

    ``chosen``: λ and validation R², already known (``"auto"``'s second pass); otherwise λ is
    picked on validation here.
    """
    scores: np.ndarray | None = None
    r2_val: float | None = None
    if chosen is not None:
        lam, r2_val = chosen
    elif len(grid) > 1:
        scores = source.validation_scores([lt], grid)[0]
        pick = int(pick_lambda(scores[None])[0])
        lam, r2_val = grid[pick], float(scores[pick])
    else:
        lam = grid[0]
    wt, bias, info = source.solve(lt, lam)  # wt: [ds, dt], bias float64
    # the validation search already computed it (exactly, up to rounding)
    if r2_val is None:
        r2_val = r2(*source.predict(wt, bias, lt, "val"))
    r2_test, mse, cosine = held_out_metrics(
        *source.predict(wt, bias, lt, "test"), data.target(lt).mean
    )
    settings = dict(base_settings)
    settings.update(info)
    if scores is not None:
        settings["val_r2_by_lambda"] = [_json_float(r) for r in scores]
    fm = FittedMap(
        source_layer=source.ls,
        target_layer=lt,
        weight=np.ascontiguousarray(wt.T.to(torch.float32).numpy()),
        bias=None if bias is None else bias.to(torch.float32).numpy().copy(),
        r2=r2_test,
        mse=mse,
        cosine=cosine,
        r2_train=source.train_r2(lt, lam),
        r2_val=r2_val,
        n_train=data.n_train,
        n_val=data.n_val,
        n_test=data.n_test,
        settings=settings,
    )
    source.forget(lt)  # what it kept of this target is not needed again
    return fm


def _fit_anchored(
    data: Data,
    anchors: Anchors,
    mode: str,
    explicit: list[tuple[int, int]],
    grid: tuple[float, ...],
    base_settings: dict[str, Any],
    progress: Progress | None,
) -> list[FittedMap]:
    """The anchored maps: at ridge's ``auto`` pairs (its first pass) or the pairs given."""
    extra: dict[int, dict[str, Any]] = {}
    done = total = 0
    if mode == "auto":
        # the source block as ridge picks it (a pass of validation scores, nothing solved)
        total = data.n_src + data.n_tgt
        scores = _auto_scores(data, "ridge", grid, progress, total)
        pairs = [(scores.source_for(lt), lt) for lt in range(data.n_tgt)]
        extra = {lt: scores.choice_settings(lt) for lt in range(data.n_tgt)}
        done = data.n_src
    else:
        pairs, total = explicit, len(explicit)
    out = []
    # several target blocks often share a source block: it is read and decomposed once
    sources: dict[int, tuple[dict[str, torch.Tensor], CorpusBasis]] = {}
    for ls, lt in pairs:
        if ls not in sources:
            rows = data.x(ls)
            sources[ls] = rows, CorpusBasis.of(rows["train"])
        (x, basis), target = sources[ls], data.target(lt)
        vs, vt = anchors.at(ls, lt)
        sol = solve_anchored(x["train"], target.y["train"], vs, vt, list(anchors.groups),
                             corpus=basis)  # fmt: skip
        wt = sol.wt
        bias = target.mean - x["train"].mean(0) @ wt
        fits = {part: (target.y[part], x[part] @ wt + bias) for part in ("train", "val", "test")}
        r2_test, mse, cosine = held_out_metrics(*fits["test"], target.mean)
        settings = {**base_settings, **sol.settings(), **extra.get(lt, {})}
        out.append(
            FittedMap(
                source_layer=ls,
                target_layer=lt,
                weight=np.ascontiguousarray(wt.T.to(torch.float32).numpy()),
                bias=bias.to(torch.float32).numpy().copy(),
                r2=r2_test,
                mse=mse,
                cosine=cosine,
                r2_train=r2(*fits["train"]),
                r2_val=r2(*fits["val"]),
                n_train=data.n_train,
                n_val=data.n_val,
                n_test=data.n_test,
                settings=settings,
            )
        )
        done += 1
        if progress is not None:
            progress(done, total)
    return out


def _make_source(data: Data, solver: str, ls: int) -> Source:
    return RidgeSource(data, ls) if solver == "ridge" else SvdSource(data, ls)


def _json_float(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _with_settings(fm: FittedMap, extra: dict[str, Any]) -> FittedMap:
    return dataclasses.replace(fm, settings={**fm.settings, **extra})
