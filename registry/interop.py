"""Vectors from and for other tools: shape checks for imported tensors, and exports.

A stored vector is one float32 ``[n_layers, d_model]`` array, row ``i`` being the direction
added at the output of decoder block ``i`` (0-based). Exports:

- safetensors: that array under ``"vector"``, with crx's identifying fields as header metadata;
- GGUF in llama.cpp's control-vector layout (``controlvector.model_hint``,
  ``controlvector.layer_count``, tensors ``direction.{i}``), as repeng writes it. llama.cpp
  numbers ``direction.{i}`` by the block whose output it is added to and refuses index 0, so
  block 0's row is left out of a GGUF export.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from crx.registry.errors import InvalidInput, TensorShapeError
from crx.registry.store.tensors import VECTOR_KEY
from crx.schemas.records import VectorRecord

# At most 9 digits: no model has more layers, and int() of a longer string is refused anyway.
_LAYER_KEY = re.compile(r"^(?:direction\.|layer\.|layers\.)?(\d{1,9})$")


def vector_from_tensors(
    named: dict[str, np.ndarray], n_layers: int, d_model: int, where: str
) -> tuple[np.ndarray, list[int] | None, str]:
    """Shape a file's tensors into ``[n_layers, d_model]`` float32.

    Returns (array, populated layers or None for all, the source dtype). Accepts one 2-D tensor
    under any key, or one 1-D tensor per layer keyed by its index (``"3"``, ``"direction.3"``).
    """
    if not named:
        raise InvalidInput(f"{where} holds no tensors")
    source_dtype = str(next(iter(named.values())).dtype)
    if len(named) == 1 and next(iter(named.values())).ndim == 2:
        array = next(iter(named.values()))
        if tuple(array.shape) != (n_layers, d_model):
            raise TensorShapeError(f"the tensor in {where}", list(array.shape), [n_layers, d_model])
        return _as_float32(array, where), None, source_dtype
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
    return out, (layers if len(layers) < n_layers else None), source_dtype


def _as_float32(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype.kind != "f":
        raise InvalidInput(f"{where}: expected a floating-point tensor, got {array.dtype}")
    converted = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(converted).all():
        raise InvalidInput(f"{where}: the tensor holds NaN or infinite values")
    return converted


def export_safetensors(vector: VectorRecord, array: np.ndarray, out: Path) -> None:
    metadata = {
        "crx.vector_id": str(vector.id),
        "crx.concept": f"{vector.concept}@{vector.concept_version}",
        "crx.model": vector.model,
        "crx.hook_point": vector.hook_point,
        "crx.oid": vector.oid,
    }
    from safetensors.numpy import save_file

    save_file({VECTOR_KEY: np.ascontiguousarray(array)}, str(out), metadata=metadata)


def export_gguf(vector: VectorRecord, array: np.ndarray, model_hint: str, out: Path) -> int:
    """Write a llama.cpp control vector; returns the number of layers written."""
    from gguf import GGUFWriter

    populated = vector.layers if vector.layers is not None else range(vector.n_layers)
    layers = [layer for layer in populated if layer >= 1]
    if not layers:
        raise InvalidInput(
            f"vector {vector.id} has no layer llama.cpp can use (it ignores block 0)"
        )
    writer = GGUFWriter(str(out), "controlvector")
    writer.add_string("controlvector.model_hint", model_hint)
    writer.add_uint32("controlvector.layer_count", len(layers))
    for layer in layers:
        writer.add_tensor(
            f"direction.{layer}", np.ascontiguousarray(array[layer], dtype=np.float32)
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return len(layers)
