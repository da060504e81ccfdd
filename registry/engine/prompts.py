"""Next-token readouts of many prompts that share a long prefix, cheaply.

The six-shot emotion prompts share one long prefix. It runs once per configuration (with any
steering hooks on) and every prompt continues from a copy of its KV cache, in right-padded
batches; only the last position of each prompt goes through the LM head. The shared prefix is
found in token space (the longest common prefix of the tokenised prompts), so results equal a
plain full-prompt pass to float tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from crx.registry.engine.batching import shared_prefix_length, sorted_tail_batches
from crx.registry.engine.loading import LoadedModel


@dataclass
class Readout:
    """Per prompt: the top-1 next token id and the logits of the candidate tokens."""

    top1: Any  # LongTensor [n]
    candidate_logits: Any  # FloatTensor [n, n_candidates]


def read_next_tokens(
    loaded: LoadedModel,
    prompts: Sequence[str],
    candidate_ids: Sequence[int],
    *,
    batch_size: int = 16,
    use_prefix_cache: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Readout:
    """Top-1 next token and candidate logits after each prompt (one pass per prompt)."""
    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    encoded = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    prefix_length = shared_prefix_length(encoded) if use_prefix_cache else 0
    head = model.get_output_embeddings()
    device = loaded.device
    candidates = torch.tensor(list(candidate_ids), device=device)
    top1 = torch.empty(len(prompts), dtype=torch.long)
    chosen = torch.empty((len(prompts), len(candidates)), dtype=torch.float32)
    with torch.inference_mode():
        batches = sorted_tail_batches(
            loaded, encoded, prefix_length=prefix_length, batch_size=batch_size
        )
        for done, (rows, batch) in enumerate(batches, start=1):
            hidden = model.base_model(**batch.inputs).last_hidden_state
            # the last block (and the head) may sit on another device than the inputs
            at = hidden.device
            picked = hidden[torch.arange(len(rows), device=at), batch.last.to(at)]
            logits = head(picked).float()
            top1[rows] = logits.argmax(dim=-1).cpu()
            chosen[rows] = logits[:, candidates.to(logits.device)].cpu()
            if progress is not None:
                progress(min(done * batch_size, len(prompts)), len(prompts))
    return Readout(top1=top1, candidate_logits=chosen)
