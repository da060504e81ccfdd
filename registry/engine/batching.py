"""Padded batches of tokenised texts that share a prefix computed once.

Prompts made from one template share their first tokens (a BOS, ``Scenario:``, a persona
sentence, a six-shot prefix, a chat template's system turn). In a causal model those tokens'
keys and values do not depend on what follows, so the shared prefix runs once and every batch
continues from a copy of its KV cache: only each text's own tail goes through the model. The
prefix is the longest common prefix *in token space*, so the result equals full passes to float
tolerance (tests check that for readouts and for residual states, both padding sides).

:mod:`crx.registry.engine.capture` (states at every block), :mod:`crx.registry.engine.prompts`
(next-token readouts) and :mod:`crx.registry.engine.truthfulqa` (answer log-likelihoods) all batch
through :func:`sorted_tail_batches`.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

PADDING_SIDES = ("right", "left")


def _common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix every sequence starts with."""
    shortest = min(len(s) for s in sequences)
    for i in range(shortest):
        token = sequences[0][i]
        if any(s[i] != token for s in sequences):
            return i
    return shortest


def shared_prefix_length(encoded: Sequence[Sequence[int]]) -> int:
    """The prefix worth caching: common to all, leaving every text one token of its own.

    Zero for a single text (nothing to share) or when the texts start differently.
    """
    if len(encoded) < 2:
        return 0
    return max(0, min(_common_prefix_length(encoded), min(len(e) for e in encoded) - 1))


def last_nonpad_index(attention_mask: Any) -> Any:
    """Index of each row's last attended token (works for left and right padding)."""
    length = attention_mask.shape[1]
    return length - 1 - attention_mask.flip(1).int().argmax(dim=1)


def position_ids_from_mask(attention_mask: Any) -> Any:
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def _cache_argument(backbone: Any) -> str:
    """transformers 5.x names the cache ``cache``; earlier releases ``past_key_values``."""
    parameters = inspect.signature(backbone.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _returned_cache(output: Any) -> Any:
    found = getattr(output, "cache", None)
    return found if found is not None else output.past_key_values


def _run_prefix(backbone: Any, prefix: Sequence[int], device: Any) -> Any:
    """Run ``prefix`` once (hooks installed on the model act on it too) and return its cache."""
    import torch

    ids = torch.tensor([list(prefix)], device=device)
    return _returned_cache(backbone(input_ids=ids, use_cache=True))


@dataclass
class TailBatch:
    """One batch of tails: the backbone's keyword arguments and where each tail's tokens are."""

    inputs: dict[str, Any]
    tail_mask: Any  # LongTensor [batch, width]: 1 on each tail's own tokens
    last: Any  # LongTensor [batch]: index of each tail's last token in the batch's positions


def _tail_batch(
    backbone: Any,
    tails: Sequence[Sequence[int]],
    *,
    prefix_length: int,
    cache: Any,
    pad_id: int,
    device: Any,
    padding_side: str = "right",
) -> TailBatch:
    """Pad ``tails`` into one batch that continues after ``prefix_length`` cached tokens.

    Positions continue from the prefix and skip padding, so a padded tail sees the positions it
    would see unpadded; the attention mask covers the prefix and each tail's own tokens. With
    no prefix (``cache`` None) this is a plain padded batch.
    """
    import torch

    width = max(len(t) for t in tails)
    ids = torch.full((len(tails), width), pad_id, dtype=torch.long)
    tail_mask = torch.zeros((len(tails), width), dtype=torch.long)
    for row, tail in enumerate(tails):
        start = 0 if padding_side == "right" else width - len(tail)
        ids[row, start : start + len(tail)] = torch.tensor(list(tail), dtype=torch.long)
        tail_mask[row, start : start + len(tail)] = 1
    mask = torch.cat([torch.ones((len(tails), prefix_length), dtype=torch.long), tail_mask], 1)
    inputs: dict[str, Any] = {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "position_ids": (prefix_length + position_ids_from_mask(tail_mask)).to(device),
        "use_cache": cache is not None,
    }
    if cache is not None:
        batch_cache = copy.deepcopy(cache)
        batch_cache.batch_repeat_interleave(len(tails))
        inputs[_cache_argument(backbone)] = batch_cache
    tail_mask = tail_mask.to(device)
    return TailBatch(inputs=inputs, tail_mask=tail_mask, last=last_nonpad_index(tail_mask))


def sorted_tail_batches(
    loaded: Any,
    encoded: Sequence[Sequence[int]],
    *,
    prefix_length: int,
    batch_size: int,
    padding_side: str = "right",
) -> Iterator[tuple[list[int], TailBatch]]:
    """Run the shared prefix once, then yield ``(rows, batch)`` over the length-sorted texts.

    Sorting by length keeps padding small. Iterate it under ``torch.inference_mode()``: the
    prefix runs at the first ``next``, with whatever hooks are installed by then.
    """
    backbone = loaded.model.base_model
    pad_id = loaded.tokenizer.pad_token_id
    cache = (
        _run_prefix(backbone, encoded[0][:prefix_length], loaded.device) if prefix_length else None
    )
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield (
            rows,
            _tail_batch(
                backbone,
                [encoded[i][prefix_length:] for i in rows],
                prefix_length=prefix_length,
                cache=cache,
                pad_id=pad_id if pad_id is not None else 0,
                device=loaded.device,
                padding_side=padding_side,
            ),
        )
