"""Vectors from and for other tools: shaping imported tensors, peers' objects, and exports.

A stored vector is one float32 ``[n_layers, d_model]`` array, row ``i`` being the direction
added at the output of decoder block ``i`` (0-based). The peers number layers the same way,
so no index moves between them (tests/test_interop.py checks it on a real model):

- repeng: ``ControlVector.directions[i]`` is added to ``model.model.layers[i]``'s output (its
  extraction reads ``hidden_states[i + 1]``, the output of block ``i``);
- steering-vectors: ``SteeringVector.layer_activations[i]`` with ``layer_type
  "decoder_block"`` is added to decoder block ``i``'s output;
- llama.cpp: ``direction.i`` of a control vector is added to the output of block ``i``
  (``l_out``); its loader refuses ``direction.0``, so block 0 never steers there.

The peers' objects are taken duck-typed (anything with ``directions`` or
``layer_activations``, or the layer → array mapping itself) and given back as the peers' own
classes when those are installed, else as `ControlVectorData` / `SteeringVectorData` with the
same attributes: crx depends on neither package.

Exports: safetensors (the ``[n_layers, d_model]`` array under ``"vector"``, crx's fields as
header metadata) and GGUF in llama.cpp's control-vector layout (``controlvector.model_hint``,
``controlvector.layer_count``, tensors ``direction.{i}``, crx's fields under ``crx.``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crx.registry.errors import InvalidInput, TensorShapeError
from crx.registry.store.tensors import VECTOR_KEY

# At most 9 digits: no model has more layers, and int() of a longer string is refused anyway.
_LAYER_KEY = re.compile(r"^(?:direction\.|layer\.|layers\.)?(\d{1,9})$")


def vector_from_tensors(
    named: Mapping[str, np.ndarray], n_layers: int, d_model: int, where: str
) -> tuple[np.ndarray, list[int] | None]:
    """Shape a file's tensors into ``[n_layers, d_model]`` float32.

    Returns (array, populated layers or None for all). Accepts one 2-D tensor under any key,
    or one 1-D tensor per layer keyed by its index (``"3"``, ``"direction.3"``, ``"layer.3"``).
    """
    if not named:
        raise InvalidInput(f"{where} holds no tensors")
    if len(named) == 1 and next(iter(named.values())).ndim == 2:
        array = next(iter(named.values()))
        if tuple(array.shape) != (n_layers, d_model):
            raise TensorShapeError(f"the tensor in {where}", list(array.shape), [n_layers, d_model])
        return _as_float32(array, where), None
    out = np.zeros((n_layers, d_model), dtype=np.float32)
    layers = []
    for key, array in named.items():
        match = _LAYER_KEY.match(key)
        if not match:
            raise InvalidInput(
                f"{where}: tensor {key!r} is neither the only tensor nor keyed by a layer index"
            )
        layer = int(match.group(1))
        if not 0 <= layer < n_layers:
            raise InvalidInput(
                f"{where}: layer {layer} is out of range for a {n_layers}-layer model"
            )
        if tuple(array.shape) != (d_model,):
            raise TensorShapeError(f"tensor {key!r} in {where}", list(array.shape), [d_model])
        if layer in layers:
            raise InvalidInput(f"{where}: layer {layer} appears twice (again as {key!r})")
        out[layer] = _as_float32(array, where)
        layers.append(layer)
    layers.sort()
    return out, (layers if len(layers) < n_layers else None)


def _as_float32(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype.kind != "f":
        raise InvalidInput(f"{where}: expected a floating-point tensor, got {array.dtype}")
    converted = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(converted).all():
        raise InvalidInput(f"{where}: the tensor holds NaN or infinite values")
    return converted


def export_safetensors(array: np.ndarray, metadata: Mapping[str, Any], out: Path) -> None:
    """Write ``array`` under ``"vector"``; ``metadata`` goes into the header as strings."""
    from safetensors.numpy import save_file

    header = {key: _text(value) for key, value in metadata.items() if value is not None}
    save_file({VECTOR_KEY: np.ascontiguousarray(array)}, str(out), metadata=header)


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(_text(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return (
        value
        if isinstance(value, str)
        else f"{value:g}"
        if isinstance(value, float)
        else str(value)
    )


def export_gguf(
    rows: Mapping[int, np.ndarray], model_hint: str, metadata: Mapping[str, Any], out: Path
) -> list[int]:
    """Write a llama.cpp control vector: ``direction.{i}`` for each row ``i`` >= 1 (llama.cpp
    refuses index 0); ``metadata`` under the KV section. Returns the layers written."""
    from gguf import GGUFWriter

    layers = sorted(layer for layer in rows if layer >= 1)
    if not layers:
        raise InvalidInput(
            "nothing llama.cpp can use: it never steers block 0 (it refuses direction.0), "
            "and no other layer was chosen"
        )
    writer = GGUFWriter(str(out), "controlvector")
    writer.add_string("controlvector.model_hint", model_hint)
    writer.add_uint32("controlvector.layer_count", len(layers))
    for key, value in metadata.items():
        _add_kv(writer, key, value)
    for layer in layers:
        writer.add_tensor(f"direction.{layer}", np.ascontiguousarray(rows[layer], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return layers


def _add_kv(writer: Any, key: str, value: Any) -> None:
    """One typed GGUF key-value: strings, booleans, int64, float64, arrays of them."""
    if value is None:
        return
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_int64(key, value)
    elif isinstance(value, float):
        writer.add_float64(key, value)
    elif isinstance(value, list | tuple):
        writer.add_array(key, list(value))
    else:
        writer.add_string(key, str(value))


# -- peers' Python objects ---------------------------------------------------------------


@dataclass
class ControlVectorData:
    """repeng's ``ControlVector`` shape, for when repeng is not installed."""

    model_type: str
    directions: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass
