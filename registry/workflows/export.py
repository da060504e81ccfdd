"""``crx export vector``: write what was evaluated, as other tools apply it.

llama.cpp adds a control vector's ``direction.L`` times one file-wide scale, with no notion of
a residual norm, so the file must hold the intervention itself: the chosen layers only, each
row multiplied by its effective strength ``S`` (`crx.registry.engine.steer.strength`, the one
conversion `steer` applies too: α itself when absolute, α × the layer's mean residual norm /
|v[L]| when relative). Then ``--control-vector-scaled FILE 1`` in llama.cpp adds exactly what
crx's own steering added.

What is exported:

- ``from_evaluation``: that evaluation's layer and α (recorded reference norm);
- ``alpha`` and/or ``layers`` asked: those (α default 0.1 × residual norm; layer default: the
  best evaluation's, else depth 0.75);
- nothing asked: the layer and α of the vector's best recorded evaluation
  (`crx.registry.resolve.alpha.best_alpha`, as `crx plan` chooses), else the raw vector;
- ``raw``: the stored vector, every layer it has, strength 1.

A relative α needs the layer's reference norm: the one the evaluation recorded, else one any
evaluation on the model recorded at that layer, else it is measured (the model is loaded).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crx.registry.engine.steer import strength
from crx.registry.errors import InvalidInput
from crx.registry.interop import export_gguf, export_safetensors
from crx.registry.outputs import atomic_output
from crx.registry.resolve.alpha import best_alpha
from crx.registry.resolve.planner import crx_version
from crx.registry.resolve.view import EvaluationFact
from crx.registry.workflows.evaluate import DEFAULT_ALPHA, reference_norm, steering_layer
from crx.schemas.records import (
    EvaluationRecord,
    ExportedLayer,
    ExportReport,
    ModelRecord,
    VectorRecord,
)

if TYPE_CHECKING:
    from crx.registry.workflows.workspace import Workspace

FORMATS = ("safetensors", "gguf")
BLOCK0_NOTE = (
    "block 0 left out: llama.cpp refuses direction.0 (it never steers the first block's output)"
)


def resolve_vector(ws: Workspace, ref: str | int, model: str | None) -> VectorRecord:
    """Vector ``ref``: an id, or ``CONCEPT[@V|@ALIAS]`` on ``model`` (its alias's vector, else
    the newest vector of that version there)."""
    catalog = ws.catalog
    if isinstance(ref, int) or str(ref).isdigit():
        vector = catalog.get_vector(int(ref))
        if model is not None and catalog.get_model(model).id != vector.model_id:
            raise InvalidInput(f"vector {vector.id} belongs to {vector.model}, not {model}")
        return vector
    if model is None:
        raise InvalidInput(
            f"{ref} names a concept: say on which model (--model M), or give a vector id"
        )
    return catalog.vector_for(str(ref), model)


def _fact(row: EvaluationRecord) -> EvaluationFact:
    return EvaluationFact(
        id=row.id,
        vector_id=row.vector_id,
        task=row.task,
        dataset_oid=row.dataset_oid,
        layer=row.layers[0] if row.layers else None,
        alpha=row.alpha,
        normalize=bool(row.settings.get("normalize")),
        metric=row.metric,
        value=row.value,
        n=row.n,
    )


def _recorded_norm(rows: Sequence[EvaluationRecord], layer: int, first: int | None) -> Any:
    """(norm, "evaluation N") recorded at ``layer``, evaluation ``first`` preferred; else None."""
    usable = [
        r
        for r in rows
        if r.layers == [layer]
        and r.settings.get("normalize")
        and isinstance(r.settings.get("reference_norm"), int | float)
    ]
    usable.sort(key=lambda r: (r.id != first, -r.id))
    if not usable:
        return None
    return float(usable[0].settings["reference_norm"]), f"evaluation {usable[0].id}"


def export_vector(
    ws: Workspace,
    ref: str | int,
    fmt: str = "safetensors",
    out: str | Path | None = None,
    *,
    model: str | None = None,
    layers: Sequence[int] | None = None,
    alpha: float | None = None,
    normalize: bool | None = None,
    from_evaluation: int | None = None,
    raw: bool = False,
    force: bool = False,
) -> ExportReport:
    """Write vector ``ref`` as ``safetensors`` or a llama.cpp ``gguf`` control vector with the
    chosen layers and strength baked in (see the module docstring); ``normalize`` False makes
    ``alpha`` absolute. ``out`` defaults to ``CONCEPT-V-MODEL-ID.FORMAT`` in the working folder;
    an existing file is replaced only with ``force``, never one that is not a regular file."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown export format {fmt!r} (safetensors or gguf)")
    asked = bool(layers) or alpha is not None or normalize is not None
    if raw and (asked or from_evaluation is not None):
        raise InvalidInput(
            "--raw exports the stored vector: it takes no --layer, --alpha, "
            "--absolute or --from-evaluation"
        )
    if from_evaluation is not None and asked:
        raise InvalidInput(
            "--from-evaluation takes its layer and α from that evaluation: "
            "give no --layer, --alpha or --absolute with it"
        )
    if normalize is False and alpha is None:
        raise InvalidInput(
            "absolute α has no default: give it (--alpha A); without "
            "--absolute, α is relative to the layer's mean residual norm"
        )
    catalog = ws.catalog
    vector = resolve_vector(ws, ref, model)
    target = catalog.get_model(vector.model_id)
    array = catalog.load_vector(vector.id)
    rows = catalog.list_evaluations(model=target.name, vector_id=vector.id, limit=0).items
    choice, best_layer = best_alpha(vector.id, [_fact(r) for r in rows])
    best_id = choice.evaluation_id if choice.evaluated else None

    evaluation_id: int | None = None
    chosen: list[int] = vector.layers if vector.layers is not None else list(range(vector.n_layers))
    relative: bool | None = None
    if raw:
        source, why = "raw", "the raw vector, as asked"
    elif from_evaluation is not None:
        row = next((r for r in rows if r.id == from_evaluation), None)
        if row is None:
            raise InvalidInput(
                f"evaluation {from_evaluation} is not an evaluation of vector {vector.id} "
                f"(see `crx list evaluations --vector {vector.id}`)"
            )
        if not row.layers or not row.alpha:
            raise InvalidInput(f"evaluation {row.id} steered nothing (no layer, or α 0)")
        source, evaluation_id = "evaluation", row.id
        chosen, alpha, relative = list(row.layers), row.alpha, bool(row.settings.get("normalize"))
        why = f"evaluation {row.id} ({row.metric} {row.value:.3f}, n={row.n}), as asked"
    elif asked:
        source = "asked"
        default_layer = best_layer if best_id is not None else None
        chosen = list(layers) if layers else [steering_layer(vector, target, default_layer)]
        relative = True if normalize is None else normalize
        alpha = DEFAULT_ALPHA if alpha is None else alpha
        why = "the layers and α asked for"
    elif best_id is not None and best_layer is not None:
        source, evaluation_id = "best-evaluation", best_id
        chosen, alpha, relative = [best_layer], choice.alpha, choice.normalize
        why = (
            f"the vector's best evaluation, {best_id} ({choice.metric} {choice.value:.3f}, "
            f"n={choice.n}; {choice.note})"
        )
    else:
        source = "raw"
        why = f"the raw vector: no evaluation of vector {vector.id} is recorded"

    exported = _strengths(ws, vector, target, array, chosen, alpha, relative, rows, evaluation_id)
    notes: list[str] = []
    dropped = [e.layer for e in exported if fmt == "gguf" and e.layer == 0]
    if dropped:
        notes.append(BLOCK0_NOTE)
    written = [e for e in exported if e.layer not in dropped]
    baked = {
        e.layer: (np.asarray(array[e.layer], dtype=np.float64) * e.strength).astype(np.float32)
        for e in written
    }
    metadata: dict[str, Any] = {
        "crx.vector_id": vector.id,
        "crx.concept": f"{vector.concept}@{vector.concept_version}",
        "crx.model": vector.model,
        "crx.hook_point": vector.hook_point,
        "crx.oid": vector.oid,
        "crx.origin": vector.origin,
        "crx.source_vector_id": vector.source_vector_id,
        "crx.map_ids": vector.map_ids or None,
        "crx.version": crx_version(),
        "crx.export": source,
        "crx.evaluation_id": evaluation_id,
        "crx.layers": [e.layer for e in written] or None,
        "crx.alpha": float(alpha) if alpha is not None and relative is not None else None,
        "crx.normalize": relative,
        "crx.strength": [e.strength for e in written] or None,
    }
    path = Path(out) if out is not None else Path(default_file_name(vector, fmt))
    llama_args: list[str] | None = None
    with atomic_output(path, force=force) as temp:
        if fmt == "safetensors":
            full = np.zeros_like(array)
            for layer, baked_row in baked.items():
                full[layer] = baked_row
            export_safetensors(full, metadata, temp)
        else:
            hint = target.model_type or target.name
            layers_written = export_gguf(baked, hint, metadata, temp)
            llama_args = [
                "--control-vector-scaled", str(path), "1",
                "--control-vector-layer-range", str(layers_written[0]), str(layers_written[-1]),
            ]  # fmt: skip
    if fmt == "safetensors":
        notes.append("llama.cpp reads control vectors as GGUF only: --format gguf")
    return ExportReport(
        path=str(path),
        format=fmt,  # type: ignore[arg-type]
        vector_id=vector.id,
        concept=f"{vector.concept}@{vector.concept_version}",
        model=vector.model,
        source=source,  # type: ignore[arg-type]
        evaluation_id=evaluation_id,
        alpha=float(alpha) if alpha is not None and source != "raw" else None,
        normalize=relative,
        layers=written,
        dropped_layers=dropped,
        why=why,
        notes=notes,
        llama_cpp_args=llama_args,
    )


