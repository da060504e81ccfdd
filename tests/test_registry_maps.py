"""Maps and evaluations through the `Registry` facade: affine maps round-trip with their
layers and shapes checked, and evaluation results are recorded one row per metric and listed
by vector, task and model.


Every refusal is checked twice: the right error, and a registry left exactly as it was. Each
test runs on both real databases (a SQLite file, a PostgreSQL server) through the `registry`
fixture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crx.registry import Registry
from crx.registry.errors import InvalidInput, ModelNotFound, TensorShapeError, VectorNotFound
from tests.registry_world import _model_folder, _snapshot, _vector

# -- maps and evaluations ------------------------------------------------------------------


def test_save_map_round_trips_and_checks_layers_and_shapes(
    registry: Registry, tiny: str, tmp_path: Path
) -> None:
    registry.register_model("wide", str(_model_folder(tmp_path, "wide", 6, 48)))
    rng = np.random.default_rng(6)
    weight = rng.standard_normal((48, 32)).astype(np.float32)
    bias = rng.standard_normal(48).astype(np.float32)
    saved = registry.save_map(
        "tiny",
        "wide",
        1,
        5,
        weight,
        bias,
        solver="ridge",
        solver_settings={"lambda": 0.1},
        n_samples=1000,
        r2=0.91,
        mse=0.02,
        cosine=0.97,
    )
    assert saved.created
    record = saved.record
    assert (record.source_model, record.target_model) == ("tiny", "wide")
    assert (record.source_layer, record.target_layer) == (1, 5)
    assert (record.r2, record.mse, record.cosine, record.n_samples) == (0.91, 0.02, 0.97, 1000)
    assert record.solver_settings == {"lambda": 0.1}
    loaded_w, loaded_b = registry.load_map(record.id)
    assert loaded_w.dtype == np.float32
    np.testing.assert_array_equal(loaded_w, weight)
    np.testing.assert_array_equal(loaded_b, bias)
    assert registry.get_map(record.id) == record

    no_bias = registry.save_map("tiny", "wide", 0, 0, weight, None, solver="procrustes").record
    assert registry.load_map(no_bias.id)[1] is None
    assert [m.id for m in registry.list_maps(source="tiny").items] == [record.id, no_bias.id]
    assert registry.list_maps(source="wide").items == []
    again = registry.save_map(
        "tiny", "wide", 1, 5, weight, bias, solver="ridge", solver_settings={"lambda": 0.1}
    )
    assert not again.created
    assert again.record.id == record.id

    before = _snapshot(registry)
    for source_layer, target_layer in ((4, 0), (-1, 0), (0, 6), (0, -1)):
        with pytest.raises(InvalidInput, match="out of range"):
            registry.save_map("tiny", "wide", source_layer, target_layer, weight, bias, solver="x")
    with pytest.raises(TensorShapeError, match="W"):
        registry.save_map("tiny", "wide", 0, 0, weight.T.copy(), bias, solver="x")
    with pytest.raises(TensorShapeError, match="b"):
        registry.save_map("tiny", "wide", 0, 0, weight, bias[:32].copy(), solver="x")
    with pytest.raises(ModelNotFound):
        registry.save_map("tiny", "ghost", 0, 0, weight, bias, solver="x")
    assert _snapshot(registry) == before


def test_record_and_list_evaluations(registry: Registry, tiny: str, joy: str) -> None:
    vector = registry.save_vector(joy, tiny, _vector(7), origin="extracted").record
    dataset = registry.store.put(b"held-out prompts")
    steered = registry.record_evaluation(
        "tiny",
        "sentiment",
        {"accuracy": 0.75, "kl": 0.125},
        vector_id=vector.id,
        dataset_oid=dataset,
        layers=[1, 2],
        alpha=4.0,
        n=64,
        settings={"seed": 3},
    )
    baseline = registry.record_evaluation("tiny", "sentiment", {"accuracy": 0.5}, n=64)
    other = registry.record_evaluation("tiny", "fluency", {"ppl": 12.5}, vector_id=vector.id)
    assert {(e.metric, e.value) for e in steered} == {("accuracy", 0.75), ("kl", 0.125)}
    assert all(
        (e.vector_id, e.layers, e.alpha, e.n, e.dataset_oid, e.settings)
        == (vector.id, [1, 2], 4.0, 64, dataset, {"seed": 3})
        for e in steered
    )
    assert baseline[0].vector_id is None

    everything = registry.list_evaluations(limit=None).items
    assert [e.id for e in everything] == [e.id for e in (*steered, *baseline, *other)]
    by_vector = registry.list_evaluations(vector_id=vector.id).items
    assert {(e.task, e.metric) for e in by_vector} == {
        ("sentiment", "accuracy"),
        ("sentiment", "kl"),
        ("fluency", "ppl"),
    }
    by_task = registry.list_evaluations(task="sentiment").items
    assert sorted(e.value for e in by_task) == [0.125, 0.5, 0.75]
    assert registry.list_evaluations(model="ghost").items == []

    before = _snapshot(registry)
    with pytest.raises(InvalidInput, match="metric"):
        registry.record_evaluation("tiny", "sentiment", {})
    with pytest.raises(VectorNotFound):
        registry.record_evaluation("tiny", "sentiment", {"a": 1.0}, vector_id=vector.id + 99)
    with pytest.raises(ModelNotFound):
        registry.record_evaluation("ghost", "sentiment", {"a": 1.0})
    assert _snapshot(registry) == before
