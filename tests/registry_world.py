"""Helpers and fixtures for the `Registry` facade tests (test_registry_*.py, test_catalog.py).

``tests/conftest.py`` registers this module as a plugin, so its fixtures (``tiny``, a registered
4 x 32 model, and ``joy``, a registered concept) serve every test; the test modules import the
plain helpers from here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crx.registry import Registry
from crx.registry.pairs import ContrastPair

N_LAYERS, D_MODEL = 4, 32  # tiny_model_dir's shape


# -- helpers -------------------------------------------------------------------------------


def _snapshot(registry: Registry, *, with_store: bool = True) -> tuple[Any, ...]:
    """Everything a user can see in the registry (and, optionally, the store's blobs)."""
    state: tuple[Any, ...] = (
        [m.model_dump() for m in registry.list_models(limit=None).items],
        [c.model_dump() for c in registry.list_concepts(limit=None).items],
        [v.model_dump() for v in registry.list_vectors(limit=None).items],
        [m.model_dump() for m in registry.list_maps(limit=None).items],
        [e.model_dump() for e in registry.list_evaluations(limit=None).items],
        [e.model_dump() for e in registry.audit_events(limit=None).items],
    )
    if with_store:
        state += (sorted(registry.store.iter_oids()),)
    return state


def _events(registry: Registry) -> list[Any]:
    return registry.audit_events(limit=None).items


def _pairs(tag: str, n: int = 2) -> list[ContrastPair]:
    return [ContrastPair(f"{tag} good {i}", f"{tag} bad {i}") for i in range(n)]


def _model_folder(root: Path, name: str, n_layers: int, d_model: int) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "num_hidden_layers": n_layers,
        "hidden_size": d_model,
        "vocab_size": 50,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _vector(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((N_LAYERS, D_MODEL)).astype(np.float32)


@pytest.fixture
def tiny(registry: Registry, tiny_model_dir: Path) -> str:
    registry.register_model("tiny", str(tiny_model_dir))
    return "tiny"


@pytest.fixture
def joy(registry: Registry, pairs_file: Path) -> str:
    return registry.register_concept("joy", pairs_file).record.ref
