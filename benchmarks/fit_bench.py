"""All-pairs map sweep: shared factorisation (crx ridge) vs one SVD least-squares per pair.

Shapes of SmolLM2-135M (30 blocks, d=576) → Gemma-3-270m (18 blocks, d=640) with N = 2,000
texts, the ConTrans 1,600/200/200 file-order split. The states are synthetic but structured: a
shared latent with a decaying spectrum, each component visible over a band of relative depth (so
layers at similar depth predict each other best), anisotropic scales, a large mean offset and a
few outlier dimensions like real residual streams, and noise such that an unregularised fit
overfits as it did on the real models (see ``../shared/design/REFERENCE_RESULTS.md``).

Timed, in one process on the same data:

- ``crx ridge, all pairs``: ``fit_pairs(X, Y, "all")`` (one eigendecomposition per source layer,
  every λ of the grid and every target layer from it, λ chosen on validation; the per-pair
  products in float32, the default);
- ``crx ridge, all pairs, float64``: the same with ``precision="float64"`` (``crx fit
  --precision float64``; the default runs the per-pair products in float32), right after it,
  and how far the default's R² and λ choices are from it;
- ``crx ridge, auto``: ``fit_pairs(X, Y, "auto")`` (the default of ``crx fit``);
- ``crx lstsq-svd, all pairs``: ConTrans' solver with its SVD shared per source layer;
- ``naive``: what a straightforward implementation of ConTrans' solver does for every pair,
  ``torch.linalg.lstsq(X_train, Y_train, driver="gelsd")`` in float64 plus the test R², on a
  random sample of pairs (``--sample``, spread evenly over the source layers and run between
  the sweep's source layers so both meet the same machine load), extrapolated linearly to all
  540 pairs.

Wall and CPU seconds are both recorded; with ``--threads 1`` CPU time is the cost of the work
itself, whatever else the machine runs.

Held-out R² is on the 200 test rows (definition in ``registry/engine/fit/metrics.py``).

Reproduce (writes ``benchmarks/results/fit.json``):

    .venv/bin/python benchmarks/fit_bench.py --threads 1

``--threads 0`` keeps torch's default thread count; on a machine shared with other jobs a single
thread gives steadier timings (oversubscribed OpenMP threads slow small operations ~30×).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from crx.registry.engine.fit import FittedMap, fit_pairs, relative_depth_pair, split_indices

HERE = Path(__file__).resolve().parent


def make_states(
    n: int, n_src: int, ds: int, n_tgt: int, dt: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    k = 768
    z = rng.standard_normal((n, k)) * (np.arange(1, k + 1) ** -0.5)
    centre = rng.uniform(0.0, 1.0, k)  # the relative depth where each component is visible

    def stack(n_layers: int, d: int, noise: float) -> np.ndarray:
        basis = rng.standard_normal((k, d)) / np.sqrt(k)
        scales = np.exp(rng.normal(0.0, 0.5, d))
        scales[rng.choice(d, 3, replace=False)] *= 20.0  # outlier dimensions
        out = np.empty((n, n_layers, d), dtype=np.float32)
        for layer in range(n_layers):
            depth = (layer + 1) / n_layers
            gate = np.exp(-(((depth - centre) / 0.3) ** 2))
            clean = ((z * gate) @ basis) * scales
            clean += 0.3 * rng.standard_normal(k) @ basis  # a slowly varying layer-specific part
            sigma = clean.std(0)
            offset = 10.0 * sigma * rng.standard_normal(d)
            out[:, layer] = clean + noise * sigma * rng.standard_normal((n, d)) + offset
        return out

    return stack(n_src, ds, noise=0.5), stack(n_tgt, dt, noise=1.0)


def naive_pair(x: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray) -> float:
    """One SVD least-squares fit (no bias) and its test R², as a per-pair loop would do it."""
    xtr, ytr = torch.from_numpy(x[tr]).double(), torch.from_numpy(y[tr]).double()
    wt = torch.linalg.lstsq(xtr, ytr, driver="gelsd").solution
    yte = torch.from_numpy(y[te]).double()
    pred = torch.from_numpy(x[te]).double() @ wt
    sst = float(((yte - yte.mean(0)) ** 2).sum())
    return 1.0 - float(((yte - pred) ** 2).sum()) / sst


def light(maps: list[FittedMap]) -> list[FittedMap]:
    """The maps without their weights: each sweep then starts with the same free memory.

    Keeping 540 maps (~800 MB) alive made the next sweep measurably slower (fresh pages for
    every temporary), which would favour whichever sweep runs first.
    """
    empty = np.empty(0, dtype=np.float32)
    return [dataclasses.replace(m, weight=empty, bias=None) for m in maps]


def floor_cpu_seconds(x: np.ndarray, y: np.ndarray, tr: np.ndarray, sources: range) -> float:
    """CPU time of the two float64 products no all-pairs sweep can skip, for ``sources``.

    Per source layer: ``XcᵀYc`` against every target layer (``n·ds·Lt·dt``) and the weights
    themselves (``ds²·Lt·dt``, one ``[ds, ds]`` factor applied to every target's columns).
    """
    yc = torch.from_numpy(y[tr]).double().reshape(len(tr), -1)
    yc -= yc.mean(0)
    total = 0.0
    for ls in sources:
        xc = torch.from_numpy(x[tr, ls]).double()
        xc -= xc.mean(0)
        factor = torch.linalg.qr(torch.randn(xc.shape[1], xc.shape[1], dtype=torch.float64))[0]
        c0 = time.process_time()
        factor @ (xc.T @ yc)
        total += time.process_time() - c0
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--shape", default="30,576,18,640", help="Ls,ds,Lt,dt")
    ap.add_argument("--sample", type=int, default=60, help="pairs timed for the naive loop")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "fit.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_src, ds, n_tgt, dt = (int(v) for v in args.shape.split(","))
    load_before = os.getloadavg()

    x, y = make_states(args.n, n_src, ds, n_tgt, dt, args.seed)
    tr, _, te = split_indices(args.n)
    all_pairs = [(ls, lt) for ls in range(n_src) for lt in range(n_tgt)]

    # The naive pairs run inside the sweep's progress callback, right after the sweep finishes
    # the same source layer, so both see the same load on a shared machine; their time is taken
    # out of the sweep's. CPU time (process_time) is reported beside wall time: with one thread
    # it is what the work itself cost, whatever else the machine was doing.
    rng = np.random.default_rng(args.seed)
    per_source = max(1, round(args.sample / n_src))
    sample = [
        (ls, int(lt))
        for ls in range(n_src)
        for lt in sorted(rng.choice(n_tgt, min(per_source, n_tgt), replace=False))
    ]
    naive_r2: dict[tuple[int, int], float] = {}
    naive_clock = {"wall": 0.0, "cpu": 0.0}

    def run_naive(done: int, total: int) -> None:
        w0, c0 = time.perf_counter(), time.process_time()
        for ls, lt in sample:
            if ls == done - 1:
                naive_r2[(ls, lt)] = naive_pair(x[:, ls], y[:, lt], tr, te)
        naive_clock["wall"] += time.perf_counter() - w0
        naive_clock["cpu"] += time.process_time() - c0

    w0, c0 = time.perf_counter(), time.process_time()
    ridge = light(fit_pairs(x, y, "all", progress=run_naive))
    t_ridge = time.perf_counter() - w0 - naive_clock["wall"]
    c_ridge = time.process_time() - c0 - naive_clock["cpu"]
    scale = len(all_pairs) / len(sample)
    t_naive, c_naive = naive_clock["wall"] * scale, naive_clock["cpu"] * scale

    w0, c0 = time.perf_counter(), time.process_time()
    ridge64 = light(fit_pairs(x, y, "all", precision="float64"))
    t_ridge64, c_ridge64 = time.perf_counter() - w0, time.process_time() - c0

    w0, c0 = time.perf_counter(), time.process_time()
    auto = fit_pairs(x, y, "auto")
    t_auto, c_auto = time.perf_counter() - w0, time.process_time() - c0
    w0, c0 = time.perf_counter(), time.process_time()
    svd = light(fit_pairs(x, y, "all", solver="lstsq-svd"))
    t_svd, c_svd = time.perf_counter() - w0, time.process_time() - c0
    c_floor = floor_cpu_seconds(x, y, tr, sources=range(0, n_src, max(1, n_src // 5)))
    c_floor *= n_src / len(range(0, n_src, max(1, n_src // 5)))
    load_after = os.getloadavg()

    r2_ridge = {(m.source_layer, m.target_layer): m.r2 for m in ridge}
    r2_svd = {(m.source_layer, m.target_layer): m.r2 for m in svd}
    depth_pairs = [(relative_depth_pair(n_src, n_tgt, lt), lt) for lt in range(n_tgt)]

    def mean(values: list[float]) -> float:
        return float(np.mean(values))

    seconds = {
        "ridge_all_pairs": t_ridge,
        "ridge_all_pairs_float64": t_ridge64,
        "ridge_auto": t_auto,
        "lstsq_svd_all_pairs_shared_svd": t_svd,
        "naive_svd_per_pair_sampled": naive_clock["wall"],
        "naive_svd_per_pair_extrapolated_all": t_naive,
    }
    cpu_seconds = {
        "ridge_all_pairs": c_ridge,
        "ridge_all_pairs_float64": c_ridge64,
        "ridge_auto": c_auto,
        "lstsq_svd_all_pairs_shared_svd": c_svd,
        "naive_svd_per_pair_sampled": naive_clock["cpu"],
        "naive_svd_per_pair_extrapolated_all": c_naive,
    }
    test_r2 = {
        "ridge_mean_all_pairs": mean(list(r2_ridge.values())),
        "ridge_float64_mean_all_pairs": mean([m.r2 for m in ridge64]),
        "ridge_float32_vs_float64_max_abs_r2_diff": max(
            abs(a.r2 - b.r2) for a, b in zip(ridge, ridge64, strict=True)
        ),
        "ridge_float32_same_lambda_as_float64": sum(
            a.settings["lambda"] == b.settings["lambda"]
            for a, b in zip(ridge, ridge64, strict=True)
        ),
        "lstsq_svd_mean_all_pairs": mean(list(r2_svd.values())),
        "ridge_mean_sampled_pairs": mean([r2_ridge[p] for p in sample]),
        "naive_mean_sampled_pairs": mean(list(naive_r2.values())),
        "naive_vs_crx_lstsq_svd_max_abs_diff": max(abs(naive_r2[p] - r2_svd[p]) for p in sample),
        "ridge_pairs_at_least_lstsq_svd": sum(r2_ridge[p] >= r2_svd[p] for p in all_pairs),
        "relative_depth_pairs_ridge_mean": mean([r2_ridge[p] for p in depth_pairs]),
        "relative_depth_pairs_lstsq_svd_mean": mean([r2_svd[p] for p in depth_pairs]),
        "auto_ridge_mean": mean([m.r2 for m in auto]),
    }
    speedup = t_naive / t_ridge
    result = {
        "command": "python benchmarks/fit_bench.py"
        + (f" --threads {args.threads}" if args.threads else ""),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load_average_1min_before_after": [load_before[0], load_after[0]],
        },
        "shape": {"n": args.n, "Ls": n_src, "ds": ds, "Lt": n_tgt, "dt": dt, "split": "80/10/10"},
        "data": f"synthetic, structured (see the script's docstring), seed {args.seed}",
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "naive_pairs_timed": len(sample),
        "naive_extrapolation": (
            f"{len(sample)} random pairs ({per_source} per source layer) timed, interleaved with "
            f"the sweep, scaled to {len(all_pairs)}"
        ),
        "speedup_ridge_all_vs_naive": speedup,
        "speedup_ridge_all_vs_naive_cpu_time": c_naive / c_ridge,
        "speedup_ridge_all_float64_vs_naive": t_naive / t_ridge64,
        "speedup_ridge_all_float64_vs_naive_cpu_time": c_naive / c_ridge64,
        "floor_cpu_seconds_xty_and_weights": c_floor,
        "speedup_ceiling_cpu_time": c_naive / c_floor,
        "floor_note": (
            "float64 XcᵀYc and W for every pair, nothing else (measured on a fifth of the "
            "source layers, scaled): a sweep that returns every W cannot beat naive/floor"
        ),
        "speedup_lstsq_svd_shared_vs_naive": t_naive / t_svd,
        "speedup_lstsq_svd_shared_vs_naive_cpu_time": c_naive / c_svd,
        "test_r2": test_r2,
        "auto_pairs": [[m.source_layer, m.target_layer] for m in auto],
        "relative_depth_pairs": [list(p) for p in depth_pairs],
        "train_r2_mean": {
            "ridge": mean([m.r2_train for m in ridge]),
            "lstsq_svd": mean([m.r2_train for m in svd]),
        },
        "lambda_chosen_counts": {
            str(lam): sum(m.settings["lambda"] == lam for m in ridge)
            for lam in sorted({m.settings["lambda"] for m in ridge})
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    r = test_r2
    rows = [
        (
            f"crx ridge, all {len(all_pairs)} pairs (float32 products)",
            "ridge_all_pairs",
            r["ridge_mean_all_pairs"],
        ),
        (
            f"crx ridge, all {len(all_pairs)} pairs, float64",
            "ridge_all_pairs_float64",
            r["ridge_float64_mean_all_pairs"],
        ),
        (f"crx ridge, auto ({len(auto)} maps)", "ridge_auto", r["auto_ridge_mean"]),
        (
            "crx lstsq-svd, all pairs (shared SVD)",
            "lstsq_svd_all_pairs_shared_svd",
            r["lstsq_svd_mean_all_pairs"],
        ),
        (
            f"naive SVD per pair ({len(sample)} timed, extrapolated)",
            "naive_svd_per_pair_extrapolated_all",
            r["naive_mean_sampled_pairs"],
        ),
    ]
    print(f"{'method':44} {'wall s':>8} {'cpu s':>8} {'test R² (mean)':>15}")
    for label, key, r2 in rows:
        print(f"{label:44} {seconds[key]:8.1f} {cpu_seconds[key]:8.1f} {r2:15.3f}")
    print(f"{'floor: float64 XcᵀYc and W only':44} {'':8} {c_floor:8.1f}")
    print(
        f"speed-up ridge all pairs vs naive: {speedup:.1f}x wall, "
        f"{c_naive / c_ridge:.1f}x cpu; on the sampled pairs ridge R² "
        f"{r['ridge_mean_sampled_pairs']:.3f} vs naive {r['naive_mean_sampled_pairs']:.3f}; "
        f"at the relative-depth pairs ridge {r['relative_depth_pairs_ridge_mean']:.3f} vs "
        f"lstsq-svd {r['relative_depth_pairs_lstsq_svd_mean']:.3f}"
    )
    print(
        f"float64: {t_naive / t_ridge64:.1f}x wall, {c_naive / c_ridge64:.1f}x cpu; the default's "
        f"max |ΔR²| from it {r['ridge_float32_vs_float64_max_abs_r2_diff']:.1e}, same λ on "
        f"{r['ridge_float32_same_lambda_as_float64']} of {len(all_pairs)} pairs"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
