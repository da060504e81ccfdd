"""Corpus states on disk, one safetensors shard per layer, written as batches arrive.

A model's states on a corpus live in a folder ``$CRX_HOME/cache/states/{model}-{corpus}/``
with one file per decoder block, ``layer-012.safetensors`` (one float32 tensor ``states``,
``[n_lines, d_model]``). So that memory is bounded by a layer, not by lines × layers × width:

- a capture writes each batch's rows straight into a preallocated shard at their offsets (a
  safetensors file is 8 bytes of header length, a JSON header, then the raw little-endian
  data), so the whole ``[n, L, d]`` tensor never exists;
- a shard is written as ``layer-012.safetensors.PID.partial``, fsynced, then renamed: a killed
  capture leaves ``.partial`` files that are never read (and are removed by the next capture of
  that layer), never a shard that reads as complete; two processes capturing the same layer
  write their own files and the last rename wins, with the same content;
- a reader (:class:`CachedStates`) loads one layer when asked for it;
- a capture runs only the layers not cached yet (a later fit needing more layers computes only
  the missing ones, in one pass stopping after the deepest of them).

The single-file cache of earlier versions (``{model}-{corpus}.safetensors``, every layer in one
``[n, L, d]`` tensor) stays readable, one layer at a time through safetensors' slices.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

KEY = "states"
_SUFFIX = ".safetensors"
_PARTIAL = ".partial"


def shard_name(layer: int) -> str:
    """The file name of one layer's shard."""
    return f"layer-{layer:03d}{_SUFFIX}"


def _header(n_rows: int, d_model: int) -> bytes:
    """The 8-byte length and the JSON header of a ``[n_rows, d_model]`` float32 shard."""
    size = n_rows * d_model * 4
    header = {
        KEY: {"dtype": "F32", "shape": [n_rows, d_model], "data_offsets": [0, size]},
        "__metadata__": {"format": "pt"},
    }
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # safetensors pads with spaces so the data starts aligned
    return struct.pack("<Q", len(raw)) + raw


def _running(pid: str) -> bool:
    """Whether process ``pid`` (from a ``.partial`` name) still runs on this machine."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class ShardWriter:
    """One layer's shard, filled row by row at its offsets, then committed (fsync, rename)."""

    def __init__(self, folder: Path, layer: int, n_rows: int, d_model: int) -> None:
        self.final = folder / shard_name(layer)
        self.temp = folder / f"{shard_name(layer)}.{os.getpid()}{_PARTIAL}"
        for stale in folder.glob(f"{shard_name(layer)}.*{_PARTIAL}"):
            if not _running(stale.name.split(".")[-2]):
                stale.unlink(missing_ok=True)  # left by a killed capture
        self.n_rows, self.row_bytes = n_rows, d_model * 4
        head = _header(n_rows, d_model)
        self.data_start = len(head)
        self.written = np.zeros(n_rows, dtype=bool)
        self.fd = os.open(self.temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(self.fd, head)
        os.ftruncate(self.fd, self.data_start + n_rows * self.row_bytes)

    def write(self, rows: Iterable[int], states: np.ndarray) -> None:
        """Rows ``rows`` (indices into the corpus) of this layer: ``states`` ``[len(rows), d]``."""
        block = np.ascontiguousarray(states, dtype="<f4")
        for row, values in zip(rows, block, strict=True):
            os.pwrite(self.fd, values.tobytes(), self.data_start + int(row) * self.row_bytes)
            self.written[int(row)] = True

    def commit(self) -> None:
        """Make the shard visible, complete and durable; refuses if a row was never written."""
        missing = int((~self.written).sum())
        if missing:
            raise RuntimeError(f"{self.final.name}: {missing} of {self.n_rows} rows never written")
        os.fsync(self.fd)
        self.close()
        self.temp.replace(self.final)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        """Close and remove the unfinished file (a capture that failed)."""
        self.close()
        self.temp.unlink(missing_ok=True)


class CachedStates:
    """A model's cached corpus states, read one layer at a time (``LayeredStates``).

    ``shape`` is ``(n_lines, n_layers, d_model)`` of the model, whether or not every layer is
    cached; :meth:`layers` says which are.
    """

    def __init__(self, folder: Path, legacy: Path, shape: tuple[int, int, int]) -> None:
        self.folder, self.legacy, self.shape = folder, legacy, shape

    def layers(self) -> set[int]:
        """The layers whose complete shard is on disk (every layer for a legacy file)."""
        if self.legacy.exists():
            return set(range(self.shape[1]))
        if not self.folder.is_dir():
            return set()
        names = {p.name for p in self.folder.iterdir()}
        return {layer for layer in range(self.shape[1]) if shard_name(layer) in names}

    def layer(self, index: int) -> Any:
        """Block ``index``'s states ``[n_lines, d_model]``, float32 (a fresh tensor)."""
        from safetensors import safe_open

        if self.legacy.exists():
            with safe_open(str(self.legacy), framework="pt") as f:
                return f.get_slice(KEY)[:, index]
        with safe_open(str(self.folder / shard_name(index)), framework="pt") as f:
            return f.get_tensor(KEY)

    def tensor(self, layers: Iterable[int] | None = None) -> Any:
        """The layers asked for (all by default) stacked ``[n, len(layers), d]``: for small
        callers and tests; a fit reads layer by layer instead."""
        import torch

        wanted = range(self.shape[1]) if layers is None else list(layers)
        return torch.stack([self.layer(layer) for layer in wanted], dim=1)
