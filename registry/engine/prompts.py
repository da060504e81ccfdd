"""Next-token readouts of many prompts that share a long prefix, cheaply.

The six-shot emotion prompts share one long prefix. It runs once per configuration (with any
steering hooks on) and every prompt continues from a copy of its KV cache, in right-padded
batches; only the last position of each prompt goes through the LM head. The shared prefix is
found in token space (the longest common prefix of the tokenised prompts), so results equal a
plain full-prompt pass to float tolerance.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from registry.engine.loading import LoadedModel


@dataclass
class Readout:
    """Per prompt: the top-1 next token id and the logits of the candidate tokens."""

    top1: Any  # LongTensor [n]
    candidate_logits: Any  # FloatTensor [n, n_candidates]


def _common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    shortest = min(len(s) for s in sequences)
    for i in range(shortest):
        token = sequences[0][i]
        if any(s[i] != token for s in sequences):
            return i
    return shortest


def _cache_argument(backbone: Any) -> str:
    """transformers 5.x names the cache ``cache``; earlier releases ``past_key_values``."""
    parameters = inspect.signature(backbone.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _returned_cache(output: Any) -> Any:
    found = getattr(output, "cache", None)
    return found if found is not None else output.past_key_values


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
    prefix_length = _common_prefix_length(encoded) if use_prefix_cache and len(encoded) > 1 else 0
    # Every prompt needs at least one token of its own after the cached prefix.
    prefix_length = min(prefix_length, min(len(e) for e in encoded) - 1)
    head = model.get_output_embeddings()
    backbone = model.base_model
    device = loaded.device
    candidates = torch.tensor(list(candidate_ids), device=device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    top1 = torch.empty(len(prompts), dtype=torch.long)
    chosen = torch.empty((len(prompts), len(candidates)), dtype=torch.float32)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    with torch.inference_mode():
        cache = None
        if prefix_length:
            prefix = torch.tensor([encoded[0][:prefix_length]], device=device)
            cache = _returned_cache(backbone(input_ids=prefix, use_cache=True))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            tails = [encoded[i][prefix_length:] for i in rows]
            width = max(len(t) for t in tails)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), prefix_length + width), dtype=torch.long)
            mask[:, :prefix_length] = 1
            for r, tail in enumerate(tails):
                ids[r, : len(tail)] = torch.tensor(tail)
                mask[r, prefix_length : prefix_length + len(tail)] = 1
            positions = (prefix_length + torch.arange(width)).expand(len(rows), width)
            kwargs: dict[str, Any] = {}
            if cache is not None:
                batch_cache = copy.deepcopy(cache)
                batch_cache.batch_repeat_interleave(len(rows))
                kwargs[_cache_argument(backbone)] = batch_cache
            hidden = backbone(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                use_cache=cache is not None,
                **kwargs,
            ).last_hidden_state
            last = torch.tensor([len(t) - 1 for t in tails], device=device)
            logits = head(hidden[torch.arange(len(rows), device=device), last]).float()
            top1[rows] = logits.argmax(dim=-1).cpu()
            chosen[rows] = logits[:, candidates].cpu()
            if progress is not None:
                progress(min(start + batch_size, len(order)), len(order))
    return Readout(top1=top1, candidate_logits=chosen)
