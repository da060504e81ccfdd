"""What batching the concept bank's concepts through the model buys `crx bank extract`.

    export CRX_HOME=...   # a scratch registry with the model pulled (`crx models pull`);
                          # the bank's vectors are re-extracted there (``force``) every round
    .venv/bin/python benchmarks/bank_bench.py --model smollm2-135m-instruct --limit 64 \\
        --pairs 24 --rounds 3 --out benchmarks/results/bank_extract_smollm2.json

Each round runs ``Registry.extract_bank`` (what ``crx bank extract --force`` runs: register,
load the model, extract, store and record every vector) once with one concept per pass and
once with ``--per-pass`` concepts per pass, the two alternated so both meet the same machine
load, in one process. The model is loaded before the first round, so that neither setting pays
the first read from disk. Wall seconds per call are reported, with the ratio of the medians,
and the largest difference between the two settings' vectors relative to the vector's norm
(they must agree to float tolerance: batching changes only which texts share a forward pass).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from crx import Registry
from crx.registry.engine import emotion
from crx.registry.workflows.bank import CONCEPTS_PER_PASS
from crx.registry.workflows.bank import TEMPLATE as PLAIN_TEMPLATE

TEMPLATES = {"emotion": emotion.TEMPLATE, "plain": PLAIN_TEMPLATE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--limit", type=int, default=64, help="the bank's first N concepts")
    parser.add_argument("--pairs", type=int, default=24, help="pairs per concept (of 24)")
    parser.add_argument("--template", default="emotion", help="emotion, plain, or the text")
    parser.add_argument("--per-pass", type=int, default=CONCEPTS_PER_PASS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    template = TEMPLATES.get(args.template, args.template)
    reg = Registry()
    reg.load_model(args.model)  # warm the page cache: both settings then read from memory
    settings = (1, args.per_pass)
    seconds: dict[int, list[float]] = {k: [] for k in settings}
    vectors: dict[int, list[np.ndarray]] = {}
    for _ in range(args.rounds):
        for per_pass in settings:
            started = time.perf_counter()
            results = reg.extract_bank(args.model, limit=args.limit, template=template,
                                       pairs=args.pairs, concepts_per_pass=per_pass,
                                       force=True)  # fmt: skip
            seconds[per_pass].append(time.perf_counter() - started)
            vectors[per_pass] = [reg.load_vector(v.id) for v, _ in results]
            print(per_pass, "concepts per pass:", round(seconds[per_pass][-1], 1), "s",
                  flush=True)  # fmt: skip
    worst = max(
        float(np.abs(a - b).max() / np.linalg.norm(a))
        for a, b in zip(vectors[1], vectors[args.per_pass], strict=True)
    )
    medians = {k: statistics.median(v) for k, v in seconds.items()}
    result = {
        "model": args.model,
        "concepts": args.limit,
        "pairs_per_concept": args.pairs,
        "template": template,
        "rounds": args.rounds,
        "wall_seconds": {f"{k}_per_pass": v for k, v in seconds.items()},
        "median_wall_seconds": {f"{k}_per_pass": v for k, v in medians.items()},
        "one_per_pass_over_batched": medians[1] / medians[args.per_pass],
        "max_abs_diff_over_norm": worst,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
