"""Honesty transplant on TruthfulQA (dev half): base target vs transplanted vs the source model.

    crx demo   # or: crx models pull both models and crx fit --source ... --target ...
    .venv/bin/python benchmarks/truthfulqa_bench.py \
        --data ../shared/data/truthfulqa/truthfulqa_dev.csv \
        --facts ../shared/data/repe/facts_true_false.csv \
        --out benchmarks/results/truthfulqa_smollm2_gemma.json

The honesty concept: RepE's persona pairs over the true statements of facts_true_false.csv
("Pretend you're an honest / untruthful person making statements about the world." + the same
statement). Extracted on SmolLM2-135M-Instruct, transplanted into Gemma-3-270m with the fitted
maps, steered at Gemma's block 13 with α relative to its residual norm. MC1 and MC2 by answer
log-likelihood after "Q: ...\\nA:" (no primer). Development numbers: the dev half only.

``--validated`` splits the dev questions into two alternating halves (file order), chooses α on
the first by MC2 (then MC1, then the smaller α) and reports the second, so the transplanted row
is not tuned on the questions it is scored on. It measures every number on the two halves
only, and combines the whole dev set's table from them exactly (``--limit`` does not apply).

``--anchored`` transplants through concept-anchored maps instead of the ridge maps, as a
registry made by ``crx demo`` holds them: the concept bank extracted on both models in the
emotions' template on its first 8 pairs per concept, and ``crx fit --solver anchored`` with
the transplanted concept excluded (it is never extracted on the target, so it could not anchor
anyway).
``--anchor-template plain`` reads the bank as plain text instead, the way the honesty pairs
themselves are read; ``--anchor-template persona`` reads each bank text after the honesty pairs'
shared frame with the contrast word left out ("Pretend you're a person making statements about
the world. " + text), so the anchors are read where the honesty concept is (the emotion rule).

``--native`` steers with honesty extracted on the target itself (no map), at the same block and
α grid: what the target's own direction for the concept does, beside what a transplant does.
``--native source`` steers the source model (SmolLM2) with its own vector instead, at its own
block of relative depth 0.75: how much the concept itself moves TruthfulQA on the aligned model
it is taken from, against that model's own random directions (``--random-controls`` follows the
result's ``steered_model``).

``--concept truth`` extracts a different honesty concept from the same facts file: the true
statements against the false ones, as plain text (no persona frame), paired in file order (306
pairs); its mean difference is the mass-mean truth direction of Marks & Tegmark (2023). Plain
statements read like the WikiSplit sentences the maps are fitted on, where the persona frame does
not.

``--random-controls RESULT`` adds a control to a ``--validated`` result: random directions
(seeded Gaussian vectors) steered at the same block with the same normalized α as the chosen
one, on the test half. A steering vector that only flattens the answer distribution moves MC2
towards its chance level (the mean share of true answers, 0.445 on the dev half) whatever its
direction; the transplant counts as honesty only where it beats these controls.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from crx import Registry
from crx.registry.engine import emotion
from crx.registry.engine.truthfulqa import HONEST, UNTRUTHFUL, honesty_pairs, truth_pairs
from crx.registry.workflows.bank import TEMPLATE as PLAIN_TEMPLATE
from crx.registry.workflows.demo import BANK_PAIRS, SOURCE, TARGET
from crx.registry.workflows.evaluate import default_layer, reference_norm

# --concept: how the pairs are built from the facts file, and how the registry records them
CONCEPTS = {
    "honesty": (honesty_pairs, "repe-honesty-persona:true-statements",
                "RepE honest vs untruthful persona over true statements"),
    "truth": (truth_pairs, "repe-facts:true-vs-false-statements",
              "true vs false statements of RepE's facts, plain text (a mass-mean truth direction)"),
}  # fmt: skip
# the honesty pairs' frame without its contrast word: "Pretend you're a person making ..."
PERSONA_FRAME = HONEST.replace("an honest person", "a person")
assert UNTRUTHFUL.replace("an untruthful person", "a person") == PERSONA_FRAME
# where --anchored reads the bank: the demo's recipe, plain text as the honesty pairs are, or
# inside the honesty pairs' own frame
ANCHOR_TEMPLATES = {
    "emotion": emotion.TEMPLATE,
    "plain": PLAIN_TEMPLATE,
    "persona": PERSONA_FRAME + "{text}",
}


def metrics(records: list) -> dict:  # type: ignore[type-arg]
    out: dict = {}
    for r in records:
        out.setdefault(str(r.alpha), {})[r.metric] = r.value
    return out


def halves(data: Path, folder: Path) -> dict[str, Path]:
    """The dev CSV split into alternating halves (validation, test), each with the header."""
    rows = list(csv.reader(io.StringIO(data.read_text(encoding="utf-8"))))
    header, body = rows[0], rows[1:]
    out = {}
    for name, part in (("val", body[0::2]), ("test", body[1::2])):
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([header, *part])
        out[name] = folder / f"truthfulqa_{name}.csv"
        out[name].write_text(buffer.getvalue(), encoding="utf-8")
    return out


def validated(  # type: ignore[type-arg]
    reg: Registry,
    mapped_id: int,
    layer: int,
    data: Path,
    alphas: list[float],
    steered_model: str = TARGET,
) -> dict:
    """Every number on the two halves; the whole dev set's numbers combined exactly from them
    (MC1 and MC2 are means over questions, so a size-weighted mean of the halves is exact).
    The vector steers ``steered_model`` (the target, or the source for its own vector)."""
    with tempfile.TemporaryDirectory() as tmp:
        files = halves(data, Path(tmp))
        sizes = {h: len(list(csv.reader(f.open(encoding="utf-8")))) - 1 for h, f in files.items()}
        bare = {
            model: {
                h: metrics(reg.evaluate_truthfulqa(model, f, vector_id=None))["None"]
                for h, f in files.items()
            }
            # the source's own vector needs no bare target (Gemma's pass is the costly one)
            for model in dict.fromkeys((SOURCE, steered_model))
        }
        steered = {
            h: metrics(
                reg.evaluate_truthfulqa(
                    steered_model,
                    f,
                    vector_id=mapped_id,
                    alphas=alphas,
                    layer=layer,
                    normalize=True,
                )
            )
            for h, f in files.items()
        }

    def whole(by_half: dict) -> dict:  # type: ignore[type-arg]
        n = sizes["val"] + sizes["test"]
        return {m: (by_half["val"][m] * sizes["val"] + by_half["test"][m] * sizes["test"]) / n
                for m in by_half["val"]}  # fmt: skip

    chosen = max(alphas, key=lambda a: (steered["val"][str(a)]["mc2"],
                                        steered["val"][str(a)]["mc1"], -a))  # fmt: skip
    return {
        "whole": {
            "source_model": {"None": whole(bare[SOURCE])},
            "target_base": {"None": whole(bare[steered_model])},  # the steered model, bare
            "target_transplanted": {
                str(a): whole({h: steered[h][str(a)] for h in files}) for a in alphas
            },
        },
        "validated": {
            "split": "alternating dev questions in file order: validation = 1st, 3rd, ...",
            "n_val": sizes["val"],
            "n_test": sizes["test"],
            "alpha_chosen_on_validation_by_mc2": chosen,
            "source_model_test": bare[SOURCE]["test"],
            "target_base_test": bare[steered_model]["test"],
            "target_transplanted_test": steered["test"][str(chosen)],
            "by_half": {
                "source": bare[SOURCE],
                "base": bare[steered_model],
                "transplanted": steered,
            },
        },
    }


def random_controls(reg: Registry, result: dict, data: Path, seeds: list[int]) -> dict:  # type: ignore[type-arg]
    """MC1/MC2 on the test half with random directions at the chosen block and α."""
    from crx.registry.engine import truthfulqa
    from crx.registry.engine.steer import steer

    layer = result["layer"]
    alpha = result["validated"]["alpha_chosen_on_validation_by_mc2"]
    model = result.get("steered_model", TARGET)  # results before --native source steered it
    loaded = reg.load_model(model)
    norm = reference_norm(loaded, layer)
    with tempfile.TemporaryDirectory() as tmp:
        test = halves(data, Path(tmp))["test"]
        questions = truthfulqa.parse_questions(test.read_text(encoding="utf-8"), str(test))
    runs = []
    for seed in seeds:
        direction = np.random.default_rng(seed).standard_normal(loaded.d_model).astype(np.float32)
        with steer(loaded.layers, direction, layer=layer, alpha=alpha, normalize=True,
                   reference_norm=norm):  # fmt: skip
            runs.append(truthfulqa.evaluate(loaded, questions))
    mean = {m: sum(r[m] for r in runs) / len(runs) for m in ("mc1", "mc2")}
    chance_mc2 = sum(len(q.correct) / (len(q.correct) + len(q.incorrect)) for q in questions)
    return {
        "alpha": alpha,
        "layer": layer,
        "model": model,
        "seeds": seeds,
        "test": runs,
        "mean_test": mean,
        "chance_mc2_test": chance_mc2 / len(questions),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--facts", type=Path, required=True)
    parser.add_argument("--alphas", default="0.05,0.1,0.2")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument(
        "--validated",
        action="store_true",
        help="choose alpha on one half of the questions, report the other",
    )
    parser.add_argument(
        "--random-controls",
        type=Path,
        metavar="RESULT",
        help="add random-direction controls to a --validated RESULT file (rewritten in place)",
    )
    parser.add_argument(
        "--anchored",
        action="store_true",
        help="transplant through concept-anchored maps (the demo's bank recipe)",
    )
    parser.add_argument(
        "--anchor-template",
        choices=sorted(ANCHOR_TEMPLATES),
        default="emotion",
        help="the prompt the bank is read in for --anchored: the emotions' template (the "
        "demo's), plain text, or the honesty pairs' frame without its contrast word",
    )
    parser.add_argument(
        "--native",
        nargs="?",
        const="target",
        choices=("target", "source"),
        help="steer a model with honesty extracted on itself (no map), for comparison: the "
        "target (default) or the source",
    )
    parser.add_argument(
        "--concept",
        choices=sorted(CONCEPTS),
        default="honesty",
        help="the concept built from --facts: RepE's honest/untruthful persona over the true "
        "statements (default), or the true statements against the false ones",
    )
    parser.add_argument(
        "--seeds",
        default="0,1,2",
        help="the random directions' seeds for --random-controls (comma-separated)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.native and args.anchored:
        parser.error("--native steers without a map; it cannot be --anchored")
    if args.random_controls:
        result = json.loads(args.random_controls.read_text())
        started = time.monotonic()
        seeds = [int(s) for s in args.seeds.split(",")]
        controls = random_controls(Registry(), result, args.data, seeds)
        controls["seconds"] = round(time.monotonic() - started, 1)
        result["random_direction_controls"] = controls
        args.random_controls.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(controls, indent=2))
        return
    alphas = [float(a) for a in args.alphas.split(",")]
    started = time.monotonic()
    reg = Registry()
    build, construction, description = CONCEPTS[args.concept]
    pairs = build(args.facts.read_text(encoding="utf-8"))
    ref = reg.register_concept(
        args.concept, pairs, pair_construction=construction, description=description
    ).record.ref
    solver = "anchored" if args.anchored else None
    template = ANCHOR_TEMPLATES[args.anchor_template] if args.anchored else None
    steered_model = SOURCE if args.native == "source" else TARGET
    if args.native:  # the steered model's own vector: no source vector, no map
        mapped = reg.extract(ref, steered_model).record
    else:
        source_vector = reg.extract(ref, SOURCE).record
        if template is not None:
            for model in (SOURCE, TARGET):
                reg.extract_bank(model, template=template, pairs=BANK_PAIRS)
            reg.fit(SOURCE, TARGET, solver="anchored", exclude=[args.concept],
                    anchor_template=template)  # fmt: skip
        else:
            reg.fit(SOURCE, TARGET)
        mapped = reg.transplant(ref, SOURCE, TARGET, vector_id=source_vector.id,
                                solver=solver).record  # fmt: skip
    layer = default_layer(reg.get_model(steered_model).n_layers)
    maps = "none: native vector" if args.native else solver or "auto (ridge)"
    result: dict = {"concept": ref, "n_pairs": len(pairs), "layer": layer, "alphas": alphas,  # type: ignore[type-arg]
                    "maps": maps, "steered_model": steered_model}  # fmt: skip
    if template is not None:
        result["anchor_template"] = template
    if args.validated:
        parts = validated(reg, mapped.id, layer, args.data, alphas, steered_model)
        result.update(parts["whole"])
        result["validated"] = parts["validated"]
    else:
        common = {"limit": args.limit}
        result["source_model"] = metrics(
            reg.evaluate_truthfulqa(SOURCE, args.data, vector_id=None, **common)
        )
        result["target_base"] = metrics(
            reg.evaluate_truthfulqa(TARGET, args.data, vector_id=None, **common)
        )
        result["target_transplanted"] = metrics(
            reg.evaluate_truthfulqa(steered_model, args.data, vector_id=mapped.id, alphas=alphas,
                                    layer=layer, normalize=True, **common)
        )  # fmt: skip
    result["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
