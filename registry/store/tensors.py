"""Tensors as bytes: safetensors with no header metadata, so equal tensors give equal oids.

The stored formats: a vector is one float32 ``[n_layers, d_model]`` tensor under ``"vector"``
(row ``i`` is the direction added at the output of decoder block ``i``); an affine map is
float32 ``"W"`` and, when it has one, ``"b"``.

safetensors does not write ``__metadata__`` in a stable key order (safetensors issue #584), so
crx writes none and keeps metadata in SQL. Tensors are numpy arrays here: the registry reads
and writes blobs without importing torch; the engine converts at its edge.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
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
    """Read a user's ``.safetensors`` file; bfloat16 tensors are widened to float32.

    The file is data, never code: safetensors has no pickle and this parses only its header.
    """
    path = Path(path)
    raw = read_bytes(path, limit=MAX_TENSOR_FILE_BYTES, what="tensor file")
    if _has_bfloat16(raw):
        # safetensors.numpy cannot load BF16 (numpy has no such dtype; it raises KeyError).
        return _read_with_bfloat16(path, raw)
    try:
        return load(raw)
    except Exception as exc:
        raise InvalidInput(f"{path} is not a valid safetensors file: {exc}") from None


_NUMPY_DTYPES = {
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


def _has_bfloat16(raw: bytes) -> bool:
    """Whether the file's header declares a BF16 tensor (False if it cannot be parsed)."""
    try:
        (header_length,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + header_length])
        return any(
            isinstance(info, dict) and info.get("dtype") == "BF16"
            for name, info in header.items()
            if name != "__metadata__"
        )
    except (ValueError, TypeError, AttributeError, struct.error):
        return False


def _read_with_bfloat16(path: Path, raw: bytes) -> dict[str, np.ndarray]:
    try:
        (header_length,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + header_length])
        body = memoryview(raw)[8 + header_length :]
        out: dict[str, np.ndarray] = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            chunk = body[start:end]
            if info["dtype"] == "BF16":
                # bfloat16 is the top half of a float32: shift it back into place.
                array = (np.frombuffer(chunk, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                array = np.frombuffer(chunk, dtype=_NUMPY_DTYPES[info["dtype"]])
            out[name] = array.reshape(info["shape"])
    except (KeyError, ValueError, TypeError, struct.error) as exc:
        raise InvalidInput(f"{path} is not a valid safetensors file: {exc}") from None
    return out
