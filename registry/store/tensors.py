"""Tensors as bytes: safetensors with no header metadata, so equal tensors give equal oids.

The stored formats: a vector is one float32 ``[n_layers, d_model]`` tensor under ``"vector"``
(row ``i`` is the direction added at the output of decoder block ``i``); an affine map is
float32 ``"W"`` and, when it has one, ``"b"``.

safetensors does not write ``__metadata__`` in a stable key order (safetensors issue #584), so
crx writes none and keeps metadata in SQL. Tensors are numpy arrays here: the registry reads
and writes blobs without importing torch; the engine converts at its edge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import safetensors
from safetensors.numpy import load, save

from crx.registry.errors import InvalidInput
from crx.registry.inputs import read_bytes

FLOAT_DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64}
VECTOR_KEY = "vector"
# A vector of a 70B-class model is 80 x 8192 float64 (5 MiB); a map file 8192² float32 (256 MiB).
MAX_TENSOR_FILE_BYTES = 1024 * 1024 * 1024


def encode(tensors: dict[str, np.ndarray]) -> bytes:
    """Serialise named arrays to safetensors bytes, deterministically."""
    return save({name: np.ascontiguousarray(array) for name, array in tensors.items()})


def decode(data: bytes) -> dict[str, np.ndarray]:
    return load(data)


def encode_vector(array: np.ndarray) -> bytes:
    return encode({VECTOR_KEY: array})


def decode_vector(data: bytes) -> np.ndarray:
    return decode(data)[VECTOR_KEY]


def encode_map(weight: np.ndarray, bias: np.ndarray | None) -> bytes:
    """The stored bytes of an affine map ``y ≈ W·x + b``: float32 ``"W"`` and, if any, ``"b"``."""
    named = {"W": np.ascontiguousarray(weight, dtype=np.float32)}
    if bias is not None:
        named["b"] = np.ascontiguousarray(bias, dtype=np.float32)
    return encode(named)


def decode_map(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """``(W, b or None)`` of a map stored by `encode_map`."""
    named = decode(data)
    return named["W"], named.get("b")


def read_file(path: str | Path) -> dict[str, np.ndarray]:
    """Read a user's ``.safetensors`` file; bfloat16 tensors are widened to float32."""
    return read_file_with_dtypes(path)[0]


def read_file_with_dtypes(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A user's ``.safetensors`` file: (tensors, each tensor's dtype in the file).

    The dtypes are numpy's names (``bfloat16``, ``float16``, ``float32``...); bfloat16 tensors
    are widened to float32 (numpy has no bfloat16 arithmetic; ml_dtypes' type reads the bits).
    The file is data, never code: safetensors has no pickle, and its own parser checks the
    header (offsets inside the data, no overlap, no gap, sizes matching shapes).
    """
    path = Path(path)
    raw = read_bytes(path, limit=MAX_TENSOR_FILE_BYTES, what="tensor file")
    try:
        flat = safetensors.deserialize(raw)
    except Exception as exc:  # safetensors raises its own SafetensorError, or a TypeError
        raise InvalidInput(f"{path} is not a valid safetensors file: {exc}") from None
    out: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for name, info in flat:
        dtype = _NUMPY_DTYPES.get(info["dtype"])
        if dtype is None:
            raise InvalidInput(
                f"{path}: tensor {name!r} has the dtype {info['dtype']}, which crx does not read"
            )
        if dtype == "bfloat16":
            import ml_dtypes  # only for such files: most vectors are float32

            dtype = ml_dtypes.bfloat16
        array = np.frombuffer(info["data"], dtype=dtype).reshape(info["shape"])
        dtypes[name] = array.dtype.name
        if array.dtype.name == "bfloat16":
            array = array.astype(np.float32)
        out[name] = array
    return out, dtypes


# safetensors' dtype names, as numpy reads them (BF16: ml_dtypes' type).
_NUMPY_DTYPES: dict[str, Any] = {
    "BF16": "bfloat16",
    "F16": "<f2",
    "F32": "<f4",
    "F64": "<f8",
    "I8": "i1",
    "I16": "<i2",
    "I32": "<i4",
    "I64": "<i8",
    "U8": "u1",
    "U16": "<u2",
    "U32": "<u4",
    "U64": "<u8",
    "BOOL": "?",
}
