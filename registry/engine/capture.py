"""Reading the residual stream: per-text states at every decoder block, in batched passes.

What makes it fast and exact:
- only the backbone runs (``model.base_model``), never the LM head: extraction needs no logits,
  and the head is ~30 % of a pass on a 49k vocabulary and more on Gemma's 262k;
- texts are sorted by length before batching, so batches carry little padding;
- the tokens every text starts with (a BOS, the template's opening words, a persona or system
  turn) run once, and each batch continues from a copy of their KV cache
  (:mod:`crx.registry.engine.batching`): only each text's own tail goes through the model;
- the forward stops after the deepest block asked for;
- hooks keep only the selected token (the last non-pad one, read from the attention mask, so
  left and right padding agree) or the masked mean, never whole ``[batch, seq, d]`` outputs;
- position ids come from the attention mask, so a left-padded text sees the same positions as
  an unpadded one;
- everything runs under ``torch.inference_mode()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from crx.registry.engine.batching import PADDING_SIDES, shared_prefix_length, sorted_tail_batches
from crx.registry.engine.layers import block_output
from crx.registry.engine.loading import LoadedModel
from crx.registry.errors import InvalidInput
from crx.registry.progress import Progress

TOKENS = ("last", "mean")


class _StopForward(Exception):
    """Raised by the deepest hook: the blocks after it are not needed."""


def residual_states(
    loaded: LoadedModel,
    texts: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    token: str = "last",
    batch_size: int = 32,
    max_length: int | None = None,
    padding_side: str = "right",
    share_prefix: bool = True,
    progress: Progress | None = None,
    sink: Callable[[Any, int, Any], None] | None = None,
) -> Any:
    """States of each text at each requested block: float32 tensor ``[n_texts, n_layers, d]``.

    With ``sink``, nothing is gathered and None is returned: each batch's states at each block
    go to ``sink(rows, layer, states)`` as they are read (``rows``: the batch's text indices,
    ``states``: float32 ``[len(rows), d]`` on the CPU), so memory is one batch, not
    ``[n_texts, n_layers, d]`` (the corpus cache writes them to per-layer shards).

    ``layers`` defaults to every block; ``token`` is ``"last"`` (the last non-pad token) or
    ``"mean"`` (the mean over non-pad tokens, the shared prefix's included). Neither
    ``padding_side`` nor ``share_prefix`` changes the result beyond float tolerance (tests check
    both); right padding and a shared prefix are the defaults.
    """
    import torch

    if token not in TOKENS:
        raise InvalidInput(f"token must be one of {', '.join(TOKENS)}, not {token!r}")
    if padding_side not in PADDING_SIDES:
        raise InvalidInput(f"padding_side must be one of {', '.join(PADDING_SIDES)}")
    if not texts:
        raise InvalidInput("no texts to read states from")
    wanted = list(range(loaded.n_layers)) if layers is None else list(layers)
    for layer in wanted:
        if not 0 <= layer < loaded.n_layers:
            raise InvalidInput(f"layer {layer} is out of range ({loaded.n_layers} layers)")
    tokenizer = loaded.tokenizer
    encoded = tokenizer(
        list(texts),
        add_special_tokens=True,
        truncation=max_length is not None,
        max_length=max_length,
    )["input_ids"]
    prefix_length = shared_prefix_length(encoded) if share_prefix else 0
    deepest = max(wanted)
    slot = {layer: k for k, layer in enumerate(wanted)}
    out = (
        None
        if sink is not None
        else torch.empty((len(texts), len(wanted), loaded.d_model), dtype=torch.float32)
    )
    state: dict[str, Any] = {}  # the batch being read; none yet during the prefix's pass
    prefix_sums: dict[int, Any] = {}  # per block, the sum of the prefix tokens' states

    def make_hook(layer: int) -> Callable[..., None]:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            hidden = block_output(output)
            if "batch" not in state:  # the shared prefix's pass: only the mean needs its states
                if token == "mean":
                    prefix_sums[layer] = hidden[0].double().sum(dim=0)
                return
            batch = state["batch"]
            # A model spread over devices (accelerate's device_map) runs each block where it
            # sits: read the batch's positions there, and the states come back to the CPU.
            if token == "last":
                rows = torch.arange(hidden.shape[0], device=hidden.device)
                picked = hidden[rows, batch.last.to(hidden.device)]
            else:
                tail_mask = batch.tail_mask.to(hidden.device)
                mask = tail_mask.unsqueeze(-1).to(hidden.dtype)
                total = (hidden * mask).double().sum(dim=1)
                if prefix_length:
                    total = total + prefix_sums[layer]
                picked = total / (tail_mask.sum(dim=1, keepdim=True) + prefix_length)
            if out is None:
                assert sink is not None
                sink(state["rows"], layer, picked.float().cpu())
            else:
                out[state["rows"], slot[layer]] = picked.float().cpu()
            if layer == deepest:
                raise _StopForward

        return hook

    handles = [loaded.layers[layer].register_forward_hook(make_hook(layer)) for layer in wanted]
    try:
        with torch.inference_mode():
            batches = sorted_tail_batches(
                loaded,
                encoded,
                prefix_length=prefix_length,
                batch_size=batch_size,
                padding_side=padding_side,
            )
            for done, (rows, batch) in enumerate(batches, start=1):
                state.update(rows=torch.tensor(rows), batch=batch)
                with contextlib.suppress(_StopForward):
                    loaded.model.base_model(**batch.inputs)
                if progress is not None:
                    progress(min(done * batch_size, len(texts)), len(texts))
    finally:
        for handle in handles:
            handle.remove()
    return out
