"""Plots where people look: ``crx evaluate --plot`` and ``crx show maps --plot``.

The figures are drawn from the recorded rows, so the tests check that the data a figure draws
is the data the registry recorded (the series builder and the R² grid), and that the files are
real PNGs. The models are the saved tiny Llama (4 x 32) and GPT-2 (3 x 48) of
`tests.tiny_models`, the registry a real SQLite file or PostgreSQL database (`tests.cli_world`).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from crx.registry.plot import R2Grid, evaluation_series, map_r2_figure, map_r2_grid
from crx.registry.workflows.figures import evaluation_data
from crx.schemas.records import EvaluationRecord, MapRecord
from tests.cli_world import World
from tests.tiny_models import PAIRS

PNG = b"\x89PNG\r\n\x1a\n"

pytest.importorskip("matplotlib")


def _engine_world(world: World, model_dirs: dict[str, Path]) -> World:
    with world.registry() as reg:
        reg.register_model("src", str(model_dirs["llama"]))
        reg.register_model("tgt", str(model_dirs["gpt2"]))
        reg.register_concept("anger", PAIRS)
    return world


def test_evaluate_plot_draws_every_vector_evaluated_from_the_recorded_rows(
    world: World, model_dirs: dict[str, Path]
) -> None:
    w = _engine_world(world, model_dirs)
    native = w.json("extract", "anger", "--model", "src")["record"]["id"]
    first = w.json("evaluate", "anger", "--model", "src", "--alpha", "0.1,0.4", "--base")
    with w.registry() as reg:
        array = np.random.default_rng(3).normal(size=(4, 32))
        imported = reg.save_vector(
            "anger", "src", array, origin="imported", estimator="imported"
        ).record.id
    out = w.tmp / "anger.png"
    second = w.json(
        "evaluate", "anger", "--model", "src", "--vector", str(imported),
        "--alpha", "0.2", "--plot", str(out),
    )  # fmt: skip
    assert second["plot"] == str(out)
    assert out.read_bytes().startswith(PNG)

    # What is drawn: both vectors (the first run's included), from the rows as recorded.
    rows = first["items"] + second["items"]
    with w.registry() as reg:
        data = evaluation_data(reg.catalog, [EvaluationRecord(**r) for r in second["items"]])
    assert data.metric == "token_accuracy"
    assert data.normalize is True
    expected = {
        f"vector {native}: native, layer 3": {
            r["alpha"]: r["value"]
            for r in rows
            if r["vector_id"] == native and r["metric"] == "token_accuracy"
        },
        f"vector {imported}: imported, layer 3": {
            r["alpha"]: r["value"]
            for r in rows
            if r["vector_id"] == imported and r["metric"] == "token_accuracy"
        },
    }
    assert data.series == expected
    assert set(expected[f"vector {native}: native, layer 3"]) == {0.1, 0.4}
    [base] = [
        r["value"] for r in rows if r["vector_id"] is None and r["metric"] == "token_accuracy"
    ]
    assert data.base == base
    assert "anger on src" in data.title
    assert "held-out scenarios" in data.title

    # The text output names the file too.
    again = w.tmp / "again.png"
    text = w.ok("evaluate", "anger", "--model", "src", "--alpha", "0.2", "--plot", str(again))
    assert f"plot: {again}" in text.stdout
    assert again.read_bytes().startswith(PNG)


def test_a_plot_path_that_is_not_a_png_is_refused_before_anything_is_evaluated(
    world: World, model_dirs: dict[str, Path]
) -> None:
    w = _engine_world(world, model_dirs)
    w.ok("extract", "anger", "--model", "src")
    for bad, why in (("plot.jpg", "does not end in .png"), ("nowhere/plot.png", "does not exist")):
        result = w.run("evaluate", "anger", "--model", "src", "--plot", str(w.tmp / bad))
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("Error: ")
        assert why in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    with w.registry() as reg:
        assert reg.list_evaluations(limit=None).items == []


def test_show_maps_plots_the_recorded_r2_grid_with_the_chosen_pairs(
    world: World, model_dirs: dict[str, Path], corpus_file: Path
) -> None:
    w = _engine_world(world, model_dirs)
    fit = ("fit", "--source", "src", "--target", "tgt", "--corpus", str(corpus_file))
    maps = w.json(*fit)["items"]
    out = w.tmp / "maps.png"
    shown = w.json("show", "maps", "--source", "src", "--target", "tgt", "--plot", str(out))
    assert out.read_bytes().startswith(PNG)
    assert shown["plot"] == str(out)
    assert shown["split"] == "validation"
    # An auto fit: one map per target block (3), each column its recorded validation R² of
    # every source block (4), and the kept maps are the chosen pairs.
    assert len(shown["matrix"]) == 4
    assert {len(row) for row in shown["matrix"]} == {3}
    for m in maps:
        column = [row[m["target_layer"]] for row in shown["matrix"]]
        assert column == pytest.approx(m["solver_settings"]["auto_val_r2"])
    assert [(c["source_layer"], c["target_layer"], c["map_id"]) for c in shown["chosen"]] == sorted(
        (m["source_layer"], m["target_layer"], m["id"]) for m in maps
    )
    text = w.ok("show", "maps", "--source", "src", "--target", "tgt").stdout
    assert text.startswith(f"src -> tgt: {len(maps)} maps, ridge, pairs=auto")

    missing = w.run("show", "maps", "--source", "tgt", "--target", "src")
    assert missing.exit_code == 1
    assert "no maps from tgt to src" in missing.stderr


def _map(i: int, source: int, target: int, r2: float | None) -> MapRecord:
    return MapRecord(
        id=i, source_model="a", target_model="b", source_layer=source, target_layer=target,
        oid="0" * 64, solver="lstsq", solver_settings={"pairs": "all"}, r2=r2,
        created_at=datetime.now(UTC),
    )  # fmt: skip


def test_the_grid_of_an_all_pairs_fit_is_each_maps_test_r2_and_the_best_source_is_chosen() -> None:
    maps = [_map(1, 0, 0, 0.5), _map(2, 1, 0, 0.8), _map(3, 0, 1, 0.9), _map(4, 1, 1, None)]
    grid = map_r2_grid(maps, n_source=3, n_target=2)
    assert grid.split == "test"
    assert grid.matrix[0] == [0.5, 0.9]
    assert grid.matrix[1][0] == 0.8
    assert math.isnan(grid.matrix[1][1])
    assert all(math.isnan(v) for v in grid.matrix[2])
    assert grid.chosen == [(0, 1), (1, 0)]
    # A plain matrix draws as well (what the web catalogue may pass).
    fig = map_r2_figure([[0.1, 0.2], [0.3, math.nan]], source="a", target="b", title="t")
    assert fig.axes[0].get_xlabel().startswith("source layer (a, 2 blocks)")
    fig = map_r2_figure(grid, source="a", target="b", title="t")
    assert fig.axes[0].collections[0].get_offsets().tolist() == [[0, 1], [1, 0]]
    assert isinstance(grid, R2Grid)


def _evaluation(i: int, vector: int | None, alpha: float | None, value: float, **settings: object):
    return EvaluationRecord(
        id=i, vector_id=vector, model="m", task="emotion", layers=None if vector is None else [2],
        alpha=alpha, metric="token_accuracy", value=value, settings=settings,
        created_at=datetime.now(UTC),
    )  # fmt: skip


def test_the_series_keep_the_newest_row_and_one_alpha_mode() -> None:
    rows = [
        _evaluation(1, None, None, 0.3),
        _evaluation(2, 5, 0.1, 0.4, normalize=True),
        _evaluation(3, 5, 0.1, 0.45, normalize=True),  # evaluated again: the newest counts
        _evaluation(4, 5, 8.0, 0.9, normalize=False),  # absolute α: another axis, left out
        _evaluation(5, None, None, 0.35),
    ]
    series, base = evaluation_series(rows, "token_accuracy", normalize=True, labels={5: "v5"})
    assert series == {"v5, layer 2": {0.1: 0.45}}
    assert base == 0.35
    absolute, _ = evaluation_series(rows, "token_accuracy", normalize=False)
    assert absolute == {"vector 5, layer 2": {8.0: 0.9}}
