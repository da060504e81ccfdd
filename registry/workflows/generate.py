"""Generation: greedy continuations of a prompt, bare and steered, side by side."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crx.registry.errors import NoVectorOn
from crx.registry.workflows.evaluate import reference_norm, steering_layer

if TYPE_CHECKING:
    from crx.registry.workflows.workspace import Workspace


def generate(
    ws: Workspace,
    model: str,
    prompt: str,
    *,
    concept: str | None = None,
    vector_id: int | None = None,
    alpha: float = 4.0,
    layer: int | None = None,
    normalize: bool = False,
    max_new_tokens: int = 40,
) -> dict[str, str]:
    """``{"base": ..., "steered (...)": ...}``; the vector is ``vector_id`` or the newest of
    ``concept`` on the model (neither: only the base continuation)."""
    import torch

    from crx.registry.engine.steer import steer

    catalog = ws.catalog
    record = catalog.get_model(model)
    if vector_id is None and concept:
        vector_id = catalog.aliased_vector(concept, record.name)
    if vector_id is None and concept:
        version = catalog.get_concept(concept, record.name)
        found = catalog.find_vector(version, record)
        if found is None:
            raise NoVectorOn(version.ref, record.name)
        vector_id = found.id
    vector = catalog.get_vector(vector_id) if vector_id is not None else None
    steer_layer = steering_layer(vector, record, layer) if vector is not None else None
    loaded = ws.load(record)
    inputs = loaded.tokenizer(prompt, return_tensors="pt").to(loaded.device)

    def run() -> str:
        with torch.inference_mode():
            out = loaded.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=loaded.tokenizer.pad_token_id,
            )
        return str(
            loaded.tokenizer.decode(
                out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
            )
        )

    texts = {"base": run()}
    if vector is not None and steer_layer is not None:
        norm = reference_norm(loaded, steer_layer) if normalize else None
        with steer(
            loaded.layers,
            catalog.load_vector(vector.id),
            layer=steer_layer,
            alpha=alpha,
            normalize=normalize,
            reference_norm=norm,
        ):
            texts[f"steered (vector {vector.id}, layer {steer_layer}, alpha {alpha})"] = run()
    return texts
