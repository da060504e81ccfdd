"""Steering: add ``alpha * v`` to a block's output with forward hooks, never mutating the model.

``steer`` is a context manager; its hooks are removed on exit, on exceptions too. Scopes:
``"all"`` adds at every position of every forward pass (ConTrans); ``"prompt"`` only in passes
that process more than one new token (the prompt, before generation reuses the cache);
``"generated"`` only in single-token passes (the tokens being generated).

``normalize=True`` makes alpha relative: the added vector is ``alpha * reference_norm *
v / |v|``, where ``reference_norm`` is the mean norm of that block's residual stream (see
`residual_norm`; the first position, which carries the BOS token's outsized norm, is left out).
Then alpha means the same on every model: 0.1 is a tenth of a typical residual.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from crx.registry.engine.layers import block_output, replace_block_output
from crx.registry.errors import InvalidInput

SCOPES = ("all", "prompt", "generated")


def _row(vector: Any, layer: int, n_layers: int, d_model: int | None) -> Any:
    """Row ``layer`` of the vector; its width is checked here when ``d_model`` is known, else
    by the hook against the block's actual output."""
    import torch

    tensor = torch.as_tensor(np.asarray(vector, dtype=np.float32))
    width = "d_model" if d_model is None else d_model
    if tensor.ndim == 2:
        if tensor.shape[0] != n_layers or (d_model is not None and tensor.shape[1] != d_model):
            raise InvalidInput(
                f"vector has shape {list(tensor.shape)}, this model needs [{n_layers}, {width}]"
            )
        return tensor[layer]
    if tensor.ndim != 1 or (d_model is not None and tensor.shape[0] != d_model):
        raise InvalidInput(f"vector has shape {list(tensor.shape)}, this model needs [{width}]")
    return tensor


def strength(
    alpha: float,
    *,
    normalize: bool,
    reference_norm: float | None,
    row_norm: float,
    layer: int,
) -> float:
    """The factor ``S`` steering multiplies ``v[layer]`` by before adding it: ``alpha`` when
    absolute, ``alpha * reference_norm / |v[layer]|`` when relative (``normalize``).

    The one conversion of a relative α into an absolute strength: `steer` applies it, and
    ``crx export vector`` bakes it into a file (llama.cpp adds ``S * v`` as it is stored).
    """
    if not normalize:
        return float(alpha)
    if reference_norm is None:
        raise InvalidInput("normalize needs the reference residual norm of each steered layer")
    if row_norm == 0.0:
        raise InvalidInput(f"the vector is zero at layer {layer}: cannot normalize it")
    return float(alpha) * float(reference_norm) / float(row_norm)


@contextmanager
def steer(
    layers: Any,
    vector: Any,
    *,
    layer: int | Sequence[int],
    alpha: float = 1.0,
    scope: str = "all",
    normalize: bool = False,
    reference_norm: float | Sequence[float] | None = None,
    d_model: int | None = None,
) -> Iterator[None]:
    """Add ``alpha * v[layer]`` to the output of block(s) ``layer`` while the context is open.

    ``layers`` is the model's block list (`find_layers`); ``vector`` is ``[n_layers, d]`` or
    ``[d]`` (numpy or torch).
    """
    if scope not in SCOPES:
        raise InvalidInput(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    chosen = [layer] if isinstance(layer, int) else list(layer)
    n_layers = len(layers)
    norms = (
        [reference_norm] * len(chosen)
        if not isinstance(reference_norm, Sequence)
        else list(reference_norm)
    )
    if normalize and any(n is None for n in norms):
        raise InvalidInput("normalize needs the reference residual norm of each steered layer")
    additions = []
    for index, target in enumerate(chosen):
        if not 0 <= target < n_layers:
            raise InvalidInput(f"layer {target} is out of range ({n_layers} layers)")
        row = _row(vector, target, n_layers, d_model).double()
        scale = strength(
            alpha,
            normalize=normalize,
            reference_norm=norms[index],
            row_norm=float(row.norm()),
            layer=target,
        )
        additions.append((target, (scale * row).float()))

    def make_hook(target: int, addition: Any) -> Any:
        cache: dict[tuple[Any, Any], Any] = {}

        def hook(_module: Any, _inputs: Any, output: Any) -> Any:
            hidden = block_output(output)
            if hidden.shape[-1] != addition.shape[0]:
                raise InvalidInput(
                    f"the vector has {addition.shape[0]} dimensions, block {target} outputs "
                    f"{hidden.shape[-1]}: it is a vector for another model"
                )
            new_tokens = hidden.shape[1]
            if (scope == "prompt" and new_tokens == 1) or (scope == "generated" and new_tokens > 1):
                return output
            key = (hidden.device, hidden.dtype)
            if key not in cache:
                cache[key] = addition.to(device=hidden.device, dtype=hidden.dtype)
            return replace_block_output(output, hidden + cache[key])

        return hook

    handles = [layers[t].register_forward_hook(make_hook(t, add)) for t, add in additions]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def residual_norm(loaded: Any, texts: Sequence[str], layer: int, *, batch_size: int = 16) -> float:
    """Mean L2 norm of block ``layer``'s output over the tokens of ``texts``, first token out."""
    import torch

    from crx.registry.engine.batching import position_ids_from_mask

    if not 0 <= layer < len(loaded.layers):
        # As `steer` says it: relative α measures this norm before any hook is installed.
        raise InvalidInput(f"layer {layer} is out of range ({len(loaded.layers)} layers)")
    total, count = 0.0, 0
    captured: dict[str, Any] = {}

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        captured["hidden"] = block_output(output)

    handle = loaded.layers[layer].register_forward_hook(hook)
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = loaded.tokenizer(
                    list(texts[start : start + batch_size]), return_tensors="pt", padding=True
                )
                mask = batch["attention_mask"].to(loaded.device)
                loaded.model.base_model(
                    input_ids=batch["input_ids"].to(loaded.device),
                    attention_mask=mask,
                    position_ids=position_ids_from_mask(mask),
                    use_cache=False,
                )
                # on the CPU: the block may sit on another device than the inputs
                norms = captured["hidden"].float().norm(dim=-1).cpu()  # [b, seq]
                keep = mask.to("cpu", copy=True)
                first = keep.int().argmax(dim=1)
                keep[torch.arange(keep.shape[0]), first] = 0  # drop each text's first token
                total += float((norms * keep).sum())
                count += int(keep.sum())
    finally:
        handle.remove()
    if count == 0:
        raise InvalidInput("no tokens to measure the residual norm on")
    return total / count
