"""The resolver: plan ranking on hand-built registries, map composition, plan JSON, execution.

Registries here are real (SQLite and PostgreSQL) and hold models read from real config files,
vectors and maps saved through the API with chosen R²; nothing is mocked. Dimensions are tiny
so every expected number is computed by hand with numpy.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from crx.cli.main import cli
from crx.registry import Registry
from crx.registry.errors import ConceptNotFound, CrxError, InvalidInput
from crx.registry.resolve.compose import compose, estimated_r2
from crx.registry.resolve.execute import read_plan, route_vector
from crx.schemas.plan import TransplantPlan

# name → (n_layers, d_model); T's steering layer is int(0.75 * 4) = 3.
SHAPES = {"src": (4, 8), "src2": (4, 7), "mid": (4, 6), "tgt": (4, 5)}


def _model_dir(root: Path, name: str, n_layers: int, d_model: int) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "num_hidden_layers": n_layers,
                "hidden_size": d_model,
                "vocab_size": 50,
            }
        )
    )
    return folder


@pytest.fixture
def reg(registry: Registry, tmp_path: Path, pairs_file: Path) -> Registry:
    """Four registered models, the concept ``honesty``, a vector of it on ``src`` and ``src2``."""
    for name, (layers, d) in SHAPES.items():
        role = "aligned" if name.startswith("src") else "base"
        registry.register_model(name, str(_model_dir(tmp_path, name, layers, d)), role=role)
    registry.register_concept("honesty", pairs_file)
    rng = np.random.default_rng(0)
    for name in ("src", "src2"):
        layers, d = SHAPES[name]
        registry.save_vector(
            "honesty", name, rng.normal(size=(layers, d)).astype(np.float32), origin="extracted"
        )
    return registry


def add_map(
    reg: Registry, source: str, target: str, ls: int, lt: int, r2: float, seed: int = 0
) -> tuple[int, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    d_s, d_t = SHAPES[source][1], SHAPES[target][1]
    w = rng.normal(size=(d_t, d_s)).astype(np.float32)
    b = rng.normal(size=d_t).astype(np.float32)
    record = reg.save_map(source, target, ls, lt, w, b, solver="ridge", r2=r2, n_samples=100)
    return record.record.id, w, b


def vector_of(reg: Registry, model: str) -> int:
    return next(v.id for v in reg.list_vectors(model=model).items if v.origin == "extracted")


# -- composition ------------------------------------------------------------------------------


def test_compose_equals_the_direct_product() -> None:
    rng = np.random.default_rng(1)
    w1, b1 = rng.normal(size=(6, 8)), rng.normal(size=6)
    w2, b2 = rng.normal(size=(5, 6)), rng.normal(size=5)
    w3, b3 = rng.normal(size=(4, 5)), rng.normal(size=4)
    weight, bias = compose([(w1, b1), (w2, b2), (w3, b3)])
    np.testing.assert_allclose(weight, w3 @ w2 @ w1, rtol=1e-12)
    np.testing.assert_allclose(bias, w3 @ (w2 @ b1 + b2) + b3, rtol=1e-12)
    x = rng.normal(size=8)
    np.testing.assert_allclose(weight @ x + bias, w3 @ (w2 @ (w1 @ x + b1) + b2) + b3)
    # No bias on a hop = a zero bias.
    weight, bias = compose([(w1, None), (w2, None)])
    np.testing.assert_allclose(bias, np.zeros(5))
    with pytest.raises(ValueError, match="cannot chain"):
        compose([(w1, b1), (w3, b3)])
    assert estimated_r2([0.9, 0.8]) == pytest.approx(0.72)
    assert estimated_r2([0.9, None]) is None
    assert estimated_r2([0.9, -0.1]) is None


# -- ranking ------------------------------------------------------------------------------------


def test_direct_beats_multi_hop_when_fits_are_equal(reg: Registry) -> None:
    direct, _, _ = add_map(reg, "src", "tgt", 2, 3, r2=0.9)
    first, _, _ = add_map(reg, "src", "mid", 1, 2, r2=1.0)
    second, _, _ = add_map(reg, "mid", "tgt", 2, 3, r2=0.9)
    plan = reg.plan("tgt", ["honesty"])
    item = plan.concepts[0]
    assert item.status == "to-transplant"
    kinds = [
        (r.kind, [h.map_id for h in r.hops]) for r in item.candidates if r.source_model == "src"
    ]
    # One route per source model: the search keeps the best chain, and the tie goes to fewer hops.
    assert kinds == [("direct", [direct])]
    assert item.chosen is not None
    assert item.chosen.fit_r2 == pytest.approx(0.9)
    assert item.chosen.layer == 3
    assert item.chosen.alpha.evaluated is False
    assert "not evaluated" in item.chosen.alpha.note
    # The chain is chosen once the direct map is poorer than it.
    reg.save_map(
        "src", "tgt", 2, 3, *_weights("src", "tgt", 5), solver="lstsq-svd", r2=0.3
    )  # another recipe, same pair: the better one (0.9) still wins
    assert reg.plan("tgt", ["honesty"]).concepts[0].chosen.hops[0].map_id == direct  # type: ignore[union-attr]
    del first, second


def _weights(source: str, target: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    d_s, d_t = SHAPES[source][1], SHAPES[target][1]
    return rng.normal(size=(d_t, d_s)).astype(np.float32), rng.normal(size=d_t).astype(np.float32)


def test_better_fit_wins_across_sources_and_hops(reg: Registry) -> None:
    add_map(reg, "src2", "tgt", 3, 3, r2=0.5)
    m1, _, _ = add_map(reg, "src", "mid", 0, 1, r2=0.95)
    m2, _, _ = add_map(reg, "mid", "tgt", 1, 3, r2=0.95)
    plan = reg.plan("tgt", ["honesty"])
    item = plan.concepts[0]
    assert [r.kind for r in item.candidates] == ["multi-hop", "direct"]
    chosen = item.chosen
    assert chosen is not None
    assert chosen.source_model == "src"
    assert [h.map_id for h in chosen.hops] == [m1, m2]
    assert chosen.fit_r2 == pytest.approx(0.95 * 0.95)
    assert chosen.fit_r2_estimated is True
    assert "best fit" in item.why
    # A map under --min-r2 is refused, with the reason.
    poor = reg.plan("tgt", ["honesty"], min_r2=0.95)
    assert poor.concepts[0].chosen is not None  # the chain's hops are 0.95 each
    refused = reg.plan("tgt", ["honesty"], min_r2=0.96).concepts[0]
    assert refused.chosen is None
    assert refused.status == "needs-steps"
    assert any("R² 0.500, under the threshold 0.96" in r for r in refused.reasons)
    # --max-hops 1 leaves only the direct map.
    direct_only = reg.plan("tgt", ["honesty"], max_hops=1).concepts[0]
    assert [r.kind for r in direct_only.candidates] == ["direct"]
    assert any("no chain of maps from src to tgt (within 1 hops)" in r for r in direct_only.reasons)


def test_evaluated_alpha_and_layer_are_used_and_evaluated_routes_rank_first(
    reg: Registry,
) -> None:
    add_map(reg, "src", "tgt", 2, 3, r2=0.99)
    native = reg.save_vector(
        "honesty", "tgt", np.ones((4, 5), dtype=np.float32), origin="extracted"
    ).record
    reg.record_evaluation("tgt", "emotion", {"token_accuracy": 0.1, "logit_accuracy": 0.2}, n=50)
    for alpha, acc in ((0.05, 0.3), (0.1, 0.6), (0.2, 0.6), (0.4, 0.2)):
        reg.record_evaluation(
            "tgt",
            "emotion",
            {"token_accuracy": acc, "logit_accuracy": 0.9},
            vector_id=native.id,
            layers=[2],
            alpha=alpha,
            n=50,
            settings={"normalize": True},
        )
    item = reg.plan("tgt", ["honesty"]).concepts[0]
    assert item.status == "ready"
    chosen = item.chosen
    assert chosen is not None
    assert chosen.kind == "native"
    assert chosen.vector_id == native.id
    a = chosen.alpha
    # 0.1 and 0.2 tie at 0.6: the gentler one wins; the layer is the evaluated one.
    assert (a.alpha, a.normalize, a.evaluated, a.metric, a.value) == (
        0.1,
        True,
        True,
        "token_accuracy",
        0.6,
    )
    assert a.base_value == 0.1
    assert a.n == 50
    assert a.alphas_tried == [0.05, 0.1, 0.2, 0.4]
    assert chosen.layer == 2
    assert [r.kind for r in item.candidates] == ["native", "direct"]


def test_an_evaluated_transplant_beats_a_native_vector_that_scored_lower(reg: Registry) -> None:
    add_map(reg, "src", "tgt", 2, 3, r2=0.8)
    native = reg.save_vector(
        "honesty", "tgt", np.ones((4, 5), dtype=np.float32), origin="extracted"
    ).record
    mapped = reg.transplant("honesty", "src", "tgt")
    assert mapped.record.map_ids
    for vid, acc in ((native.id, 0.4), (mapped.record.id, 0.7)):
        reg.record_evaluation(
            "tgt", "emotion", {"token_accuracy": acc}, vector_id=vid, layers=[3], alpha=0.1
        )
    item = reg.plan("tgt", ["honesty"]).concepts[0]
    assert [(r.kind, r.vector_id) for r in item.candidates] == [
        ("transplanted", mapped.record.id),
        ("native", native.id),
    ]
    assert item.why.startswith("best evaluated token_accuracy: 0.700 against 0.400")
    # The already-mapped vector stands for its direct route: no duplicate "direct" candidate.
    assert all(r.kind != "direct" for r in item.candidates)


def test_of_two_transplants_the_better_evaluated_beats_the_better_fit(reg: Registry) -> None:
    """What `crx demo` sets up: one source vector mapped through crx's ridge map (good fit) and
    through ConTrans' SVD map (poor fit), both evaluated; the plan follows the evaluations."""
    add_map(reg, "src", "tgt", 2, 3, r2=0.9)
    rng = np.random.default_rng(3)
    w_svd = rng.normal(size=(5, 8)).astype(np.float32)
    reg.save_map("src", "tgt", 1, 3, w_svd, None, solver="lstsq-svd", r2=0.1, n_samples=100)
    ridge = reg.transplant("honesty", "src", "tgt", solver="ridge").record
    svd = reg.transplant("honesty", "src", "tgt", solver="lstsq-svd", layer=3).record
    assert ridge.id != svd.id
    source = reg.load_vector(vector_of(reg, "src"))
    np.testing.assert_allclose(reg.load_vector(svd.id)[3], w_svd @ source[1], rtol=1e-5)
    scores = {ridge.id: (0.3, 0.5), svd.id: (0.8, 0.4)}  # alpha 0.1, alpha 0.2
    for vid, accs in scores.items():
        for alpha, acc in zip((0.1, 0.2), accs, strict=True):
            metrics = {"token_accuracy": acc}
            reg.record_evaluation("tgt", "emotion", metrics, vector_id=vid, layers=[3],
                                  alpha=alpha, settings={"normalize": True})  # fmt: skip
    item = reg.plan("tgt", ["honesty"]).concepts[0]
    assert [(r.kind, r.vector_id) for r in item.candidates] == [
        ("transplanted", svd.id),
        ("transplanted", ridge.id),
    ]
    chosen = item.chosen
    assert chosen is not None
    assert (chosen.fit_r2, chosen.alpha.alpha, chosen.alpha.value) == (0.1, 0.1, 0.8)
    assert item.why.startswith("best evaluated token_accuracy: 0.800 against 0.500")
    # The SVD map (R² 0.1) is under --min-r2: its transplant stays, since it is evaluated.
    assert chosen.evidence[-1] == (
        f"mapped through map {chosen.hops[0].map_id} (R² 0.100) under --min-r2 0.2: vector "
        f"{svd.id} stays a candidate, since it is evaluated on tgt (the evidence, not the fit)"
    )
    assert all("--min-r2" not in e for e in item.candidates[1].evidence)  # the ridge map: 0.9

    # Equal scores: the why line names the tie-breaker (same source vector, one map each).
    for vid in (ridge.id, svd.id):
        reg.record_evaluation("tgt", "emotion", {"token_accuracy": 0.9}, vector_id=vid,
                              layers=[3], alpha=0.4, settings={"normalize": True})  # fmt: skip
    tied = reg.plan("tgt", ["honesty"]).concepts[0]
    low, high = sorted((ridge.id, svd.id))
    assert tied.chosen is not None
    assert tied.chosen.vector_id == low
    assert tied.why == (
        "tie on evaluated token_accuracy (0.900) with the next (transplanted); the tie-breaker "
        f"is the lower vector id ({low} against {high})"
    )


