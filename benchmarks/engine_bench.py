"""Engine speed: extraction throughput and steered generation, as ratios in one run.

    CRX_HOME=~/.crx .venv/bin/python benchmarks/engine_bench.py --model smollm2-135m-instruct \
        --out benchmarks/results/engine_smollm2.json

Needs the model pulled (`crx models pull NAME`). Measures, interleaved and repeated (medians):
- crx extraction (`crx.registry.engine.capture.residual_states`: backbone only, length-sorted
  batches, the prompts' shared first tokens run once, last-token hooks) over 400 ConTrans
  refine prompts; also without the shared prefix (``share_prefix=False``) to show its part;
- a plain batched forward of the whole causal LM over the same prompts (what repeng and
  steering-vectors run: logits at every position), same batch size;
- ConTrans' loop: one prompt at a time, ``output_hidden_states=True`` (timed on a subset and
  reported per prompt);
- greedy generation of 32 tokens, unsteered vs steered (one hook at the 0.75-depth block).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crx import Registry
from crx.registry.engine import emotion
from crx.registry.engine.batching import shared_prefix_length
from crx.registry.engine.capture import residual_states
from crx.registry.engine.steer import steer
from crx.registry.workflows.evaluate import default_layer


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single", type=int, default=60, help="prompts for the one-at-a-time loop")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    reg = Registry()
    loaded = reg.load_model(args.model)
    scenarios = [s for e in emotion.EMOTIONS for s in emotion.load_scenarios(e)]
    texts = [emotion.TEMPLATE.replace("{text}", s) for s in scenarios][: args.prompts]
    tok = loaded.tokenizer
    encoded = tok(texts)["input_ids"]

    def crx_extract() -> None:
        residual_states(loaded, texts, batch_size=args.batch_size)

    def crx_no_prefix() -> None:
        residual_states(loaded, texts, batch_size=args.batch_size, share_prefix=False)

    def plain_forward() -> None:
        with torch.inference_mode():
            for i in range(0, len(texts), args.batch_size):
                batch = tok(texts[i : i + args.batch_size], return_tensors="pt", padding=True)
                loaded.model(**batch)

    def contrans_loop() -> None:
        with torch.inference_mode():
            for text in texts[: args.single]:
                batch = tok(text, return_tensors="pt")
                out = loaded.model(**batch, output_hidden_states=True)
                torch.stack([h[0, -1] for h in out.hidden_states[1:]])

    crx_extract()  # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {
        "crx": [],
        "crx_no_shared_prefix": [],
        "plain": [],
        "contrans_loop": [],
    }
    for _ in range(args.repeats):
        times["crx"].append(timed(crx_extract))
        times["crx_no_shared_prefix"].append(timed(crx_no_prefix))
        times["plain"].append(timed(plain_forward))
        times["contrans_loop"].append(timed(contrans_loop) * len(texts) / args.single)

    layer = default_layer(loaded.n_layers)
    vector = torch.randn(loaded.n_layers, loaded.d_model)
    prompt = tok("Today I went to the market and", return_tensors="pt")

    def generate() -> None:
        with torch.inference_mode():
            loaded.model.generate(
                **prompt,
                max_new_tokens=32,
                min_new_tokens=32,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )

    def generate_steered() -> None:
        with steer(loaded.layers, vector, layer=layer, alpha=1.0):
            generate()

    generate()
    gen: dict[str, list[float]] = {"unsteered": [], "steered": []}
    for _ in range(args.repeats * 2):
        gen["unsteered"].append(timed(generate))
        gen["steered"].append(timed(generate_steered))

    med = {k: statistics.median(v) for k, v in times.items()}
    gmed = {k: statistics.median(v) for k, v in gen.items()}
    result = {
        "model": args.model,
        "prompts": len(texts),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "mean_prompt_tokens": sum(len(e) for e in encoded) / len(encoded),
        "shared_prefix_tokens": shared_prefix_length(encoded),
        "machine": {
            "cpu_count": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "seconds_median": med,
        "prompts_per_second": {k: len(texts) / v for k, v in med.items()},
        "ratio_crx_vs_plain_forward": med["plain"] / med["crx"],
        "ratio_crx_vs_contrans_loop": med["contrans_loop"] / med["crx"],
        "ratio_crx_vs_crx_no_shared_prefix": med["crx_no_shared_prefix"] / med["crx"],
        "generation_seconds_median": gmed,
        "tokens_per_second": {k: 32 / v for k, v in gmed.items()},
        "ratio_steered_vs_unsteered": gmed["unsteered"] / gmed["steered"],
        "raw": {"extraction": times, "generation": gen},
    }
    print(json.dumps({k: v for k, v in result.items() if k != "raw"}, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