class SteeringVectorData:
    """steering-vectors' ``SteeringVector`` shape, for when it is not installed."""

    layer_activations: dict[int, Any] = field(default_factory=dict)
    layer_type: str = "decoder_block"


def from_repeng(control_vector: Any, *, n_layers: int | None = None) -> dict[int, np.ndarray]:
    """Layer → direction of a repeng ``ControlVector`` (or anything with ``directions``, or the
    mapping itself), in crx's numbering (the same as repeng's). Negative layers count from
    the end and need ``n_layers``. Give the result to `Registry.register_vector`."""
    directions = getattr(control_vector, "directions", control_vector)
    return _layer_arrays(directions, n_layers, "repeng control vector")


def to_repeng(
    vector: np.ndarray | Mapping[int, Any], model_type: str, *, layers: list[int] | None = None
) -> Any:
    """A repeng ``ControlVector`` (`ControlVectorData` without repeng) holding ``vector``'s
    rows (a ``[n_layers, d_model]`` array and its populated ``layers``, or a layer → array
    mapping); ``model_type`` is the model's ``config.model_type``."""
    directions = _rows(vector, layers)
    try:
        from repeng import ControlVector
    except ImportError:
        return ControlVectorData(model_type=model_type, directions=directions)
    return ControlVector(model_type=model_type, directions=directions)


def from_steering_vectors(
    steering_vector: Any, *, n_layers: int | None = None
) -> dict[int, np.ndarray]:
    """Layer → direction of a steering-vectors ``SteeringVector`` (or anything with
    ``layer_activations``, or the mapping itself). Only ``layer_type "decoder_block"`` is a
    block's output, what crx steers; other layer types are refused."""
    layer_type = getattr(steering_vector, "layer_type", "decoder_block")
    if layer_type != "decoder_block":
        raise InvalidInput(
            f"the steering vector acts on {layer_type!r} layers; crx adds to the output of "
            "decoder blocks (layer_type 'decoder_block')"
        )
    activations = getattr(steering_vector, "layer_activations", steering_vector)
    return _layer_arrays(activations, n_layers, "steering vector")


def to_steering_vectors(
    vector: np.ndarray | Mapping[int, Any], *, layers: list[int] | None = None
) -> Any:
    """A steering-vectors ``SteeringVector`` (`SteeringVectorData` without it) of float32
    torch tensors, ``layer_type "decoder_block"``, holding ``vector``'s rows."""
    import torch

    activations = {layer: torch.from_numpy(row) for layer, row in _rows(vector, layers).items()}
    try:
        from steering_vectors import SteeringVector
    except ImportError:
        return SteeringVectorData(layer_activations=activations)
    return SteeringVector(layer_activations=activations, layer_type="decoder_block")


def _rows(
    vector: np.ndarray | Mapping[int, Any], layers: list[int] | None
) -> dict[int, np.ndarray]:
    if isinstance(vector, Mapping):
        return _layer_arrays(vector, None, "vector")
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 2:
        raise TensorShapeError("a crx vector", list(array.shape), ["n_layers", "d_model"])
    chosen = range(array.shape[0]) if layers is None else layers
    return {int(layer): np.array(array[layer]) for layer in chosen}


def _layer_arrays(mapping: Any, n_layers: int | None, what: str) -> dict[int, np.ndarray]:
    if not isinstance(mapping, Mapping):
        raise InvalidInput(f"a {what} must map layers to arrays, not {type(mapping).__name__}")
    out: dict[int, np.ndarray] = {}
    for key, value in mapping.items():
        if isinstance(key, bool) or not isinstance(key, int | np.integer):
            raise InvalidInput(f"a {what}'s layers are integers, not {key!r}")
        layer = int(key)
        if layer < 0:
            if n_layers is None:
                raise InvalidInput(f"layer {layer} counts from the end: give n_layers")
            layer += n_layers
        if layer < 0 or layer in out:
            raise InvalidInput(f"a {what} names layer {key} out of range or twice")
        if hasattr(value, "detach"):  # a torch tensor, bfloat16 included
            value = value.detach().to("cpu").float().numpy()
        out[layer] = np.array(value, dtype=np.float32)
    return dict(sorted(out.items()))