def test_min_r2_holds_for_a_vector_already_mapped_through_a_poor_map(reg: Registry) -> None:
    w = np.random.default_rng(4).normal(size=(5, 8)).astype(np.float32)
    poor = reg.save_map("src", "tgt", 1, 3, w, None, solver="lstsq-svd", r2=0.1, n_samples=100)
    mapped = reg.transplant("honesty", "src", "tgt", solver="lstsq-svd", layer=3).record
    refusal = (
        f"vector {mapped.id} was mapped through map {poor.record.id} (R² 0.100) under --min-r2 "
        "0.2: not used until it is evaluated on tgt"
    )
    # Unevaluated: refused like the map itself, with the reason; no route is left.
    item = reg.plan("tgt", ["honesty"]).concepts[0]
    assert item.candidates == []
    assert item.status == "needs-steps"
    assert refusal in item.reasons
    assert "the best map from src to tgt has R² 0.100, under the threshold 0.2" in item.reasons
    # Under a lower threshold the same vector is a plain candidate.
    low = reg.plan("tgt", ["honesty"], min_r2=0.05).concepts[0]
    assert [(r.kind, r.vector_id) for r in low.candidates] == [("transplanted", mapped.id)]
    assert all("--min-r2" not in e for e in low.candidates[0].evidence)
    # An alias that names it keeps it, and says why.
    reg.set_alias("honesty@1", "tgt", "staging", vector_id=mapped.id)
    staged = reg.plan("tgt", ["honesty"], alias="staging").concepts[0]
    assert staged.chosen is not None
    assert staged.chosen.vector_id == mapped.id
    assert refusal not in staged.reasons
    assert staged.chosen.evidence[-1].endswith(
        f"vector {mapped.id} stays a candidate, since the staging alias names it"
    )


