"""The neutral calibration corpus maps are fitted on, and its residual states, cached on disk.

The default corpus is the shipped WikiSplit copy processed as ConTrans does; states of every
corpus line at every block are cached under ``$CRX_HOME/cache/states`` per (model, corpus oid),
so a second fit, a measured chain R² or an apply re-run after a kill does not run the model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crx.registry.config import crx_home
from crx.registry.errors import InvalidInput
from crx.registry.hashing import canonical_json
from crx.registry.inputs import MIB, read_text
from crx.registry.progress import StagedProgress, staged
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


def _states_path(model: ModelRecord, corpus_oid: str) -> Path:
    # A config does not identify weights (a fine-tune keeps its base model's config.json), so
    # without a weights hash the key is the model's location plus its config.
    identity = (
        model.weights_sha256
        or hashlib.sha256(
            canonical_json([model.path, model.gguf_file, model.revision, model.config_sha256])
        ).hexdigest()
    )
    return crx_home() / "cache" / "states" / f"{identity[:32]}-{corpus_oid[:32]}.safetensors"


def cached_states_exist(model: ModelRecord, corpus_oid: str) -> bool:
    """Whether `corpus_states` has cached this model's states on this corpus (nothing read)."""
    return _states_path(model, corpus_oid).exists()


def cached_states(model: ModelRecord, corpus_oid: str) -> Any:
    """The corpus states `corpus_states` cached for this model and corpus, or None."""
    from safetensors.torch import load_file

    cache = _states_path(model, corpus_oid)
    return load_file(str(cache))["states"] if cache.exists() else None


def corpus_states(
    ws: Workspace,
    model: ModelRecord,
    lines: Sequence[str],
    corpus_oid: str,
    *,
    batch_size: int = 32,
    progress: StagedProgress | None = None,
) -> Any:
    """Last-token states of every corpus line at every block, cached under ``$CRX_HOME``.

    Computing them reports the stages ``load NAME`` and ``states NAME`` (lines, batch by batch);
    states found in the cache report nothing.
    """
    import torch
    from safetensors.torch import save_file

    from crx.registry.engine.capture import residual_states

    cached = cached_states(model, corpus_oid)
    if cached is not None:
        return cached
    loaded = ws.load(model, progress=progress)
    states = residual_states(
        loaded, lines, batch_size=batch_size, progress=staged(progress, f"states {model.name}")
    )
    cache = _states_path(model, corpus_oid)
    cache.parent.mkdir(parents=True, exist_ok=True)
    temp = cache.with_suffix(".tmp")
    save_file({"states": states.contiguous()}, str(temp))
    temp.replace(cache)
    return torch.as_tensor(states)
