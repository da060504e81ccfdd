"""Concept-anchored maps on real models: six emotions, α chosen on validation, reported on test.

    crx demo                                  # or quality_bench.py's setup for another pair
    B=benchmarks; R=benchmarks/results
    .venv/bin/python $B/anchored_bench.py --out $R/anchored_smollm2_gemma.json
    .venv/bin/python $B/anchored_bench.py --template --out $R/anchored_template_smollm2_gemma.json
    .venv/bin/python $B/anchored_bench.py --template --pairs 8 \\
        --out $R/anchored_template_pairs8_smollm2_gemma.json
    A=$R/anchored_template_ablation_smollm2_gemma.json   # the ablation, seeds added to it
    .venv/bin/python $B/anchored_bench.py --template --ablate --out $A
    .venv/bin/python $B/anchored_bench.py --skip-main $A --seeds 0,1,2 --out $A
    .venv/bin/python $B/anchored_bench.py --source qwen2.5-coder-0.5b-instruct \\
        --target qwen2.5-coder-1.5b-instruct --quality $R/quality_qwen05_qwen15.json \\
        --out $R/anchored_qwen05_qwen15.json
    .venv/bin/python $B/anchored_bench.py --source qwen2.5-coder-0.5b-instruct \\
        --target qwen2.5-coder-1.5b-instruct --quality $R/quality_qwen05_qwen15.json \\
        --layer-pair 18:21 --cache DIR --alphas 0.1,0.2,0.4,0.8 \\
        --out $R/anchored_template_layer_pair_qwen05_qwen15.json
    L=$R/anchored_template_layer_pair_qwen05_qwen15.json   # the same map, α 0.05 and 1.6 added
    .venv/bin/python $B/anchored_bench.py --source qwen2.5-coder-0.5b-instruct \\
        --target qwen2.5-coder-1.5b-instruct --quality $R/quality_qwen05_qwen15.json \\
        --layer-pair 18:21 --cache DIR --alphas 0.05,1.6 --extend $L \\
        --out $R/anchored_template_layer_pair_full_grid_qwen05_qwen15.json

Runs on the registry at $CRX_HOME, where the six emotion concepts, their native vectors on both
models and crx's ridge maps already are (`crx demo`, or quality_bench's run). It

1. extracts the concept bank on both models (`crx bank extract`; reused when there),
2. fits the anchored maps as `crx fit --solver anchored --exclude sadness` does (every emotion
   shares its scenarios with the others, so excluding one excludes the six), records them, and
   maps each emotion's source vector through the map at the steering layer (what
   `crx transplant --solver anchored` writes in that row); ``--template``: with the bank read
   in the emotion concepts' own template (`crx bank extract --template`, `--anchor-template`),
3. evaluates each transplant exactly as quality_bench's ``--validated``: the held-out scenarios
   cut into alternating validation and test halves, α chosen per emotion on validation,
   test-half token accuracy reported; the bare model is re-measured and must equal the
   committed quality result's (the evaluation is deterministic),
4. with ``--layer-pair LS:LT``: steps 1-3 for the one map evaluated only (see `run_layer_pair`),
   for a pair whose full run does not fit a session; ``--extend RESULT`` keeps that earlier
   ``--layer-pair`` result's α grid for the anchored map (the refitted map must match its
   recorded choice) and adds ``--alphas`` to it (the evaluation is deterministic),
5. with ``--ablate``: the same at the steering layer's map only, fitted with the first N anchor
   concepts of a seeded shuffle (three seeds each), and with the corpus left out (anchors only).

The native vector's lift, crx's ridge transplant and the paper's recipe come from the committed
quality result of the pair (``--quality``), measured on the same halves with the same protocol;
*selected* is what ``crx plan`` does once every transplant is evaluated: per emotion, the
transplant and α with the best validation accuracy, among ridge, the paper's recipe (same and
raw α) and anchored.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_bench import choose, validation_rank

from crx import Registry
from crx.registry.engine import emotion as task
from crx.registry.engine.emotion import EMOTIONS
from crx.registry.engine.fit import fit_pairs, map_vector
from crx.registry.engine.fit.anchored import Anchors
from crx.registry.engine.steer import steer
from crx.registry.workflows.anchors import AnchorSet, anchor_set
from crx.registry.workflows.corpus import corpus_states, load_corpus
from crx.registry.workflows.demo import ALPHAS, SOURCE, TARGET
from crx.registry.workflows.evaluate import default_layer, reference_norm

RESULTS = Path(__file__).resolve().parent / "results"
ABLATION_SIZES = (25, 50, 100)  # 0 anchors is crx's ridge map: "ours" of the quality result
SEEDS = (0, 1, 2)


def halves(emotion: str) -> dict[str, list[str]]:
    held_out = task.split_scenarios(task.load_scenarios(emotion)).test
    return {"val": held_out[0::2], "test": held_out[1::2]}


def measure(
    reg: Registry,
    target: str,
    emotion: str,
    row: np.ndarray | None,
    layer: int,
    alphas: tuple[float, ...],
    halves_read: tuple[str, ...] = ("val", "test"),
) -> dict:  # type: ignore[type-arg]
    """Token/logit accuracy on both halves (or those named), bare (``row`` None) or steered at
    every α."""
    loaded = reg.load_model(target)
    parts = {h: part for h, part in halves(emotion).items() if h in halves_read}
    if row is None:
        return {h: task.accuracy(loaded, emotion, parts[h]) for h in parts}
    array = np.zeros((loaded.n_layers, row.shape[-1]), dtype=np.float32)
    array[layer] = row
    norm = reference_norm(loaded, layer)
    by_alpha = {}
    for alpha in alphas:
        with steer(
            loaded.layers, array, layer=layer, alpha=alpha, normalize=True, reference_norm=norm
        ):
            by_alpha[alpha] = {h: task.accuracy(loaded, emotion, parts[h]) for h in parts}
    return by_alpha


def extract_banks(
    reg: Registry,
    models: tuple[str, ...],
    template: str | None,
    pairs: int | None,
    timings: dict[str, float],
) -> None:
    """`crx bank extract` on each model (what is there already is reused), timed."""
    for model in models:
        t0 = time.monotonic()
        results = reg.extract_bank(model, template=template, pairs=pairs)
        timings[f"bank_extract_{model}_s"] = round(time.monotonic() - t0, 1)
        timings[f"bank_extracted_now_{model}"] = sum(1 for _, new in results if new)
        reg.workspace.release(model)
        print(f"bank on {model}: {timings[f'bank_extract_{model}_s']} s", flush=True)


def bank_at_block(reg: Registry, model: str, layer: int, cache: Path) -> dict:  # type: ignore[type-arg]
    """Every bank concept's mean difference (all its pairs, the emotion template, last token) on
    ``model`` at one block only: what `crx bank extract --template` stores at that block, from
    `extract_vectors` over the whole bank, stopping after the block (batching changes it only
    to float tolerance; the committed result read positives and negatives in one pass).
    Cached in ``cache`` as npz: ``refs``, ``vectors``."""
    from crx.registry.engine.extract import extract_vectors
    from crx.registry.workflows.bank import bank_index, bank_pairs

    path = cache / f"bank-{model}-block{layer}.npz"
    if path.exists():
        found = np.load(path)
        return {
            "refs": [str(r) for r in found["refs"]],
            "vectors": found["vectors"],
            "seconds": float(found["seconds"]) if "seconds" in found else None,
        }
    entries = bank_index()
    loaded = reg.load_model(model)
    t0 = time.monotonic()

    def report(done: int, total: int) -> None:
        if done % 640 == 0 or done == total:
            print(f"  {model} block {layer}: {done}/{total} texts, "
                  f"{time.monotonic() - t0:.0f} s", flush=True)  # fmt: skip

    vectors = [
        v[0]
        for v in extract_vectors(
            loaded,
            [bank_pairs(e) for e in entries],
            template=task.TEMPLATE,
            layers=[layer],
            progress=report,
        )
    ]
    refs = [e.concept for e in entries]
    seconds = round(time.monotonic() - t0, 1)
    np.savez(path, refs=np.array(refs), vectors=np.stack(vectors), seconds=np.array(seconds))
    reg.workspace.release(model)
    return {"refs": refs, "vectors": np.stack(vectors), "seconds": seconds}


def main_alphas(result: dict) -> dict[str, float]:  # type: ignore[type-arg]
    """Each emotion's α as the main run's anchored map chose it on the validation half."""
    return {r["emotion"]: float(r["anchored"]["alpha"]) for r in result["validated"]["rows"]}


def subset(anchors: AnchorSet, n: int, seed: int) -> AnchorSet:
    """The first ``n`` anchor concepts of a seeded shuffle."""
    order = list(range(len(anchors.refs)))
    random.Random(seed).shuffle(order)
    keep = sorted(order[:n])
    return AnchorSet(
        source=anchors.source[keep],
        target=anchors.target[keep],
        groups=[anchors.groups[i] for i in keep],
        refs=[anchors.refs[i] for i in keep],
        lineage=[anchors.lineage[i] for i in keep],
    )


def selected(check: dict, labels: tuple[str, ...]) -> dict:  # type: ignore[type-arg]
    """Per emotion: the transplant and α with the best validation accuracy, its test half."""
    options = [(label, a) for label in labels for a in check[label]["by_alpha"]]
    label, alpha = max(
        options, key=lambda o: (*validation_rank(check[o[0]]["by_alpha"][o[1]], o[1]), *o)
    )
    return {"from": label, "alpha": alpha, "test": check[label]["by_alpha"][alpha]["test"]}


LABELS = (
    "anchored",
    "ours",
    "paper_recipe",
    "paper_recipe_raw_alpha",
    "selected_without_anchored",
    "selected",
    "native",
)


def evaluate(
    reg: Registry,
    target: str,
    layer: int,
    args: argparse.Namespace,
    committed: dict,  # type: ignore[type-arg]
    rows: dict[str, np.ndarray],
    map_id: int | None,
    earlier: dict[str, dict] | None = None,  # type: ignore[type-arg]
) -> list:  # type: ignore[type-arg]
    """Each emotion's transplanted row at ``layer`` scored as quality_bench's ``--validated``
    beside the committed quality result's columns (whose bare model it must re-measure);
    ``earlier``: per emotion, the same row's measurements at other α, joined before choosing."""
    checks = []
    for e in EMOTIONS:
        base = measure(reg, target, e, None, layer, args.alphas)
        old = committed[e]
        if abs(base["test"]["token_accuracy"] - old["base"]["token_accuracy"]) > 1e-9:
            raise SystemExit(f"{e}: the bare model's test accuracy differs from {args.quality}")
        sizes = {"n_val": old["n_val"], "n_test": old["n_test"]}
        check = {"emotion": e, **sizes, "base": base["test"], "anchored_map_id": map_id}
        by_alpha = measure(reg, target, e, rows[e], layer, args.alphas)
        if earlier:
            by_alpha = dict(sorted({**earlier[e], **by_alpha}.items()))
        check["anchored"] = choose(by_alpha, sizes)
        for label in ("ours", "paper_recipe", "paper_recipe_raw_alpha", "native"):
            check[label] = old[label]
        check["selected_without_anchored"] = old["selected"]
        check["selected"] = selected(
            check, ("ours", "paper_recipe", "paper_recipe_raw_alpha", "anchored")
        )
        checks.append(check)
        print(
            e,
            {
                k: round(check[k]["test"]["token_accuracy"], 3)
                for k in ("anchored", "ours", "paper_recipe", "selected", "native")
            },
            flush=True,
        )
    return checks


