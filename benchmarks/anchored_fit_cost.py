"""What the anchored ``auto`` fit costs against ridge's ``auto`` fit, on a registry's real states.

    export CRX_HOME=...   # a registry holding both models' corpus states (cached by a fit) and
                          # the bank extracted on both (`crx demo` makes one)
    .venv/bin/python benchmarks/anchored_fit_cost.py --template emotion --exclude sadness \\
        --rounds 5 --out benchmarks/results/anchored_fit_cost_smollm2_gemma.json

Both fits read the same cached corpus states (loaded into memory once, before any timing) and
the anchored one the same anchor set as ``crx fit --solver anchored`` would; only
``fit_pairs`` itself is timed, in one process with one thread, the two alternated for
``--rounds`` rounds so both meet the same machine load. CPU seconds (``time.process_time``)
are the cost of the work whatever else the machine runs; the ratio of the medians is reported.
The anchored fit includes ridge's first pass (the validation scores that pick each target
block's source block), so it can never cost less than that pass.
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

import torch

from crx import Registry
from crx.registry.engine import emotion
from crx.registry.engine.fit import fit_pairs
from crx.registry.engine.fit.anchored import Anchors
from crx.registry.workflows.anchors import anchor_set
from crx.registry.workflows.bank import TEMPLATE as PLAIN_TEMPLATE
from crx.registry.workflows.corpus import corpus_states, load_corpus
from crx.registry.workflows.demo import SOURCE, TARGET

TEMPLATES = {"emotion": emotion.TEMPLATE, "plain": PLAIN_TEMPLATE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", default=SOURCE)
    parser.add_argument("--target", default=TARGET)
    parser.add_argument(
        "--template",
        default="emotion",
        help="the anchors' template: emotion, plain, or the template's text itself",
    )
    parser.add_argument("--exclude", action="append", default=[])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    reg = Registry()
    ws, catalog = reg.workspace, reg.catalog
    src, tgt = catalog.get_model(args.source), catalog.get_model(args.target)
    lines, corpus_bytes = load_corpus(None)
    oid = catalog.store.put(corpus_bytes)
    x = corpus_states(ws, src, lines, oid).tensor()
    y = corpus_states(ws, tgt, lines, oid).tensor()
    template = TEMPLATES.get(args.template, args.template)
    found = anchor_set(ws, src, tgt, exclude=args.exclude, template=template)
    anchors = Anchors(found.source, found.target, found.groups)
    seconds: dict[str, list[float]] = {"ridge": [], "anchored": []}
    sources: list[int] = []
    for _ in range(args.rounds):
        for solver in ("ridge", "anchored"):
            started = time.process_time()
            maps = fit_pairs(x, y, "auto", solver=solver,
                             anchors=anchors if solver == "anchored" else None)  # fmt: skip
            seconds[solver].append(time.process_time() - started)
            if solver == "anchored":
                sources = [m.source_layer for m in maps]
    medians = {s: statistics.median(v) for s, v in seconds.items()}
    result = {
        "source": args.source,
        "target": args.target,
        "anchor_template": template,
        "n_anchors": len(found.groups),
        "n_anchor_groups": len(set(found.groups)),
        "corpus_lines": len(lines),
        "source_block_per_target_block": sources,
        "threads": 1,
        "rounds": args.rounds,
        "cpu_seconds": seconds,
        "median_cpu_seconds": medians,
        "anchored_over_ridge": medians["anchored"] / medians["ridge"],
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread",
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
