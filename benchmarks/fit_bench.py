"""All-pairs map sweep: shared factorisation (crx ridge) vs one SVD least-squares per pair.

Shapes of SmolLM2-135M (30 blocks, d=576) → Gemma-3-270m (18 blocks, d=640) with N = 2,000
texts, the ConTrans 1,600/200/200 file-order split. The states are synthetic but structured: a
shared latent with a decaying spectrum, each component visible over a band of relative depth (so
layers at similar depth predict each other best), anisotropic scales, a large mean offset and a
few outlier dimensions like real residual streams, and noise such that an unregularised fit
overfits as it did on the real models (see ``../shared/design/REFERENCE_RESULTS.md``).

Timed, in one process on the same data:

- ``crx ridge, all pairs``: ``fit_pairs(X, Y, "all")`` (one eigendecomposition per source layer,
  every λ of the grid and every target layer from it, λ chosen on validation);
- ``crx ridge, auto``: ``fit_pairs(X, Y, "auto")`` (the default of ``crx fit``);
- ``crx lstsq-svd, all pairs``: ConTrans' solver with its SVD shared per source layer;
- ``naive``: what a straightforward implementation of ConTrans' solver does for every pair,
  ``torch.linalg.lstsq(X_train, Y_train, driver="gelsd")`` in float64 plus the test R², on a
  random sample of pairs (``--sample``), extrapolated linearly to all 540 pairs.

Held-out R² is on the 200 test rows (definition in ``registry/engine/fit.py``).

Reproduce (writes ``benchmarks/results/fit.json``):

    .venv/bin/python benchmarks/fit_bench.py --threads 1

``--threads 0`` keeps torch's default thread count; on a machine shared with other jobs a single
thread gives steadier timings (oversubscribed OpenMP threads slow small operations ~30×).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from registry.engine.fit import fit_pairs, relative_depth_pair, split_indices

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--shape", default="30,576,18,640", help="Ls,ds,Lt,dt")
    ap.add_argument("--sample", type=int, default=54, help="pairs timed for the naive loop")
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

    t0 = time.perf_counter()
    ridge = fit_pairs(x, y, "all")
    t_ridge = time.perf_counter() - t0
    t0 = time.perf_counter()
    auto = fit_pairs(x, y, "auto")
    t_auto = time.perf_counter() - t0
    t0 = time.perf_counter()
    svd = fit_pairs(x, y, "all", solver="lstsq-svd")
    t_svd = time.perf_counter() - t0

    rng = np.random.default_rng(args.seed)
    sample = [all_pairs[i] for i in sorted(rng.choice(len(all_pairs), args.sample, replace=False))]
    naive_r2 = {}
    t0 = time.perf_counter()
    for ls, lt in sample:
        naive_r2[(ls, lt)] = naive_pair(x[:, ls], y[:, lt], tr, te)
    t_naive_sample = time.perf_counter() - t0
    t_naive = t_naive_sample * len(all_pairs) / len(sample)
    load_after = os.getloadavg()

    r2_ridge = {(m.source_layer, m.target_layer): m.r2 for m in ridge}
    r2_svd = {(m.source_layer, m.target_layer): m.r2 for m in svd}
    depth_pairs = [(relative_depth_pair(n_src, n_tgt, lt), lt) for lt in range(n_tgt)]

    def mean(values: list[float]) -> float:
        return float(np.mean(values))

    seconds = {
        "ridge_all_pairs": t_ridge,
        "ridge_auto": t_auto,
        "lstsq_svd_all_pairs_shared_svd": t_svd,
        "naive_svd_per_pair_sampled": t_naive_sample,
        "naive_svd_per_pair_extrapolated_all": t_naive,
    }
    test_r2 = {
        "ridge_mean_all_pairs": mean(list(r2_ridge.values())),
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
        "naive_pairs_timed": len(sample),
        "naive_extrapolation": f"{len(sample)} random pairs timed, scaled to {len(all_pairs)}",
        "speedup_ridge_all_vs_naive": speedup,
        "speedup_lstsq_svd_shared_vs_naive": t_naive / t_svd,
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

    s, r = seconds, test_r2
    print(f"{'method':44} {'seconds':>9} {'test R² (mean)':>15}")
    print(
        f"{f'crx ridge, all {len(all_pairs)} pairs':44} {s['ridge_all_pairs']:9.1f} "
        f"{r['ridge_mean_all_pairs']:15.3f}"
    )
    label = f"crx ridge, auto ({len(auto)} maps)"
    print(f"{label:44} {s['ridge_auto']:9.1f} {r['auto_ridge_mean']:15.3f}")
    print(
        f"{'crx lstsq-svd, all pairs (shared SVD)':44} "
        f"{s['lstsq_svd_all_pairs_shared_svd']:9.1f} {r['lstsq_svd_mean_all_pairs']:15.3f}"
    )
    print(
        f"{f'naive SVD per pair ({len(sample)} timed, extrapolated)':44} "
        f"{s['naive_svd_per_pair_extrapolated_all']:9.1f} {r['naive_mean_sampled_pairs']:15.3f}"
    )
    print(
        f"speed-up ridge all pairs vs naive: {speedup:.1f}x; "
        f"on the sampled pairs ridge R² {r['ridge_mean_sampled_pairs']:.3f} vs naive "
        f"{r['naive_mean_sampled_pairs']:.3f}; at the relative-depth pairs ridge "
        f"{r['relative_depth_pairs_ridge_mean']:.3f} vs lstsq-svd "
        f"{r['relative_depth_pairs_lstsq_svd_mean']:.3f}"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
