"""The neutral calibration corpus maps are fitted on, and its residual states, cached on disk.

The default corpus is the shipped WikiSplit copy processed as ConTrans does; states of every
corpus line at the blocks a fit needs are cached under ``$CRX_HOME/cache/states`` per (model,
corpus oid), one shard per layer (`crx.registry.workflows.states`), so a second fit, a measured
chain R² or an apply re-run after a kill does not run the model again for those layers.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crx.registry.config import crx_home
from crx.registry.errors import InvalidInput
from crx.registry.hashing import canonical_json
from crx.registry.inputs import MIB, read_text
from crx.registry.progress import StagedProgress, staged
from crx.registry.workflows.states import KEY, CachedStates, ShardWriter, shard_name
from crx.schemas.records import ModelRecord

if TYPE_CHECKING:
    from crx.registry.workflows.workspace import Workspace

MIN_LINES = 20
MAX_CORPUS_BYTES = 256 * MIB


def contrans_corpus(text: str, *, seed: int = 42) -> list[str]:
    """ConTrans' processing of WikiSplit: each line cut by 2-4 trailing words (numpy seed 42)."""
    rng = np.random.RandomState(seed)
    lines = []
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        cut = int(rng.randint(2, 5))
        kept = words[:-cut] if len(words) > cut else words[:1]
        lines.append(" ".join(kept))
    return lines


def load_corpus(path: str | Path | None) -> tuple[list[str], bytes]:
    """(lines, the exact bytes they are hashed as): the shipped WikiSplit copy by default."""
    if path is None:
        from importlib import resources

        raw = resources.files("crx.registry").joinpath("data", "wiki_split.txt").read_text("utf-8")
        lines = contrans_corpus(raw)
    else:
        text = read_text(path, limit=MAX_CORPUS_BYTES, what="corpus")
        lines = [ln.strip() for ln in text.splitlines()]
        lines = [ln for ln in lines if ln]
    if len(lines) < MIN_LINES:
        raise InvalidInput(f"the corpus has {len(lines)} lines; a map needs at least {MIN_LINES}")
    return lines, "\n".join(lines).encode("utf-8")


def _states_key(model: ModelRecord, corpus_oid: str, dtype: str) -> str:
    # A config does not identify weights (a fine-tune keeps its base model's config.json), so
    # without a weights hash the key is the model's location plus its config.
    identity = (
        model.weights_sha256
        or hashlib.sha256(
            canonical_json([model.path, model.gguf_file, model.revision, model.config_sha256])
        ).hexdigest()
    )
    # States of a model run in bfloat16 are not its float32 states: each dtype has its own
    # cache (float32's key is the one earlier versions wrote).
    suffix = "" if dtype == "float32" else f"-{dtype}"
    return f"{identity[:32]}-{corpus_oid[:32]}{suffix}"


def _states_path(model: ModelRecord, corpus_oid: str, dtype: str = "float32") -> Path:
    """The single-file cache of earlier versions (every layer in one tensor): still read."""
    key = _states_key(model, corpus_oid, dtype)
    return crx_home() / "cache" / "states" / f"{key}.safetensors"


def states_folder(model: ModelRecord, corpus_oid: str, dtype: str = "float32") -> Path:
    """The folder of this model's per-layer shards on this corpus (`.states`), for the model
    run in ``dtype``."""
    return crx_home() / "cache" / "states" / _states_key(model, corpus_oid, dtype)


def _cache(model: ModelRecord, corpus_oid: str, n_lines: int, dtype: str) -> CachedStates:
    shape = (n_lines, model.n_layers, model.d_model)
    return CachedStates(
        states_folder(model, corpus_oid, dtype), _states_path(model, corpus_oid, dtype), shape
    )


def cached_states_exist(model: ModelRecord, corpus_oid: str, dtype: str = "float32") -> bool:
    """Whether every layer of this model's states on this corpus is cached (nothing read)."""
    return len(_cache(model, corpus_oid, 0, dtype).layers()) == model.n_layers


def cached_states_holding(model: ModelRecord, corpus_oid: str, layer: int) -> CachedStates | None:
    """The cached states of this model and corpus that hold ``layer``, in whichever dtype the
    model was loaded in when they were captured (float32 first, then bfloat16 and float16)."""
    from crx.registry.engine.loading import DTYPES

    for dtype in DTYPES:
        found = cached_states(model, corpus_oid, dtype)
        if found is not None and layer in found.layers():
            return found
    return None


def cached_states(
    model: ModelRecord, corpus_oid: str, dtype: str = "float32"
) -> CachedStates | None:
    """The corpus states `corpus_states` cached for this model and corpus (read layer by layer:
    see `CachedStates.layers` for which are there), or None if none is."""
    from safetensors import safe_open

    probe = _cache(model, corpus_oid, 0, dtype)
    layers = probe.layers()
    if not layers:
        return None
    first = probe.legacy if probe.legacy.exists() else probe.folder / shard_name(min(layers))
    with safe_open(str(first), framework="pt") as f:
        n_lines = int(f.get_slice(KEY).get_shape()[0])
    return _cache(model, corpus_oid, n_lines, dtype)


def corpus_states(
    ws: Workspace,
    model: ModelRecord,
    lines: Sequence[str],
    corpus_oid: str,
    *,
    layers: Iterable[int] | None = None,
    batch_size: int = 32,
    progress: StagedProgress | None = None,
) -> CachedStates:
    """Last-token states of every corpus line at ``layers`` (every block by default), cached
    under ``$CRX_HOME`` one shard per layer and returned as `CachedStates` (read lazily).

    Only the layers not cached yet are computed, in one pass that stops after the deepest of
    them, each batch written to its shards as it arrives. Computing reports the stages
    ``load NAME`` and ``states NAME`` (lines, batch by batch); a model this call loaded is
    released again afterwards (its weights are most of the memory of a fit from scratch);
    states found in the cache report nothing.
    """
    from crx.registry.engine.capture import residual_states

    cache = _cache(model, corpus_oid, len(lines), ws.dtype())
    wanted = set(range(model.n_layers)) if layers is None else set(layers)
    missing = sorted(wanted - cache.layers())
    if not missing:
        return cache
    was_loaded = ws.is_loaded(model)
    loaded = ws.load(model, progress=progress)
    cache.folder.mkdir(parents=True, exist_ok=True)
    writers = {
        layer: ShardWriter(cache.folder, layer, len(lines), loaded.d_model) for layer in missing
    }
    try:
        residual_states(
            loaded,
            lines,
            layers=missing,
            batch_size=batch_size,
            progress=staged(progress, f"states {model.name}"),
            sink=lambda rows, layer, states: writers[layer].write(rows.tolist(), states.numpy()),
        )
        for writer in writers.values():
            writer.commit()
    except BaseException:
        for writer in writers.values():
            writer.discard()
        raise
    finally:
        for writer in writers.values():
            writer.close()
        del loaded
        if not was_loaded:
            ws.release(model)
            gc.collect()  # a loaded model holds reference cycles: free its weights now
    return cache
