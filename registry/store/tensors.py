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
import math
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
    except (ValueError, TypeError, AttributeError, struct.error, RecursionError):
        return False


def _read_with_bfloat16(path: Path, raw: bytes) -> dict[str, np.ndarray]:
    """Parse a safetensors file holding BF16 tensors, checking what the format promises:
    shapes of non-negative integers whose size matches the byte range, ranges inside the data
    and together covering it exactly (no overlap, no gap, no trailing bytes)."""

    def invalid(why: str) -> InvalidInput:
        return InvalidInput(f"{path} is not a valid safetensors file: {why}")

    try:
        (header_length,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + header_length])
    except (ValueError, struct.error, RecursionError) as exc:
        raise invalid(f"its header cannot be read ({exc})") from None
    if not isinstance(header, dict):
        raise invalid("its header is not an object")
    body = memoryview(raw)[8 + header_length :]
    out: dict[str, np.ndarray] = {}
    ranges = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise invalid(f"tensor {name!r} lacks dtype, shape or data_offsets") from None
        if dtype != "BF16" and dtype not in _NUMPY_DTYPES:
            raise invalid(f"tensor {name!r} has the unknown dtype {dtype!r}")
        itemsize = 2 if dtype == "BF16" else np.dtype(_NUMPY_DTYPES[dtype]).itemsize
        if not (
            isinstance(shape, list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise invalid(f"tensor {name!r} has the shape {shape!r}")
        if not all(isinstance(o, int) and not isinstance(o, bool) for o in (start, end)):
            raise invalid(f"tensor {name!r} has the offsets {[start, end]!r}")
        if not 0 <= start <= end <= len(body) or end - start != itemsize * math.prod(shape):
            raise invalid(f"tensor {name!r} has offsets {[start, end]} that do not fit its shape")
        ranges.append((start, end))
        chunk = body[start:end]
        if dtype == "BF16":
            # bfloat16 is the top half of a float32: shift it back into place.
            array = (np.frombuffer(chunk, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(chunk, dtype=_NUMPY_DTYPES[dtype])
        out[name] = array.reshape(shape)
    covered = 0
    for start, end in sorted(ranges):
        if start != covered:
            raise invalid("its tensors overlap or leave a gap")
        covered = end
    if covered != len(body):
        raise invalid(f"{len(body) - covered} bytes follow the last tensor")
    return out
