"""Where and how to steer a transplant: one layer or several, one map or a blend, and choosing
among them on validation data (SmolLM2-135M-Instruct → Gemma-3-270m, six emotions).

    crx demo        # the vectors, maps and the registry this reads
    .venv/bin/python benchmarks/steering_layers_bench.py \
        --out benchmarks/results/steering_layers_smollm2_gemma.json
    .venv/bin/python benchmarks/steering_layers_bench.py \
        --render benchmarks/results/steering_layers_smollm2_gemma.json

Candidates, each at α ∈ {0.05, 0.1, 0.2, 0.4} × the steered layer's residual norm (for k
layers, α/√k at each, so the total added norm is the same):

- ``ours|13``: crx's default transplant (ridge maps, source layer by validation R²) at block 13
  (depth 0.75), as in `crx demo`; ``ours|4L``: blocks 11–14; ``ours|7L``: blocks 9–15, each
  block with its own mapped row;
- ``paper|13``: ConTrans' recipe (SVD least squares, no bias, pair 22 → 13);
- ``ens|13``: the sum of the two unit-normalised transplants at block 13;
- ``native|13``, ``native|4L``, ``native|7L``: the vector extracted on Gemma itself.

The held-out scenarios of each emotion (the half not used for extraction) alternate between a
validation half and a test half (~51 each). Every candidate is measured on both; each row of
the summary picks, per emotion, the candidate and α with the best validation token accuracy
(then logit accuracy, then the smaller α) among the candidates it names, and reports that
choice's test-half token accuracy. Nothing is chosen on the test half.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crx import Registry
from crx.registry.engine import emotion as task
from crx.registry.engine.emotion import EMOTIONS
from crx.registry.engine.steer import steer
from crx.registry.workflows.demo import SOURCE, TARGET, register_emotions
from crx.registry.workflows.evaluate import default_layer, reference_norm

ALPHAS = (0.05, 0.1, 0.2, 0.4)
#: summary rows: name → which candidates (by prefix of "vector|layers") the choice is among
CHOICES = {
    "ours at block 13 (crx demo)": ("ours|13|",),
    "paper recipe at block 13": ("paper|13|",),
    "blend of both at block 13": ("ens|13|",),
    "ours at blocks 11-14": ("ours|4L|",),
    "ours at blocks 9-15": ("ours|7L|",),
    "ours, layers chosen on validation": ("ours|",),
    "ours or paper recipe at block 13, chosen on validation": ("ours|13|", "paper|13|"),
    "any transplant above, chosen on validation": ("ours|", "paper|", "ens|"),
    "native at block 13": ("native|13|",),
    "native, layers chosen on validation": ("native|",),
}


def measure(reg: Registry) -> dict[str, Any]:
    source, target = reg.get_model(SOURCE), reg.get_model(TARGET)
    layer = default_layer(target.n_layers)
    layer_sets = {
        "13": [layer],
        "4L": list(range(layer - 2, layer + 2)),
        "7L": list(range(layer - 4, layer + 3)),
    }
    refs = register_emotions(reg.catalog, EMOTIONS)
    loaded = reg.load_model(TARGET)
    norms = {n: reference_norm(reg.load_model(TARGET), n) for n in range(target.n_layers)}
    out: dict[str, Any] = {}
    for e in EMOTIONS:
        src = reg.extract(refs[e], source.name).record
        ours = reg.transplant(refs[e], source.name, target.name, vector_id=src.id)
        paper = reg.transplant(refs[e], source.name, target.name, vector_id=src.id,
                                    layer=layer, solver="lstsq-svd")  # fmt: skip
        vectors = {
            "ours": reg.load_vector(ours.record.id),
            "paper": reg.load_vector(paper.record.id),
            "native": reg.load_vector(reg.extract(refs[e], target.name).record.id),
        }
        blend = np.zeros_like(vectors["ours"])
        for name in ("ours", "paper"):
            blend[layer] += vectors[name][layer] / np.linalg.norm(vectors[name][layer])
        vectors["ens"] = blend
        held_out = task.split_scenarios(task.load_scenarios(e)).test
        halves = {"val": held_out[0::2], "test": held_out[1::2]}
        row: dict[str, Any] = {
            "base": {h: task.accuracy(loaded, e, halves[h])["token_accuracy"] for h in halves}
        }
        for name, vector in vectors.items():
            for set_name, layers in layer_sets.items():
                if name in ("paper", "ens") and set_name != "13":
                    continue  # one mapped row only
                for a in ALPHAS:
                    per_layer = a / len(layers) ** 0.5
                    reference = [norms[n] for n in layers]
                    with steer(loaded.layers, vector, layer=layers, alpha=per_layer,
                               normalize=True, reference_norm=reference):  # fmt: skip
                        acc = {h: task.accuracy(loaded, e, halves[h]) for h in halves}
                    row[f"{name}|{set_name}|{a}"] = {
                        h: [acc[h]["token_accuracy"], acc[h]["logit_accuracy"]] for h in halves
                    }
        out[e] = row
        print(e, "done", flush=True)
    return out


def summarize(rows: dict[str, Any]) -> dict[str, Any]:
    base = sum(r["base"]["test"] for r in rows.values()) / len(rows)
    means: dict[str, float] = {}
    picks: dict[str, dict[str, str]] = {}
    for choice, prefixes in CHOICES.items():
        total = 0.0
        picks[choice] = {}
        for emotion, row in rows.items():
            options = [
                (v["val"][0], v["val"][1], -float(k.rsplit("|", 1)[1]), k)
                for k, v in row.items()
                if k != "base" and k.startswith(prefixes)
            ]
            key = max(options)[3]
            picks[choice][emotion] = key
            total += row[key]["test"][0]
        means[choice] = total / len(rows)
    native = means["native at block 13"] - base
    return {
        "base_test_token_accuracy": base,
        "mean_test_token_accuracy": means,
        "lift_as_fraction_of_native_block13_lift": {
            k: (m - base) / native for k, m in means.items()
        },
        "picks": picks,
    }


def render(result: dict[str, Any]) -> None:
    s = result["summary"]
    print(f"base (test half): {s['base_test_token_accuracy']:.3f}")
    print("| choice | mean test token accuracy | lift / native lift |")
    print("|---|---|---|")
    for k, m in s["mean_test_token_accuracy"].items():
        print(f"| {k} | {m:.3f} | {s['lift_as_fraction_of_native_block13_lift'][k]:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--render", type=Path, help="print the table of a results file")
    args = parser.parse_args()
    if args.render:
        render(json.loads(args.render.read_text()))
        return
    started = time.monotonic()
    rows = measure(Registry())
    result = {
        "source": SOURCE,
        "target": TARGET,
        "alphas": list(ALPHAS),
        "summary": summarize(rows),
        "rows": rows,
        "seconds": round(time.monotonic() - started, 1),
    }
    render(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
