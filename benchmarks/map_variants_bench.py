"""Other map families tried against the anchored ridge map: whitened Procrustes and a small MLP.

    B=benchmarks; R=benchmarks/results
    .venv/bin/python $B/map_variants_bench.py --main $R/anchored_template_smollm2_gemma.json \\
        --out $R/map_variants_smollm2_gemma.json

Runs on the registry of ``anchored_bench.py --template`` (the bank read in the emotion template,
extracted on both models), at the same layer pair as its anchored map (source block → target
block 13), with the same anchors (the bank; the six emotions excluded), the same corpus split
(the fit's 80/10/10 in file order: train only is fitted on) and the same evaluation: α chosen
per emotion on the validation half, the test half reported, lift over the bare model as a
fraction of the native vector's. Every choice below was fixed before any evaluation:

- ``procrustes``: both models' corpus states whitened (ZCA, covariance + 1e-3 × its mean
  eigenvalue), the semi-orthogonal R maximising tr(Rᵀ Zxᵀ Zy) (SVD), a vector mapped as
  ``v Wx R Wy⁻¹``; ``procrustes+anchors``: the same with the whitened anchor pairs (each scaled
  to the corpus rows' mean whitened norm) added to the cross-covariance with equal total weight.
- ``mlp``: ``f(x) = A x + W₂ gelu(W₁ x)`` (512 hidden units) on standardised states, Adam
  (lr 1e-3, weight decay 1e-4), batches of 128, early stopping on the validation split's MSE
  (checked every 50 steps, at most 3,000); a vector is transplanted as ``mean_h f(h + v) − f(h)``
  over the training states (Oozeer et al. 2025); ``mlp+anchors``: the same loss plus the anchors'
  relative error ``‖mean_h f(h + a_s) − f(h) − a_t‖² / ‖a_t‖²`` over 4 states per step. The
  MLPs start from a random initialisation: three seeds each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from anchored_bench import RESULTS, score_mapped

from crx import Registry
from crx.registry.engine.emotion import EMOTIONS
from crx.registry.engine.fit.splits import split_indices
from crx.registry.workflows.anchors import anchor_set
from crx.registry.workflows.corpus import corpus_states, load_corpus

SEEDS = (0, 1, 2)
HIDDEN = 512
RIDGE_EPS = 1e-3


def whitening(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, W = Σ^-1/2, W⁻¹ = Σ^1/2) of ``states`` [n, d], Σ shrunk by RIDGE_EPS."""
    mean = states.mean(0)
    centred = states - mean
    cov = centred.T @ centred / (len(states) - 1)
    eig, vec = torch.linalg.eigh(cov)
    eig = eig.clamp(min=0) + RIDGE_EPS * eig.clamp(min=0).mean()
    return mean, (vec * eig.rsqrt()) @ vec.T, (vec * eig.sqrt()) @ vec.T


