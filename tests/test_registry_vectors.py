"""Vectors through the `Registry` facade: saved arrays round-trip, safetensors files import
(whole, per layer, a subset of layers, float16), and bad tensors or shapes are refused.

Identity conflicts (``replace``) are in ``test_catalog.py``.


Every refusal is checked twice: the right error, and a registry left exactly as it was. Each
test runs on both real databases (a SQLite file, a PostgreSQL server) through the `registry`
fixture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from crx.registry import Registry
from crx.registry.errors import (
    ConceptNotFound,
    InvalidInput,
    ModelNotFound,
    TensorShapeError,
    VectorNotFound,
)
from tests.registry_world import N_LAYERS, _snapshot, _vector

# -- vectors -------------------------------------------------------------------------------


def test_save_vector_round_trips_and_refuses_a_wrong_shape(
    registry: Registry, tiny: str, joy: str
) -> None:
    array = _vector(1)
    record = registry.save_vector(joy, tiny, array, origin="extracted").record
    assert (record.n_layers, record.d_model, record.dtype) == (4, 32, "float32")
    assert record.concept == "joy"
    assert record.concept_version == 1
    assert record.model == "tiny"
    assert record.layers is None
    np.testing.assert_allclose(record.layer_norms, np.linalg.norm(array, axis=1), rtol=1e-6)
    np.testing.assert_array_equal(registry.load_vector(record.id), array)
    assert registry.get_vector(record.id) == record

    before = _snapshot(registry)
    for shape in ((3, 32), (4, 31), (32, 4), (128,), (1, 4, 32)):
        with pytest.raises(TensorShapeError) as caught:
            registry.save_vector(
                joy, tiny, np.ones(shape, np.float32), origin="extracted", estimator="other"
            )
        assert caught.value.expected == [4, 32]
        assert caught.value.got == list(shape)
    with pytest.raises(ModelNotFound):
        registry.save_vector(joy, "ghost", array, origin="extracted")
    with pytest.raises(ConceptNotFound):
        registry.save_vector("sorrow", tiny, array, origin="extracted")
    with pytest.raises(VectorNotFound):
        registry.get_vector(record.id + 1000)
    assert _snapshot(registry) == before


def _import(registry: Registry, path: Path, concept: str, estimator: str) -> Any:
    return registry.register_vector(concept, "tiny", path, estimator=estimator)


def test_register_vector_from_safetensors(
    registry: Registry, tiny: str, joy: str, tmp_path: Path
) -> None:
    array = _vector(2)

    whole = tmp_path / "whole.safetensors"
    save_file({"any-key-at-all": array}, str(whole))
    one = _import(registry, whole, joy, "whole").record
    assert one.origin == "imported"
    assert one.layers is None
    assert one.settings == {
        "file": "whole.safetensors",
        "format": "safetensors",
        "source_dtype": "float32",
    }
    np.testing.assert_array_equal(registry.load_vector(one.id), array)

    per_layer = tmp_path / "per_layer.safetensors"
    save_file({str(i): array[i].copy() for i in range(N_LAYERS)}, str(per_layer))
    every = _import(registry, per_layer, joy, "per-layer").record
    assert every.layers is None
    np.testing.assert_array_equal(registry.load_vector(every.id), array)
    assert every.oid == one.oid  # same tensor, same blob

    subset = tmp_path / "subset.safetensors"
    save_file({"direction.3": array[3].copy(), "1": array[1].copy()}, str(subset))
    partial = _import(registry, subset, joy, "subset").record
    assert partial.layers == [1, 3]
    loaded = registry.load_vector(partial.id)
    np.testing.assert_array_equal(loaded[[1, 3]], array[[1, 3]])
    assert not loaded[[0, 2]].any()
    assert partial.layer_norms[0] == 0.0
    assert partial.layer_norms[2] == 0.0

    half = tmp_path / "half.safetensors"
    save_file({"v": array.astype(np.float16)}, str(half))
    widened = _import(registry, half, joy, "half").record
    assert widened.dtype == "float32"
    assert widened.settings["source_dtype"] == "float16"
    np.testing.assert_array_equal(
        registry.load_vector(widened.id), array.astype(np.float16).astype(np.float32)
    )


def test_register_vector_refuses_bad_tensors(
    registry: Registry, tiny: str, joy: str, tmp_path: Path
) -> None:
    good = _vector(3)
    nan = good.copy()
    nan[2, 5] = np.nan
    inf = good.copy()
    inf[0, 0] = np.inf
    cases: dict[str, tuple[dict[str, np.ndarray], type[Exception], str]] = {
        "short": ({"v": good[:3].copy()}, TensorShapeError, "expected"),
        "narrow": ({"v": good[:, :31].copy()}, TensorShapeError, "expected"),
        "ints": ({"v": good.astype(np.int32)}, InvalidInput, "floating-point"),
        "nan": ({"v": nan}, InvalidInput, "NaN"),
        "inf": ({"v": inf}, InvalidInput, "infinite"),
        "layer_out_of_range": ({"0": good[0].copy(), "4": good[3].copy()}, InvalidInput, "4"),
        "stray_key": ({"0": good[0].copy(), "bias": good[1].copy()}, InvalidInput, "bias"),
        "layer_width": ({"0": good[0, :16].copy(), "1": good[1].copy()}, TensorShapeError, "'0'"),
        "nan_layer": ({"0": nan[2].copy(), "1": good[1].copy()}, InvalidInput, "NaN"),
    }
    before = _snapshot(registry)
    for name, (named, error, text) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(named, str(path))
        with pytest.raises(error, match=text):
            registry.register_vector(joy, "tiny", path)
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(InvalidInput, match="not a vector file crx reads"):
        registry.register_vector(joy, "tiny", tmp_path / "garbage.safetensors")
    with pytest.raises(InvalidInput, match="cannot read"):
        registry.register_vector(joy, "tiny", tmp_path / "absent.safetensors")
    assert _snapshot(registry) == before