def test_a_tie_between_unevaluated_routes_names_the_tie_breaker(reg: Registry) -> None:
    first = reg.save_vector("honesty", "tgt", np.ones((4, 5), np.float32), origin="extracted")
    second = reg.save_vector(
        "honesty", "tgt", np.full((4, 5), 2, np.float32), origin="extracted", estimator="pca"
    )
    item = reg.plan("tgt", ["honesty"]).concepts[0]
    assert [r.vector_id for r in item.candidates] == [first.record.id, second.record.id]
    assert item.why == (
        "nothing evaluated and no fit to compare with the next (native); the tie-breaker is the "
        f"lower source vector id ({first.record.id} against {second.record.id})"
    )


def test_no_route_reasons_and_steps(reg: Registry, pairs_file: Path) -> None:
    reg.register_concept("fairness", pairs_file, template="Q: {text}")
    both = reg.plan("tgt", ["honesty", "fairness"])
    honesty, fairness = both.concepts
    # The fit is the model pair's step: the plan lists it once, not once per concept.
    assert [s.command for s in both.steps] == ["crx fit --source src --target tgt"]
    assert honesty.status == "needs-steps"
    assert honesty.chosen is None
    assert sorted(honesty.reasons) == [
        "no chain of maps from src to tgt (within 3 hops)",
        "no chain of maps from src2 to tgt (within 3 hops)",
    ]
    assert [s.command for s in honesty.steps] == [
        "crx transplant honesty@1 --source src --target tgt",
        "crx evaluate honesty@1 --model tgt --alpha 0.05,0.1,0.2,0.4 --base",
    ]
    assert fairness.why == "no vector of fairness@1 on any model"
    assert [s.command for s in fairness.steps] == [
        "crx extract fairness@1 --model src",
        "crx transplant fairness@1 --source src --target tgt",
        "crx evaluate fairness@1 --model tgt --alpha 0.05,0.1,0.2,0.4 --base",
    ]
    # The default concept set: the newest version of every concept with a vector ...
    assert [c.concept for c in reg.plan("tgt").concepts] == ["honesty@1"]
    # ... unless versions are marked for use: then those (one version per concept).
    assert reg.mark_for_use("fairness").created
    assert not reg.mark_for_use("fairness@1").created  # already marked: nothing changes
    assert [c.concept for c in reg.plan("tgt").concepts] == ["fairness@1"]
    reg.register_concept("fairness", pairs_file, template="Q2: {text}")
    assert reg.mark_for_use("fairness@2").created
    assert reg.get_concept("fairness@1").tags == {"use": False}
    assert [c.concept for c in reg.plan("tgt").concepts] == ["fairness@2"]
    marks = [e for e in reg.audit_events(limit=0).items if e.action == "mark-for-use"]
    assert [(e.object_ref, e.old) for e in marks] == [
        ("fairness@1", None),
        ("fairness@2", {"unmarked_versions": [1]}),
    ]
    with pytest.raises(ConceptNotFound, match="nosuch"):
        reg.plan("tgt", ["nosuch"])


