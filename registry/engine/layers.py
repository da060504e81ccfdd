"""Finding the decoder blocks of a causal LM, whatever its architecture.

The residual stream crx reads and steers is the output of each decoder block. transformers
keeps the blocks in a ``ModuleList`` whose attribute path depends on the architecture; the
known paths are tried in order, and ``override`` (a dotted path such as ``"model.layers"``)
handles anything else.
"""

from __future__ import annotations

from typing import Any

from crx.registry.errors import InvalidInput

# Llama, Mistral, Qwen2, Gemma (1-3 text), Phi-3, OLMo...: model.layers; Gemma-3 multimodal:
# model.language_model.layers; GPT-2, GPT-J, Falcon, Bloom: transformer.h; Pythia: gpt_neox.layers;
# OPT: model.decoder.layers; MPT: transformer.blocks.
KNOWN_LAYER_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "transformer.blocks",
    "transformer.layers",
    "backbone.layers",
)


def _resolve(root: Any, dotted: str) -> Any:
    node = root
    for part in dotted.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node


def find_layers(model: Any, override: str | None = None) -> Any:
    """The ``ModuleList`` of decoder blocks of ``model`` (an ``nn.Module``)."""
    import torch

    paths = (override,) if override else KNOWN_LAYER_PATHS
    for path in paths:
        found = _resolve(model, path)
        if isinstance(found, torch.nn.ModuleList) and len(found) > 0:
            return found
    kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    if override:
        raise InvalidInput(f"{override!r} is not a list of decoder blocks in this {kind} model")
    raise InvalidInput(
        f"cannot find the decoder blocks of a {kind} model (tried {', '.join(KNOWN_LAYER_PATHS)});"
        " pass the dotted path to its block list as the layers override"
    )


def block_output(output: Any) -> Any:
    """The hidden-state tensor of a block's output (a tensor, or a tuple starting with one)."""
    return output[0] if isinstance(output, tuple) else output


def replace_block_output(output: Any, hidden: Any) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