def summary(rows: list, labels: tuple[str, ...]) -> dict:  # type: ignore[type-arg]
    mean = {k: float(np.mean([r[k]["test"]["token_accuracy"] for r in rows])) for k in labels}
    mean["base"] = float(np.mean([r["base"]["token_accuracy"] for r in rows]))
    lift = {k: mean[k] - mean["base"] for k in labels}
    return {
        "mean_test_token_accuracy": mean,
        "token_lift_over_base": lift,
        "lift_as_fraction_of_native_lift": {k: lift[k] / lift["native"] for k in labels},
    }


def extended_grid(path: Path, settings: dict, ls: int, lt: int) -> dict[str, dict]:  # type: ignore[type-arg]
    """``--extend``: the anchored map's measurements at every α of an earlier ``--layer-pair``
    result, per emotion, once the map refitted now is shown to be the one it measured (same
    blocks, chosen weight and λ, held-out anchor cosine to 1e-6)."""
    earlier = json.loads(path.read_text())
    recorded = earlier["anchored_map"]
    same = (
        recorded["source_layer"] == ls
        and earlier["layer"] == lt
        and recorded["anchor_weight"] == settings["anchor_weight"]
        and recorded["lambda"] == settings["lambda"]
        and abs(recorded["anchor_cv_best"] - settings["anchor_cv_best"]) < 1e-6
    )
    if not same:
        raise SystemExit(f"the map refitted now is not the one {path} measured: {settings}")
    return {
        r["emotion"]: {float(a): v for a, v in r["anchored"]["by_alpha"].items()}
        for r in earlier["validated"]["rows"]
    }