def test_unregistered_target_by_name_path_and_hub_id(
    reg: Registry, tmp_path: Path, pairs_file: Path
) -> None:
    by_name = reg.plan("llama-70b", ["honesty"])
    assert by_name.target.registered is False
    assert by_name.target.name == "llama-70b"
    assert [s.command for s in by_name.steps] == [
        "crx register model llama-70b --path FOLDER_OR_HUB_ID",
        "crx fit --source src --target llama-70b",
    ]
    item = by_name.concepts[0]
    assert item.status == "needs-steps"
    assert item.why == "llama-70b is not registered yet"
    assert item.steps[0].command == "crx transplant honesty@1 --source src --target llama-70b"
    # Two concepts, one source: the register and the fit are listed once, for the plan.
    reg.register_concept("fairness", pairs_file, template="Q: {text}")
    reg.save_vector("fairness", "src", np.ones((4, 8), np.float32), origin="extracted")
    two = reg.plan("llama-70b", ["honesty", "fairness"])
    assert [s.command for s in two.steps] == [
        "crx register model llama-70b --path FOLDER_OR_HUB_ID",
        "crx fit --source src --target llama-70b",
    ]
    assert [[s.action for s in c.steps] for c in two.concepts] == [["transplant", "evaluate"]] * 2

    folder = _model_dir(tmp_path, "Big-Model", 40, 64)
    by_path = reg.plan(str(folder), ["honesty"])
    assert (by_path.target.name, by_path.target.n_layers, by_path.target.d_model) == (
        "big-model",
        40,
        64,
    )
    assert by_path.steps[0].command == f"crx register model big-model --path {folder}"

    hub = reg.plan("meta-llama/Llama-3.1-70B", ["honesty"])
    assert hub.steps[0].command == (
        "crx register model llama-3.1-70b --path meta-llama/Llama-3.1-70B"
    )


