"""Generation: greedy continuations of a prompt, bare and steered, side by side.

`choose_steering` decides what steers, and says why: with a concept, the vector, layer and α
that `crx plan` chooses for it on the model (its chosen route, when the route is "ready");
when the plan has no ready route, the concept's newest vector, said so. An explicit vector,
layer or α overrides the plan's. α is relative to the layer's mean residual norm unless
``normalize`` is False.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from crx.registry.errors import InvalidInput, NoVectorOn
from crx.registry.workflows.evaluate import DEFAULT_ALPHA, reference_norm, steering_layer
from crx.schemas.plan import Route, alpha_text
from crx.schemas.records import ModelRecord, VectorRecord, mapping_text

if TYPE_CHECKING:
    from crx.registry.catalog.service import Catalog
    from crx.registry.workflows.workspace import Workspace


@dataclass(frozen=True)
class Steering:
    """What `generate` steers with, and why (its ``header``)."""

    vector_id: int
    layer: int
    alpha: float
    normalize: bool
    vector: str  # how the vector came to be: "transplanted: vector 1 on smollm, ridge 0->2"
    alpha_note: str  # where α came from: "token_accuracy 0.675" / "not evaluated" / "default"
    why: str  # why this vector: "the plan's choice (...)" / "the newest vector ..." / "asked"

    @property
    def header(self) -> str:
        """``vector 7 (transplanted: ...), layer 12, α 0.2 × residual norm (token_accuracy
        0.675): the plan's choice (...)``; an absolute α reads ``α 8 absolute (asked)``."""
        alpha = alpha_text(self.alpha, self.normalize, short=not self.normalize)
        return (
            f"vector {self.vector_id} ({self.vector}), layer {self.layer}, "
            f"α {alpha} ({self.alpha_note}): {self.why}"
        )


def describe_vector(catalog: Catalog, vector: VectorRecord) -> str:
    """``extracted on gemma``, ``imported`` or ``transplanted: vector 1 on smollm, ridge 0->2``."""
    if vector.origin == "mapped":
        return "transplanted: " + mapping_text(vector, catalog.get_maps(vector.map_ids or []))
    if vector.origin == "extracted":
        return f"extracted on {vector.model}"
    return vector.origin


def _planned(catalog: Catalog, model: ModelRecord, concept: str) -> tuple[Route | None, str]:
    """The plan's ready route for ``concept`` on ``model`` (None if it has none), and why."""
    from crx.registry.resolve.planner import make_plan

    plan = make_plan(catalog, model.name, [concept])
    item = plan.concepts[0] if plan.concepts else None
    if item is None:
        return None, "the plan has no entry for it"
    if item.status == "ready" and item.chosen is not None and item.chosen.vector_id is not None:
        return item.chosen, item.why
    return None, f"the plan has no ready route ({item.status}: {item.why})"


def choose_steering(
    ws: Workspace,
    record: ModelRecord,
    *,
    concept: str | None = None,
    vector_id: int | None = None,
    alpha: float | None = None,
    layer: int | None = None,
    normalize: bool | None = None,
) -> Steering | None:
    """What to steer ``record`` with (None: neither a concept nor a vector, so nothing).

    ``vector_id``, ``layer`` and ``alpha`` override the plan's; ``normalize`` None means
    the plan's α as planned, or a given α relative to the residual norm."""
    catalog = ws.catalog
    route: Route | None = None
    if vector_id is not None:
        vector = catalog.get_vector(vector_id)
        why = "the vector asked for"
    elif concept:
        route, reason = _planned(catalog, record, concept)
        if route is not None and route.vector_id is not None:
            vector = catalog.get_vector(route.vector_id)
            why = f"the plan's choice ({reason})"
        else:
            version = catalog.get_concept(concept, record.name)
            found = catalog.find_vector(version, record)
            if found is None:
                raise NoVectorOn(version.ref, record.name)
            vector = found
            why = f"the newest vector of {version.ref} on {record.name}; {reason}"
    else:
        return None
    chosen_layer = layer if layer is not None else (route.layer if route is not None else None)
    steer_layer = steering_layer(vector, record, chosen_layer)
    planned = route.alpha if route is not None else None
    if alpha is None and planned is not None and normalize in (None, planned.normalize):
        alpha, relative = planned.alpha, planned.normalize
        note = (
            f"{planned.metric} {planned.value:.3f}"
            if planned.evaluated and planned.value is not None
            else "not evaluated"
        )
        if route is not None and steer_layer != route.layer:
            note += f" at the plan's layer {route.layer}"  # measured there, not here
    else:
        relative = True if normalize is None else normalize
        if alpha is None and not relative:
            raise InvalidInput(
                "absolute α has no default: give it (--alpha A), on the scale of the model's "
                "own residual stream; without --absolute, α is relative to its mean norm"
            )
        note = "default" if alpha is None else "asked"
        alpha = DEFAULT_ALPHA if alpha is None else alpha
    return Steering(
        vector_id=vector.id,
        layer=steer_layer,
        alpha=float(alpha),
        normalize=relative,
        vector=describe_vector(catalog, vector),
        alpha_note=note,
        why=why,
    )


def generate(
    ws: Workspace,
    model: str,
    prompt: str,
    *,
    concept: str | None = None,
    vector_id: int | None = None,
    alpha: float | None = None,
    layer: int | None = None,
    normalize: bool | None = None,
    max_new_tokens: int = 40,
) -> dict[str, str]:
    """``{"base": ..., "steered: <what and why>": ...}``; the steering is `choose_steering`'s
    (neither a concept nor a vector: only the base continuation)."""
    import torch

    from crx.registry.engine.steer import steer

    catalog = ws.catalog
    record = catalog.get_model(model)
    steering = choose_steering(
        ws,
        record,
        concept=concept,
        vector_id=vector_id,
        alpha=alpha,
        layer=layer,
        normalize=normalize,
    )
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
    if steering is not None:
        norm = reference_norm(loaded, steering.layer) if steering.normalize else None
        with steer(
            loaded.layers,
            catalog.load_vector(steering.vector_id),
            layer=steering.layer,
            alpha=steering.alpha,
            normalize=steering.normalize,
            reference_norm=norm,
        ):
            texts[f"steered: {steering.header}"] = run()
    return texts