def run_layer_pair(reg: Registry, args: argparse.Namespace, committed: dict) -> dict:  # type: ignore[type-arg]
    """``--layer-pair LS:LT``: the main run restricted to the one map it evaluates.

    The bank is read at the two blocks only (`bank_at_block`), the corpus states at those blocks,
    and the map fitted there as `crx fit --solver anchored --exclude sadness` fits it (same
    solver, corpus split, anchor groups and leave-concepts-out folds; the groups named as in a
    registry where `crx bank extract --template` registered the bank first, ``bank.NAME@1``).
    ``auto`` picks the map's source block from ridge's validation R² alone, so naming the block
    it picked gives the map the full fit would hold at LT."""
    from crx.registry.workflows.anchors import _families, pair_texts
    from crx.registry.workflows.bank import bank_index, bank_pairs
    from crx.registry.workflows.demo import register_emotions

    ls, lt = (int(b) for b in args.layer_pair.split(":"))
    src, tgt = reg.get_model(args.source), reg.get_model(args.target)
    if lt != default_layer(tgt.n_layers):
        raise SystemExit(f"the steering layer of {tgt.name} is {default_layer(tgt.n_layers)}")
    timings: dict[str, float | None] = {}
    banks = {}
    for model, block in ((src, ls), (tgt, lt)):
        t0 = time.monotonic()
        banks[model.name] = bank_at_block(reg, model.name, block, args.cache)
        timings[f"bank_block{block}_{model.name}_s"] = banks[model.name]["seconds"]
        print(f"bank on {model.name} block {block}: {banks[model.name]['seconds']} s "
              f"({time.monotonic() - t0:.0f} s now)", flush=True)  # fmt: skip
    t0 = time.monotonic()
    register_emotions(reg.catalog, EMOTIONS)
    natives = {e: reg.extract(reg.get_concept(e).ref, src.name).record for e in EMOTIONS}
    timings["emotions_on_source_s"] = round(time.monotonic() - t0, 1)
    reg.workspace.release(src.name)

    # anchor_set's rule: the emotions' texts and every bank family sharing one are left out
    entries = bank_index()
    banned: set[str] = set()
    for e in EMOTIONS:
        banned |= pair_texts(reg.catalog.load_pairs(reg.get_concept(e)))
    texts = {i: pair_texts(bank_pairs(entry)) for i, entry in enumerate(entries)}
    family = _families(texts)
    leaky = {family[i] for i in texts if texts[i] & banned}
    kept = sorted(
        (i for i in texts if family[i] not in leaky), key=lambda i: f"{entries[i].concept}@1"
    )
    source = np.zeros((len(kept), src.n_layers, src.d_model), dtype=np.float32)
    target = np.zeros((len(kept), tgt.n_layers, tgt.d_model), dtype=np.float32)
    source[:, ls] = banks[src.name]["vectors"][kept]
    target[:, lt] = banks[tgt.name]["vectors"][kept]
    anchors = AnchorSet(
        source=source,
        target=target,
        groups=[f"{entries[family[i]].concept}@1" for i in kept],
        refs=[f"{entries[i].concept}@1" for i in kept],
        lineage=[],
    )

    t0 = time.monotonic()
    lines, data = load_corpus(None)
    oid = reg.catalog.store.put(data)
    xs = corpus_states(reg.workspace, src, lines, oid, layers=[ls])
    reg.workspace.release(src.name)
    ys = corpus_states(reg.workspace, tgt, lines, oid, layers=[lt])
    timings["corpus_states_s"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    fm = _fit_one(xs, ys, ls, lt, anchors)
    timings["anchored_fit_s"] = round(time.monotonic() - t0, 1)
    print(f"anchored map {ls} -> {lt}: weight {fm.settings['anchor_weight']}, "
          f"λ {fm.settings['lambda']}, cv cosine {fm.settings['anchor_cv_best']:.3f}, "
          f"corpus R² {fm.r2:.3f}", flush=True)  # fmt: skip

    earlier = None
    if args.extend:
        earlier = extended_grid(args.extend, fm.settings, ls, lt)
        timings["extends"] = str(args.extend)
    rows = {e: map_vector(fm.weight, reg.load_vector(natives[e].id)[ls]) for e in EMOTIONS}
    checks = evaluate(reg, tgt.name, lt, args, committed, rows, None, earlier)
    return {
        "source": src.name,
        "target": tgt.name,
        "layer": lt,
        "layer_pair_only": True,
        "anchored_map": {
            "source_layer": ls,
            **{
                k: fm.settings.get(k)
                for k in ("anchor_weight", "lambda", "anchor_cv_best", "n_anchor_groups")
            },
            "n_anchor_concepts": len(kept),
            "anchor_exclude": ["sadness"],
            "r2": fm.r2,
        },
        "anchor_template": task.TEMPLATE,
        "bank_pairs_per_concept": 24,
        "alphas": sorted(checks[0]["anchored"]["by_alpha"]),
        "timings": timings,
        "validated": {**summary(checks, LABELS), "rows": checks},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", default=SOURCE)
    parser.add_argument("--target", default=TARGET)
    parser.add_argument(
        "--quality",
        type=Path,
        default=RESULTS / "quality_smollm2_gemma.json",
        help="the pair's committed quality_bench --validated result",
    )
    parser.add_argument(
        "--alphas", type=lambda s: tuple(float(a) for a in s.split(",")), default=ALPHAS
    )
    parser.add_argument(
        "--template",
        action="store_true",
        help="anchors read in the emotion concepts' own template (`crx bank "
        "extract --template`, `crx fit --anchor-template`)",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        help="the bank with each concept's first N pairs (`crx bank extract --pairs`; the "
        "anchors are each concept's newest version, so these)",
    )
    parser.add_argument("--ablate", action="store_true", help="also the anchor-count ablation")
    parser.add_argument(
        "--sizes",
        type=lambda s: tuple(int(a) for a in s.split(",")),
        default=ABLATION_SIZES,
        help="ablation: anchor counts",
    )
    parser.add_argument(
        "--seeds",
        type=lambda s: tuple(int(a) for a in s.split(",")),
        default=SEEDS,
        help="ablation: seeds of each subset",
    )
    parser.add_argument(
        "--skip-main",
        type=Path,
        metavar="RESULT",
        help="ablation only, added to this earlier result (its ablation runs are kept)",
    )
    parser.add_argument(
        "--ablation-alpha",
        choices=("validated", "main"),
        default="validated",
        help="ablation: choose each map's α per emotion on the validation half (default), or "
        "reuse the α the main run's anchored map chose there and measure the test half only "
        "(a sixth of the evaluation; biased towards the main map, whose α it is)",
    )
    parser.add_argument(
        "--layer-pair",
        metavar="LS:LT",
        help="the main run at this one map only (source block LS, the steering block LT): the "
        "24-pair template bank read at those two blocks (cached in --cache), the corpus there, "
        "the anchored map fitted there; a fraction of the full run's cost",
    )
    parser.add_argument(
        "--cache", type=Path, default=Path("."), help="--layer-pair: where the bank's rows go"
    )
    parser.add_argument(
        "--extend",
        type=Path,
        metavar="RESULT",
        help="--layer-pair: keep this earlier --layer-pair result's α grid for the anchored map "
        "(the refitted map must be the one it measured) and add --alphas to it",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.monotonic()
    reg = Registry()
    if args.skip_main:
        result = json.loads(args.skip_main.read_text())
        quality = json.loads(args.quality.read_text())
        committed = {c["emotion"]: c for c in quality["validated"]["rows"]}
        # a new registry gets the main run's bank first (each concept's newest version is its
        # anchor, so the same pairs and template give the same anchors)
        pairs = result.get("bank_pairs_per_concept", 24)
        extract_banks(
            reg,
            (args.source, args.target),
            result.get("anchor_template"),
            None if pairs == 24 else pairs,
            result.setdefault("ablation_timings", {}),
        )
        run_ablation(reg, args, result, result["anchored_map"]["source_layer"], committed)
        return
    if args.layer_pair:
        quality = json.loads(args.quality.read_text())
        committed = {c["emotion"]: c for c in quality["validated"]["rows"]}
        result = run_layer_pair(reg, args, committed)
        result["seconds"] = round(time.monotonic() - started, 1)
        print(json.dumps({k: v for k, v in result["validated"].items() if k != "rows"}, indent=1))
        if args.out:
            args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
        return
    src, tgt = reg.get_model(args.source), reg.get_model(args.target)
    layer = default_layer(tgt.n_layers)
    quality = json.loads(args.quality.read_text())
    committed = {c["emotion"]: c for c in quality["validated"]["rows"]}
    timings: dict[str, float] = {}

    template = task.TEMPLATE if args.template else None
    extract_banks(reg, (src.name, tgt.name), template, args.pairs, timings)

    t0 = time.monotonic()
    maps = reg.fit(
        src.name, tgt.name, solver="anchored", exclude=["sadness"], anchor_template=template
    )
    timings["anchored_fit_s"] = round(time.monotonic() - t0, 1)
    at_layer = next(m for m in maps if m.target_layer == layer)
    print(
        f"anchored fit: {timings['anchored_fit_s']} s; layer {layer} from source block "
        f"{at_layer.source_layer}, weight {at_layer.solver_settings['anchor_weight']}, "
        f"λ {at_layer.solver_settings['lambda']}, cv cosine "
        f"{at_layer.solver_settings['anchor_cv_best']:.3f}",
        flush=True,
    )

    rows = {}
    for e in EMOTIONS:
        ref = reg.get_concept(e).ref
        # the transplant's row at the steering layer, through this fit's map there (another
        # anchored fit of the pair may hold maps with a better corpus R² at other layers)
        source = reg.catalog.find_vector(reg.get_concept(ref), src, origin="extracted")
        rows[e] = map_vector(
            reg.catalog.load_map(at_layer.id)[0], reg.load_vector(source.id)[at_layer.source_layer]
        )
    checks = evaluate(reg, tgt.name, layer, args, committed, rows, at_layer.id)

    result = {
        "source": src.name,
        "target": tgt.name,
        "layer": layer,
        "anchored_map": {
            "id": at_layer.id,
            "source_layer": at_layer.source_layer,
            **{
                k: at_layer.solver_settings[k]
                for k in (
                    "anchor_weight",
                    "lambda",
                    "anchor_cv_best",
                    "n_anchor_concepts",
                    "n_anchor_groups",
                    "anchor_exclude",
                )
            },
            "r2": at_layer.r2,
        },
        "anchor_template": template,
        "bank_pairs_per_concept": args.pairs or 24,
        "alphas": list(args.alphas),
        "timings": timings,
        "validated": {**summary(checks, LABELS), "rows": checks},
    }
    print(json.dumps({k: v for k, v in result["validated"].items() if k != "rows"}, indent=1))

    result["seconds"] = round(time.monotonic() - started, 1)
    if args.out:  # written before the (long) ablation, which adds to it
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    if args.ablate:
        run_ablation(reg, args, result, at_layer.source_layer, committed)


def run_ablation(
    reg: Registry,
    args: argparse.Namespace,
    result: dict,
    ls: int,  # type: ignore[type-arg]
    committed: dict,
) -> None:  # type: ignore[type-arg]
    src, tgt = reg.get_model(args.source), reg.get_model(args.target)
    started = time.monotonic()
    result["ablation"] = ablation(
        reg,
        src,
        tgt,
        result["layer"],
        ls,
        args.alphas,
        committed,
        args.sizes,
        args.seeds,
        args.out,
        result,
        main_alphas(result) if args.ablation_alpha == "main" else None,
    )
    result["ablation_seconds"] = round(time.monotonic() - started, 1)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")


def ablation(
    reg: Registry,
    src,
    tgt,
    layer: int,
    ls: int,
    alphas: tuple[float, ...],  # type: ignore[no-untyped-def]
    committed: dict,
    sizes: tuple[int, ...],
    seeds: tuple[int, ...],  # type: ignore[type-arg]
    out: Path | None,
    result: dict,  # type: ignore[type-arg]
    fixed_alphas: dict[str, float] | None = None,
) -> list:  # type: ignore[type-arg]
    """Anchored maps at (ls, layer) with fewer anchors (a seeded subset each) and without the
    corpus; each run is written to ``out`` as it ends (the bare model's test accuracy and the
    native vector's are the committed ones, on the same halves). ``fixed_alphas``: each
    emotion's α is given (chosen on validation for another map), only the test half is read."""
    ws = reg.workspace
    full = anchor_set(ws, src, tgt, exclude=["sadness"], template=result.get("anchor_template"))
    lines, data = load_corpus(None)
    oid = reg.catalog.store.put(data)
    xs = corpus_states(ws, src, lines, oid, layers=[ls])
    ys = corpus_states(ws, tgt, lines, oid, layers=[layer])
    natives = {
        e: reg.load_vector(reg.catalog.find_vector(reg.get_concept(e), src, origin="extracted").id)
        for e in EMOTIONS
    }
    alpha_rule = "validated" if fixed_alphas is None else "main"
    # the main run's map refitted here, recorded to check against the main run's choice (the
    # same bank, corpus and split give the same weight, λ and held-out cosine)
    main_map = _fit_one(xs, ys, ls, layer, full)
    result["ablation_main_map_refit"] = {
        k: main_map.settings.get(k) for k in ("anchor_weight", "lambda", "anchor_cv_best")
    }
    print("main map refitted:", result["ablation_main_map_refit"], flush=True)
    runs = list(result.get("ablation", []))  # an earlier result's runs are kept, not redone
    done = {(r["kind"], r["n_anchors"], r["seed"], r.get("alpha_rule", "validated")) for r in runs}
    # all anchors with the corpus is the main run; the corpus ablation first, then one seed of
    # every size before the next seed, so a run cut short still covers every size
    variants = [("anchors only", len(full.refs), 0)]
    variants += [
        ("corpus+anchors", n, seed)
        for seed in seeds
        for n in sizes
        if n < len(full.refs) and (n or seed == seeds[0])
    ]
    for kind, n, seed in variants:
        if (kind, n, seed, alpha_rule) in done:
            continue
        if n == 0:
            fm = fit_pairs(xs, ys, [(ls, layer)])[0]  # no anchors: ridge itself
        else:
            chosen = subset(full, n, seed)
            x = None if kind == "anchors only" else xs
            fm = _fit_one(x, ys, ls, layer, chosen)
        rows = {e: fm.weight @ natives[e][ls] for e in EMOTIONS}
        scored = score_mapped(reg, tgt.name, layer, alphas, committed, rows, fixed_alphas)
        runs.append(
            {
                "kind": kind,
                "n_anchors": n,
                "seed": seed,
                "alpha_rule": alpha_rule,
                "mean_test": scored["mean_test"],
                "lift_fraction": scored["lift_fraction"],
                "weight": fm.settings.get("anchor_weight"),
                "cv": fm.settings.get("anchor_cv_best"),
                "rows": scored["rows"],
            }
        )
        print(kind, n, seed, round(scored["mean_test"], 3), round(scored["lift_fraction"], 2),
              flush=True)  # fmt: skip
        if out:
            out.write_text(json.dumps({**result, "ablation": runs}, indent=1, default=str) + "\n")
    return runs


def score_mapped(
    reg: Registry,
    target: str,
    layer: int,
    alphas: tuple[float, ...],
    committed: dict,  # type: ignore[type-arg]
    mapped: dict[str, np.ndarray],
    fixed_alphas: dict[str, float] | None = None,
) -> dict:  # type: ignore[type-arg]
    """Each emotion's transplanted row at ``layer``, α chosen on validation (or given in
    ``fixed_alphas``), test reported; the bare model's and the native vector's test accuracy
    are the committed ones (same halves)."""
    rows = []
    for e in EMOTIONS:
        old = committed[e]
        sizes = {"n_val": old["n_val"], "n_test": old["n_test"]}
        if fixed_alphas is None:
            scored = choose(measure(reg, target, e, mapped[e], layer, alphas), sizes)
        else:
            alpha = fixed_alphas[e]
            test = measure(reg, target, e, mapped[e], layer, (alpha,), halves_read=("test",))
            scored = {"alpha": alpha, "test": test[alpha]["test"]}
        rows.append(
            {"emotion": e, "base": old["base"], "native": old["native"], "anchored": scored}
        )
    mean = float(np.mean([r["anchored"]["test"]["token_accuracy"] for r in rows]))
    base = float(np.mean([r["base"]["token_accuracy"] for r in rows]))
    native = float(np.mean([r["native"]["test"]["token_accuracy"] for r in rows]))
    return {"mean_test": mean, "lift_fraction": (mean - base) / (native - base), "rows": rows}


def _fit_one(xs, ys, ls: int, lt: int, anchors: AnchorSet):  # type: ignore[no-untyped-def]
    """The anchored map at (ls, lt); ``xs`` None: the anchors alone (no corpus rows)."""
    from crx.registry.engine.fit.anchored import solve_anchored
    from crx.registry.engine.fit.maps import FittedMap

    if xs is None:
        sol = solve_anchored(
            None,
            None,
            torch.from_numpy(anchors.source[:, ls]),
            torch.from_numpy(anchors.target[:, lt]),
            anchors.groups,
        )
        nan = float("nan")
        return FittedMap(
            ls, lt, sol.wt.T.float().numpy(), None, nan, nan, nan, nan, nan, 0, 0, 0, sol.settings()
        )
    return fit_pairs(
        xs,
        ys,
        [(ls, lt)],
        solver="anchored",
        anchors=Anchors(anchors.source, anchors.target, anchors.groups),
    )[0]


if __name__ == "__main__":
    main()