# -- the plan document and its execution ----------------------------------------------------


def test_plan_json_round_trip_and_refusals(reg: Registry, tmp_path: Path) -> None:
    add_map(reg, "src", "mid", 0, 1, r2=0.9)
    add_map(reg, "mid", "tgt", 1, 3, r2=0.9)
    plan = reg.plan("tgt", ["honesty"])
    path = tmp_path / "plan.json"
    path.write_text(plan.model_dump_json(indent=2))
    again = read_plan(path)
    assert again == plan
    assert TransplantPlan.model_validate_json(path.read_text()) == plan
    raw = json.loads(path.read_text())
    assert raw["schema_version"] == 1
    assert raw["kind"] == "crx.transplant-plan"
    for broken, message in (
        ({**raw, "schema_version": 2}, "plan schema version 2"),
        ({**raw, "kind": "other"}, "is not a crx transplant plan"),
        ({**raw, "surprise": 1}, "surprise: Extra inputs are not permitted"),
    ):
        path.write_text(json.dumps(broken))
        with pytest.raises(InvalidInput, match=message):
            read_plan(path)
    path.write_text("{not json")
    with pytest.raises(InvalidInput, match="cannot read plan"):
        read_plan(path)
    with pytest.raises(InvalidInput, match="does not exist"):
        read_plan(tmp_path / "missing.json")