def procrustes(
    xs: torch.Tensor, ys: torch.Tensor, anchors: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """The [ds, dt] matrix M with v ↦ v M: whitened Procrustes (with anchors: see the module)."""
    mx, wx, _ = whitening(xs)
    my, wy, wy_inv = whitening(ys)
    zx, zy = (xs - mx) @ wx, (ys - my) @ wy
    cross = zx.T @ zy / len(zx)
    if anchors is not None:
        scale = float(zx.norm(dim=1).mean())
        ax, ay = anchors[0] @ wx, anchors[1] @ wy
        ax = ax / ax.norm(dim=1, keepdim=True) * scale
        ay = ay / ay.norm(dim=1, keepdim=True) * float(zy.norm(dim=1).mean())
        cross = cross + ax.T @ ay / len(ax)
    u, _, vt = torch.linalg.svd(cross, full_matrices=False)
    return wx @ (u @ vt) @ wy_inv


class MLP(torch.nn.Module):
    def __init__(self, ds: int, dt: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(ds, dt)
        self.hidden = torch.nn.Linear(ds, HIDDEN)
        self.out = torch.nn.Linear(HIDDEN, dt, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.out(torch.nn.functional.gelu(self.hidden(x)))


def train_mlp(
    xs: torch.Tensor,
    ys: torch.Tensor,
    val: tuple[torch.Tensor, torch.Tensor],
    anchors: tuple[torch.Tensor, torch.Tensor] | None,
    seed: int,
) -> tuple[object, dict]:  # type: ignore[type-arg]
    """The trained map as a function raw source states → raw target states, and its record."""
    torch.manual_seed(seed)
    mx, sx = xs.mean(0), xs.std(0) + 1e-6
    my, sy = ys.mean(0), ys.std(0) + 1e-6
    net = MLP(xs.shape[1], ys.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)

    def raw(x: torch.Tensor) -> torch.Tensor:  # raw source → raw target
        return net((x - mx) / sx) * sy + my

    zx, zy = (xs - mx) / sx, (ys - my) / sy
    vx, vy = (val[0] - mx) / sx, (val[1] - my) / sy
    best, best_state, best_step, step = float("inf"), None, 0, 0
    gen = torch.Generator().manual_seed(seed)
    while step < 3000:
        batch = torch.randint(len(zx), (128,), generator=gen)
        loss = torch.nn.functional.mse_loss(net(zx[batch]), zy[batch])
        if anchors is not None:
            h = xs[torch.randint(len(xs), (4,), generator=gen)]  # [4, ds]
            moved = raw(h[None] + anchors[0][:, None]) - raw(h)[None]  # [K, 4, dt]
            err = moved.mean(1) - anchors[1]
            loss = loss + (err.pow(2).sum(1) / anchors[1].pow(2).sum(1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            with torch.no_grad():
                v = float(torch.nn.functional.mse_loss(net(vx), vy))
            if v < best:
                best, best_step = v, step
                best_state = {k: t.clone() for k, t in net.state_dict().items()}
            elif step - best_step >= 500:
                break
    assert best_state is not None
    net.load_state_dict(best_state)
    net.eval()
    return raw, {"val_mse_standardised": best, "steps": best_step}


def mlp_transplant(f, states: torch.Tensor, v: torch.Tensor) -> np.ndarray:  # type: ignore[no-untyped-def]
    """``mean_h f(h + v) − f(h)`` over ``states``."""
    with torch.no_grad():
        return (f(states + v) - f(states)).mean(0).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--main", type=Path, default=RESULTS / "anchored_template_smollm2_gemma.json"
    )
    parser.add_argument("--quality", type=Path, default=RESULTS / "quality_smollm2_gemma.json")
    parser.add_argument("--only", nargs="*", help="only these variants")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.monotonic()
    main_result = json.loads(args.main.read_text())
    committed = {c["emotion"]: c for c in json.loads(args.quality.read_text())["validated"]["rows"]}
    reg = Registry()
    ws = reg.workspace
    src, tgt = reg.get_model(main_result["source"]), reg.get_model(main_result["target"])
    ls, lt = main_result["anchored_map"]["source_layer"], main_result["layer"]
    alphas = tuple(main_result["alphas"])
    full = anchor_set(ws, src, tgt, exclude=["sadness"], template=main_result["anchor_template"])
    anchors = (
        torch.from_numpy(full.source[:, ls]).double(),
        torch.from_numpy(full.target[:, lt]).double(),
    )
    lines, data = load_corpus(None)
    oid = reg.catalog.store.put(data)
    x_all = torch.as_tensor(np.asarray(corpus_states(ws, src, lines, oid, layers=[ls]).layer(ls)))
    y_all = torch.as_tensor(np.asarray(corpus_states(ws, tgt, lines, oid, layers=[lt]).layer(lt)))
    train, val, _ = split_indices(len(lines))
    xs, ys = x_all[train].double(), y_all[train].double()
    natives = {
        e: torch.from_numpy(
            reg.load_vector(
                reg.catalog.find_vector(reg.get_concept(e), src, origin="extracted").id
            )[ls]
        ).double()
        for e in EMOTIONS
    }
    variants: list[tuple[str, int | None]] = [("procrustes", None), ("procrustes+anchors", None)]
    variants += [(kind, seed) for kind in ("mlp", "mlp+anchors") for seed in SEEDS]
    if args.only:
        variants = [v for v in variants if v[0] in args.only]
    result = {
        "source": src.name,
        "target": tgt.name,
        "layer_pair": [ls, lt],
        "n_anchors": len(full.refs),
        "anchor_template": main_result["anchor_template"],
        "main": {
            "anchored_lift_fraction": main_result["validated"]["lift_as_fraction_of_native_lift"][
                "anchored"
            ],
            "ridge_lift_fraction": main_result["validated"]["lift_as_fraction_of_native_lift"][
                "ours"
            ],
        },
        "runs": [],
    }
    for kind, seed in variants:
        t0 = time.monotonic()
        record: dict = {"kind": kind, "seed": seed}  # type: ignore[type-arg]
        if kind.startswith("procrustes"):
            m = procrustes(xs, ys, anchors if kind.endswith("anchors") else None)
            mapped = {e: (natives[e] @ m).float().numpy() for e in EMOTIONS}
        else:
            f, info = train_mlp(
                xs.float(),
                ys.float(),
                (x_all[val].float(), y_all[val].float()),
                (anchors[0].float(), anchors[1].float()) if kind.endswith("anchors") else None,
                seed or 0,
            )
            record.update(info)
            mapped = {e: mlp_transplant(f, xs.float(), natives[e].float()) for e in EMOTIONS}
        record["fit_s"] = round(time.monotonic() - t0, 1)
        scored = score_mapped(reg, tgt.name, lt, alphas, committed, mapped)
        record.update(scored)
        result["runs"].append(record)
        print(
            kind, seed, round(scored["mean_test"], 3), round(scored["lift_fraction"], 2), flush=True
        )
        if args.out:
            args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    summary: dict = {}  # type: ignore[type-arg]
    for kind in dict.fromkeys(r["kind"] for r in result["runs"]):
        fractions = [r["lift_fraction"] for r in result["runs"] if r["kind"] == kind]
        summary[kind] = {"median_lift_fraction": float(np.median(fractions)), "runs": fractions}
    result["summary"] = summary
    result["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
