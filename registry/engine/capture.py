"""Reading the residual stream: per-text states at every decoder block, in batched passes.

What makes it fast and exact:
- only the backbone runs (``model.base_model``), never the LM head: extraction needs no logits,
  and the head is ~30 % of a pass on a 49k vocabulary and more on Gemma's 262k;
- texts are sorted by length before batching, so batches carry little padding;
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

from registry.engine.layers import block_output
from registry.engine.loading import LoadedModel
from registry.errors import InvalidInput

TOKENS = ("last", "mean")
Progress = Callable[[int, int], None]


class _StopForward(Exception):
    """Raised by the deepest hook: the blocks after it are not needed."""


def last_nonpad_index(attention_mask: Any) -> Any:
    """Index of each row's last attended token (works for left and right padding)."""
    length = attention_mask.shape[1]
    return length - 1 - attention_mask.flip(1).int().argmax(dim=1)


def position_ids_from_mask(attention_mask: Any) -> Any:
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def residual_states(
    loaded: LoadedModel,
    texts: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    token: str = "last",
    batch_size: int = 32,
    max_length: int | None = None,
    padding_side: str = "right",
    progress: Progress | None = None,
) -> Any:
    """States of each text at each requested block: float32 tensor ``[n_texts, n_layers, d]``.

    ``layers`` defaults to every block; ``token`` is ``"last"`` (the last non-pad token) or
    ``"mean"`` (the mean over non-pad tokens). ``padding_side`` changes nothing in the result
    beyond float tolerance (tests check that); right padding is the default.
    """
    import torch

    if token not in TOKENS:
        raise InvalidInput(f"token must be one of {', '.join(TOKENS)}, not {token!r}")
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
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    deepest = max(wanted)
    slot = {layer: k for k, layer in enumerate(wanted)}
    out = torch.empty((len(texts), len(wanted), loaded.d_model), dtype=torch.float32)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    backbone = loaded.model.base_model
    device = loaded.device
    state: dict[str, Any] = {}

    def make_hook(layer: int) -> Callable[..., None]:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            hidden = block_output(output)
            if token == "last":
                rows = torch.arange(hidden.shape[0], device=hidden.device)
                picked = hidden[rows, state["index"]]
            else:
                mask = state["mask"].unsqueeze(-1).to(hidden.dtype)
                picked = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
            out[state["rows"], slot[layer]] = picked.float().cpu()
            if layer == deepest:
                raise _StopForward

        return hook

    handles = [loaded.layers[layer].register_forward_hook(make_hook(layer)) for layer in wanted]
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                width = max(len(encoded[i]) for i in rows)
                ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):
                    span = (
                        slice(0, len(encoded[i]))
                        if padding_side == "right"
                        else slice(width - len(encoded[i]), width)
                    )
                    ids[r, span] = torch.tensor(encoded[i])
                    mask[r, span] = 1
                ids, mask = ids.to(device), mask.to(device)
                state.update(rows=torch.tensor(rows), index=last_nonpad_index(mask), mask=mask)
                with contextlib.suppress(_StopForward):
                    backbone(
                        input_ids=ids,
                        attention_mask=mask,
                        position_ids=position_ids_from_mask(mask),
                        use_cache=False,
                    )
                if progress is not None:
                    progress(min(start + batch_size, len(order)), len(order))
    finally:
        for handle in handles:
            handle.remove()
    return out