def default_file_name(vector: VectorRecord, fmt: str) -> str:
    """``joy-2-gemma-7.gguf``: what `crx export` writes without ``-o`` (and `crx serve`
    names its downloads)."""
    return f"{vector.concept}-{vector.concept_version}-{vector.model}-{vector.id}.{fmt}"


def _strengths(
    ws: Workspace,
    vector: VectorRecord,
    target: ModelRecord,
    array: np.ndarray,
    chosen: Sequence[int],
    alpha: float | None,
    relative: bool | None,
    rows: Sequence[EvaluationRecord],
    evaluation_id: int | None,
) -> list[ExportedLayer]:
    """Each chosen layer's strength, checked (in range, a direction there, not zero)."""
    out: list[ExportedLayer] = []
    model_rows: Sequence[EvaluationRecord] | None = None
    for layer in sorted(set(chosen)):
        steering_layer(vector, target, layer)  # in range, and the vector has a direction there
        row_norm = float(np.linalg.norm(np.asarray(array[layer], dtype=np.float64)))
        if relative is None:  # the raw vector
            out.append(ExportedLayer(layer=layer, strength=1.0, vector_norm=row_norm))
            continue
        norm, norm_from = None, None
        if relative:
            found = _recorded_norm(rows, layer, evaluation_id)
            if found is None:
                if model_rows is None:
                    model_rows = ws.catalog.list_evaluations(model=target.name, limit=0).items
                found = _recorded_norm(model_rows, layer, None)
            if found is None:
                found = (reference_norm(ws.load(target), layer), "measured")
            norm, norm_from = found
        scale = strength(
            float(alpha or 0.0),
            normalize=relative,
            reference_norm=norm,
            row_norm=row_norm,
            layer=layer,
        )
        out.append(
            ExportedLayer(
                layer=layer,
                strength=scale,
                vector_norm=row_norm,
                reference_norm=norm,
                reference_norm_from=norm_from,
            )
        )
    return out