def test_execute_plan_registers_the_composed_vector_with_lineage(reg: Registry) -> None:
    m1, w1, _ = add_map(reg, "src", "mid", 0, 1, r2=0.9, seed=1)
    m2, w2, _ = add_map(reg, "mid", "tgt", 1, 3, r2=0.9, seed=2)
    source_id = vector_of(reg, "src")
    plan = reg.plan("tgt", ["honesty"])
    done = reg.execute_plan(plan)
    assert [(d.concept, d.status, d.layer) for d in done] == [("honesty@1", "registered", 3)]
    vector = reg.get_vector(done[0].vector_id)  # type: ignore[arg-type]
    assert (vector.origin, vector.source_vector_id, vector.map_ids, vector.layers) == (
        "mapped",
        source_id,
        [m1, m2],
        [3],
    )
    expected = np.zeros((4, 5))
    expected[3] = w2.astype(np.float64) @ w1.astype(np.float64) @ reg.load_vector(source_id)[0]
    np.testing.assert_allclose(reg.load_vector(vector.id), expected, rtol=1e-5, atol=1e-6)
    # Executed: the next plan finds the vector (ready), and executing again registers nothing.
    replanned = reg.plan("tgt", ["honesty"]).concepts[0]
    assert replanned.status == "ready"
    assert replanned.chosen is not None
    assert (replanned.chosen.kind, replanned.chosen.vector_id) == ("transplanted", vector.id)
    assert [h.map_id for h in replanned.chosen.hops] == [m1, m2]
    assert reg.execute_plan(plan)[0].status == "existing"


def test_a_plan_whose_map_was_refitted_registers_nothing(reg: Registry) -> None:
    m1, _, _ = add_map(reg, "src", "tgt", 2, 3, r2=0.9, seed=1)
    add_map(reg, "src2", "tgt", 1, 3, r2=0.5, seed=2)
    plan = reg.plan("tgt", ["honesty"])
    before = len(reg.list_vectors(limit=0).items)
    # Same pair and recipe, new weights: the row keeps its id, its oid changes.
    add_map(reg, "src", "tgt", 2, 3, r2=0.91, seed=9)
    with pytest.raises(InvalidInput, match=f"map {m1} .* was refitted after the plan was made"):
        reg.execute_plan(plan)
    assert len(reg.list_vectors(limit=0).items) == before
    with pytest.raises(InvalidInput, match="plan's target llama-70b was not registered"):
        reg.execute_plan(reg.plan("llama-70b", ["honesty"]))


