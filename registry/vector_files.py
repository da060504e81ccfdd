"""Vector files from other tools, recognised by their first bytes (never by their name).

`read_vector_file` returns a file's tensors by name, each tensor's dtype in the file, the
format and what the file says about itself; `crx.registry.interop.vector_from_tensors` then
shapes them into crx's ``[n_layers, d_model]``. Formats read:

- safetensors (``u64`` header length, then a JSON object): any key layout peers write, one 2-D
  tensor or one 1-D tensor per layer (``direction.N``, ``N``, ``layer.N``);
- GGUF control vectors (magic ``GGUF``, architecture ``controlvector``): repeng's
  ``export_gguf``, llama.cpp's ``cvector-generator`` and crx's own export, tensors
  ``direction.N`` (N the block whose output it is added to, as crx numbers rows);
- numpy ``.npy`` (one ``[n_layers, d_model]`` array) and ``.npz`` (arrays named as above),
  read with ``allow_pickle=False``.

Pickle-based files (PyTorch ``.pt``/``.bin`` in either of its layouts, plain pickles) are
refused, with the reason and how to convert them: unpickling runs code the file chooses, and
``torch.load(weights_only=True)`` is still an unpickler.
"""

from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crx.registry.errors import InvalidInput
from crx.registry.inputs import read_bytes, regular_file
from crx.registry.store.tensors import MAX_TENSOR_FILE_BYTES, read_file_with_dtypes

FORMATS = ("safetensors", "gguf", "npy", "npz")
_ACCEPTED = "safetensors, a GGUF control vector, .npy or .npz"
_CONVERT = (
    "convert it where you trust its origin, e.g. in Python: torch.load it, then "
    "safetensors.torch.save_file({'vector': tensor.float().contiguous()}, 'vector.safetensors')"
    " (one [n_layers, d_model] tensor, or one [d_model] tensor per layer named direction.N)"
)


@dataclass(frozen=True)
class VectorFile:
    """What a vector file holds: tensors by name and their dtypes in the file."""

    format: str
    tensors: dict[str, np.ndarray]
    dtypes: dict[str, str]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def source_dtype(self) -> str:
        """The file's dtype (``bfloat16``, ``float16``, ``float32``...); several, joined."""
        return ",".join(sorted(set(self.dtypes.values()))) or "none"


def sniff(head: bytes) -> str | None:
    """The format of a file from its first bytes: one of `FORMATS`, ``pickle``, ``torch-zip``
    (a PyTorch zip of pickles), ``zip`` (another zip: looked into by the caller) or None."""
    if head.startswith(b"GGUF"):
        return "gguf"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    # Pickle protocols 2-5 open with PROTO (0x80) and the protocol number; PyTorch's legacy
    # format is such a pickle (its magic number first).
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        (length,) = struct.unpack("<Q", head[:8])
        if length > 1:
            return "safetensors"
    return None