def test_route_vector_of_a_direct_route(reg: Registry) -> None:
    _, w, _ = add_map(reg, "src", "tgt", 2, 3, r2=0.9, seed=4)
    route = reg.plan("tgt", ["honesty"]).concepts[0].chosen
    assert route is not None
    got = route_vector(reg, "honesty", route, 4, 5)
    source = reg.load_vector(vector_of(reg, "src"))
    np.testing.assert_allclose(got[3], w.astype(np.float64) @ source[2], rtol=1e-5)
    assert not got[:3].any()


# -- the CLI ------------------------------------------------------------------------------------


def test_cli_plan_json_output_file_and_transplant_plan(reg: Registry, tmp_path: Path) -> None:
    add_map(reg, "src", "tgt", 2, 3, r2=0.9)
    runner = CliRunner()
    base = ["--db", reg.location.database_url, "--store", reg.location.store_url]
    out = tmp_path / "plan.json"
    result = runner.invoke(cli, [*base, "plan", "--target", "tgt", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "honesty@1: to-transplant" in result.output
    assert "direct from src" in result.output
    assert f"plan written to {out}" in result.output
    as_json = runner.invoke(cli, [*base, "plan", "--target", "tgt", "--json"])
    document = json.loads(as_json.output)
    assert document["concepts"][0]["chosen"]["kind"] == "direct"
    assert read_plan(out).concepts == TransplantPlan.model_validate(document).concepts
    done = runner.invoke(cli, [*base, "transplant", "--plan", str(out), "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["items"][0]["status"] == "registered"
    bad = runner.invoke(cli, [*base, "transplant", "honesty", "--plan", str(out)])
    assert bad.exit_code == 1
    assert bad.output.startswith("Error: --plan takes no CONCEPT")
    missing = runner.invoke(cli, [*base, "transplant", "honesty"])
    assert missing.exit_code == 1
    assert "give CONCEPT, --source and --target" in missing.output


def test_measure_composed_r2_on_cached_calibration_states(reg: Registry) -> None:
    import torch
    from safetensors.torch import save_file

    from crx.registry.workflows.corpus import _states_path

    corpus = "c0" * 32
    rng = np.random.default_rng(5)
    hops = []
    for source, target, ls, lt, seed in (("src", "mid", 0, 1, 1), ("mid", "tgt", 1, 3, 2)):
        w, b = _weights(source, target, seed)
        reg.save_map(
            source,
            target,
            ls,
            lt,
            w,
            b,
            solver="ridge",
            r2=0.9,
            corpus_oid=corpus,
            solver_settings={"split": [0.8, 0.1, 0.1], "shuffle": False, "seed": 0},
        )
        hops.append((w.astype(np.float64), b.astype(np.float64)))
    n = 60
    x = rng.normal(size=(n, 4, 8))
    y = rng.normal(size=(n, 4, 5))
    (w1, b1), (w2, b2) = hops
    exact = (x[:, 0] @ w1.T + b1) @ w2.T + b2
    y[:, 3] = exact
    for name, states in (("src", x), ("tgt", y)):
        path = _states_path(reg.get_model(name), corpus)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"states": torch.tensor(states, dtype=torch.float32)}, str(path))
    route = reg.plan("tgt", ["honesty"], measure=True).concepts[0].chosen
    assert route is not None
    assert route.kind == "multi-hop"
    assert route.fit_r2_estimated is True
    assert route.fit_r2 == pytest.approx(0.81)
    assert route.fit_r2_measured == pytest.approx(1.0, abs=1e-5)
    # Noise on the test rows (the last 10%) lowers the measured R² by a computable amount.
    noise = rng.normal(scale=3.0, size=(n, 5))
    y[:, 3] = exact + noise
    save_file(
        {"states": torch.tensor(y, dtype=torch.float32)},
        str(_states_path(reg.get_model("tgt"), corpus)),
    )
    test = slice(54, 60)
    target = y[test, 3]
    expected = 1 - ((noise[test]) ** 2).sum() / ((target - target.mean(axis=0)) ** 2).sum()
    measured = reg.plan("tgt", ["honesty"], measure=True).concepts[0].chosen
    assert measured is not None
    assert measured.fit_r2_measured == pytest.approx(expected, abs=1e-3)
    assert reg.plan("tgt", ["honesty"]).concepts[0].chosen.fit_r2_measured is None  # type: ignore[union-attr]
    # States captured with the model in bfloat16 (`crx fit --dtype bfloat16`) measure it too.
    _states_path(reg.get_model("tgt"), corpus).unlink()
    bf16 = _states_path(reg.get_model("tgt"), corpus, "bfloat16")
    bf16.parent.mkdir(parents=True, exist_ok=True)
    save_file({"states": torch.tensor(y, dtype=torch.bfloat16)}, str(bf16))
    halved = reg.plan("tgt", ["honesty"], measure=True).concepts[0].chosen
    assert halved is not None
    assert halved.fit_r2_measured == pytest.approx(expected, abs=0.05)
    assert halved.fit_r2_measured != measured.fit_r2_measured  # read from the bfloat16 file


def test_a_tampered_plan_is_refused_and_registers_nothing(reg: Registry, pairs_file: Path) -> None:
    """A plan file is untrusted: every route is checked against the registry first."""
    m1, _, _ = add_map(reg, "src", "mid", 0, 1, r2=0.9, seed=1)
    add_map(reg, "mid", "tgt", 1, 3, r2=0.9, seed=2)
    reg.register_concept("sadness", pairs_file, description="another concept")
    sad = reg.save_vector("sadness", "src", np.ones((4, 8), np.float32), origin="extracted")
    document = reg.plan("tgt", ["honesty"]).model_dump(mode="json")

    def tampered(**route_changes: object) -> dict[str, Any]:
        copy = json.loads(json.dumps(document))
        route = copy["concepts"][0]["chosen"]
        for key, value in route_changes.items():
            if key.startswith("hop0_"):
                route["hops"][0][key.removeprefix("hop0_")] = value
            else:
                route[key] = value
        return copy

    cases = {
        "layer out of range": (tampered(layer=99), "layer 99 is out of range"),
        "negative layer": (tampered(layer=-1), "layer -1 is out of range"),
        "not the map's target layer": (tampered(layer=2), "not at tgt layer 2"),
        "another concept's vector": (
            tampered(source_vector_id=sad.record.id),
            f"vector {sad.record.id} is sadness@1 on src, not this concept",
        ),
        "a source layer the map does not have": (
            tampered(hop0_source_layer=-1),
            f"map {m1} is src layer 0 -> mid layer 1, not what the plan says",
        ),
        "no maps": (tampered(hops=[]), "needs at least one map"),
        "a huge vector id": (tampered(source_vector_id=2**70), "is not a vector id"),
        "a huge map id": (tampered(hop0_map_id=2**70), "is not a map id"),
        "an unknown map": (tampered(hop0_map_id=999), "no map '999'"),
    }
    nan_alpha = tampered()
    nan_alpha["concepts"][0]["chosen"]["alpha"]["alpha"] = float("nan")
    cases["a NaN alpha"] = (nan_alpha, "finite number")
    before = len(reg.list_vectors(limit=0).items)
    for name, (plan, message) in cases.items():
        with pytest.raises(CrxError, match=re.escape(message)):
            reg.execute_plan(read_plan(plan))
        assert len(reg.list_vectors(limit=0).items) == before, name
    assert reg.execute_plan(read_plan(document))[0].status == "registered"


def test_a_target_that_is_a_folder_without_config_says_how_it_was_read(
    reg: Registry, tmp_path: Path
) -> None:
    """An unregistered name that is also a folder here is read as that folder, and the error
    says so (found by the hostile campaign: "x has no config.json" for `--target x`)."""
    folder = tmp_path / "x"
    folder.mkdir()
    with pytest.raises(CrxError, match="is not a registered model, so it was read as the folder"):
        reg.plan(str(folder), ["honesty"])