def read_vector_file(path: str | Path) -> VectorFile:
    """The tensors of a vector file of any format crx reads (see the module docstring)."""
    path = Path(path)
    raw = read_bytes(path, limit=MAX_TENSOR_FILE_BYTES, what="vector file")
    kind = sniff(raw[:16])
    if kind == "zip":
        kind = _zip_kind(path, raw)
    if kind == "safetensors":
        named, dtypes = read_file_with_dtypes(path)
        return VectorFile("safetensors", named, dtypes)
    if kind == "gguf":
        return _read_gguf(path)
    if kind == "npy":
        return _read_numpy(path, raw, "npy")
    if kind == "npz":
        return _read_numpy(path, raw, "npz")
    if kind in ("pickle", "torch-zip"):
        what = "a PyTorch file (a zip of pickles)" if kind == "torch-zip" else "a pickle"
        raise InvalidInput(
            f"{path} is {what}: crx never unpickles a file, since loading a pickle runs code "
            f"the file chooses (torch.load's weights_only included); {_CONVERT}"
        )
    hint = ""
    if path.suffix.lower() in (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt"):
        hint = f" (a {path.suffix} file is usually a pickle, which crx never loads: {_CONVERT})"
    raise InvalidInput(
        f"{path} is not a vector file crx reads: expected {_ACCEPTED}, recognised from its "
        f"first bytes{hint}"
    )


def _zip_kind(path: Path, raw: bytes) -> str:
    """``npz`` for a zip of ``.npy`` members, ``torch-zip`` for PyTorch's zip of pickles."""
    try:
        names = zipfile.ZipFile(io.BytesIO(raw)).namelist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise InvalidInput(f"{path} is not a valid zip (.npz) file: {exc}") from None
    if any(name.endswith(".pkl") or name.endswith("/data.pkl") for name in names):
        return "torch-zip"
    if names and all(name.endswith(".npy") for name in names):
        return "npz"
    raise InvalidInput(
        f"{path} is a zip file but neither .npz (numpy arrays) nor a known vector file: "
        f"expected {_ACCEPTED}"
    )


def _read_numpy(path: Path, raw: bytes, kind: str) -> VectorFile:
    invalid = f"{path} is not a valid .{kind} file"
    try:
        if kind == "npz":
            archive = zipfile.ZipFile(io.BytesIO(raw))
            # Bounded before anything is inflated: a zip's members can expand a thousandfold.
            if sum(info.file_size for info in archive.infolist()) > MAX_TENSOR_FILE_BYTES:
                raise InvalidInput(f"{path} expands to more than the limit of a vector file")
            with np.load(io.BytesIO(raw), allow_pickle=False) as loaded:
                named = {name: np.asarray(loaded[name]) for name in loaded.files}
        else:
            named = {"vector": np.asarray(np.load(io.BytesIO(raw), allow_pickle=False))}
    except InvalidInput:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():  # an object array: pickled Python objects
            raise InvalidInput(
                f"{path} holds Python objects (pickled), which crx never loads; {_CONVERT}"
            ) from None
        raise InvalidInput(f"{invalid}: {exc}") from None
    except Exception as exc:  # numpy's header parser raises many kinds on a damaged file
        raise InvalidInput(f"{invalid}: {exc}") from None
    return VectorFile(kind, named, {name: a.dtype.name for name, a in named.items()})


def _read_gguf(path: Path) -> VectorFile:
    from gguf import GGMLQuantizationType, GGUFReader

    regular_file(path, limit=MAX_TENSOR_FILE_BYTES, what="vector file")
    try:
        reader = GGUFReader(str(path))
        fields = {name: reader.fields[name].contents() for name in reader.fields}
        found = [(t.name, t.tensor_type, list(t.shape), t.data) for t in reader.tensors]
    except Exception as exc:  # gguf's reader raises many kinds on a damaged file
        raise InvalidInput(f"{path} is not a valid GGUF file: {exc}") from None
    architecture = fields.get("general.architecture")
    if architecture != "controlvector":
        raise InvalidInput(
            f"{path} is a GGUF file of architecture {architecture!r}, not a control vector "
            "(general.architecture 'controlvector', tensors direction.N): a model's weights?"
        )
    readable: dict[Any, Any] = {
        GGMLQuantizationType.F32: np.float32,
        GGMLQuantizationType.F16: np.float16,
        GGMLQuantizationType.BF16: "bfloat16",
    }
    named: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for name, kind, shape, data in found:
        dtype = readable.get(kind)
        if dtype is None:
            raise InvalidInput(
                f"{path}: tensor {name!r} is {getattr(kind, 'name', kind)}; a control vector's "
                "tensors are F32 (F16 and BF16 are read too)"
            )
        if dtype == "bfloat16":
            import ml_dtypes

            array = np.frombuffer(np.asarray(data).tobytes(), dtype=ml_dtypes.bfloat16)
            dtypes[name] = "bfloat16"
            array = array.astype(np.float32)
        else:
            array = np.asarray(data, dtype=dtype)
            dtypes[name] = array.dtype.name
        # GGUF lists dimensions innermost first; a direction is 1-D either way.
        named[name] = np.array(array.reshape(list(reversed(shape))))
    metadata = {
        key: value
        for key, value in fields.items()
        if key.startswith("controlvector.") or key.startswith("crx.")
    }
    return VectorFile("gguf", named, dtypes, metadata)
