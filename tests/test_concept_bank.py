"""The concept bank and the anchored maps it feeds, through the CLI on real registries.

The bank's data is checked as shipped (size, format, independence from the evaluated data);
`crx bank extract`, `crx fit --solver anchored` and the leakage rule run on the tiny Llama and
GPT-2 of `tests.tiny_models` with a real SQLite file or PostgreSQL database (`tests.cli_world`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from crx.registry.declare import load_specs
from crx.registry.declare.snapshot import Snapshot
from crx.registry.engine.emotion import EMOTIONS, load_scenarios
from crx.registry.errors import InvalidInput
from crx.registry.pairs import ContrastPair
from crx.registry.workflows.bank import PREFIX, bank_index, bank_pairs, is_extracted
from crx.schemas.names import name_problem
from tests.cli_world import World
from tests.test_cli_errors import snapshot, user_error
from tests.tiny_models import PAIRS

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_the_bank_ships_at_least_150_independent_concepts() -> None:
    index = bank_index()
    assert len(index) >= 150
    assert len({e.name for e in index}) == len(index)
    assert {e.group for e in index} >= {"grammar", "topics", "style", "semantics"}
    texts: dict[str, str] = {}
    for entry in index:
        assert name_problem(PREFIX + entry.name) is None
        pairs = bank_pairs(entry)
        assert len(pairs) >= 20, entry.name
        for pair in pairs:
            assert pair.positive != pair.negative
            for text in (pair.positive, pair.negative):
                # every text belongs to one concept: no two bank concepts share texts, so each
                # is its own group in leave-concepts-out validation
                assert texts.setdefault(text, entry.name) == entry.name, text
    # nothing of what is evaluated: no emotion scenario, no emotion word, no TruthfulQA text
    scenarios = {s for e in EMOTIONS for s in load_scenarios(e)}
    assert not scenarios & set(texts)
    words = re.compile(
        r"\b(" + "|".join(EMOTIONS) + r"|sad|angry|afraid|disgusted|surprised)\b", re.I
    )
    assert not [t for t in texts if words.search(t)]
    truthfulqa = SHARED / "truthfulqa" / "truthfulqa_dev.csv"
    if truthfulqa.exists():
        questions = truthfulqa.read_text(encoding="utf-8")
        assert not [t for t in texts if len(t) > 30 and t in questions]


def test_bank_list_names_every_concept_as_registered(world: World) -> None:
    listed = world.json("bank", "list")
    assert [e["concept"] for e in listed] == [PREFIX + e.name for e in bank_index()]


def _models(w: World, model_dirs: dict[str, Path]) -> None:
    with w.registry() as reg:
        reg.register_model("src", str(model_dirs["llama"]))
        reg.register_model("tgt", str(model_dirs["gpt2"]))


def test_bank_extract_registers_and_extracts_then_reuses(
    world: World, model_dirs: dict[str, Path]
) -> None:
    _models(world, model_dirs)
    first = world.json("bank", "extract", "--model", "src", "--limit", "5")
    assert (first["extracted"], first["reused"]) == (5, 0)
    names = [e.name for e in bank_index()[:5]]
    assert [v["concept"] for v in first["items"]] == [PREFIX + n for n in names]
    assert {v["model"] for v in first["items"]} == {"src"}
    again = world.json("bank", "extract", "--model", "src", "--limit", "5")
    assert (again["extracted"], again["reused"]) == (0, 5)
    assert [v["id"] for v in again["items"]] == [v["id"] for v in first["items"]]
    with world.registry() as reg:
        concept = reg.get_concept(PREFIX + names[0])
        assert reg.load_pairs(concept) == bank_pairs(bank_index()[0])
        assert concept.pair_construction == "concept bank"
    before = snapshot(world)
    message = user_error(world.run("bank", "extract", "--model", "src", "--concept", "nope"))
    assert "not in the concept bank: nope" in message
    assert snapshot(world) == before


def test_bank_concepts_extracted_together_equal_each_extracted_alone(
    world: World, model_dirs: dict[str, Path]
) -> None:
    from crx.registry.engine.extract import extract_vector

    _models(world, model_dirs)
    with world.registry() as reg:
        # three passes of two, two and one concept: the split must follow the concepts
        results = reg.extract_bank("src", limit=5, concepts_per_pass=2)
        assert [created for _, created in results] == [True] * 5
        loaded = reg.load_model("src")
        vectors = [reg.load_vector(v.id) for v, _ in results]
        for entry, (record, _), vector in zip(bank_index()[:5], results, vectors, strict=True):
            assert record.concept == PREFIX + entry.name
            assert record.settings["n_pairs"] == len(bank_pairs(entry))
            alone = extract_vector(loaded, bank_pairs(entry))
            np.testing.assert_allclose(vector, alone, rtol=1e-4, atol=1e-5)
        assert not np.allclose(vectors[0], vectors[1], atol=1e-3)


@pytest.fixture
def anchored_world(world: World, model_dirs: dict[str, Path], corpus_file: Path) -> World:
    """Two tiny models, 8 bank concepts and `mood` (plus `mood-twin`, built from the same
    texts) extracted on both."""
    _models(world, model_dirs)
    with world.registry() as reg:
        reg.register_concept("mood", PAIRS)
        twin = [ContrastPair(p.negative, p.positive) for p in PAIRS[:3]]
        reg.register_concept("mood-twin", twin)
    for model in ("src", "tgt"):
        world.ok("bank", "extract", "--model", model, "--limit", "8")
        for concept in ("mood", "mood-twin"):
            world.ok("extract", concept, "--model", model)
    world.facts["fit"] = ("fit", "--source", "src", "--target", "tgt", "--corpus", str(corpus_file))
    return world


def test_an_anchored_fit_records_its_anchors_and_a_transplant_of_one_is_refused(
    anchored_world: World,
) -> None:
    w = anchored_world
    maps = w.json(*w.facts["fit"], "--solver", "anchored")["items"]
    assert len(maps) == 3  # auto: one map per target block of the tiny GPT-2
    with w.registry() as reg:
        anchors = reg.catalog.map_anchors([m["id"] for m in maps])
    refs = {a.ref for a in anchors[maps[0]["id"]]}
    bank = {f"{PREFIX}{e.name}@1" for e in bank_index()[:8]}
    assert refs == bank | {"mood@1", "mood-twin@1"}
    settings = maps[0]["solver_settings"]
    assert settings["n_anchor_concepts"] == 10
    assert settings["n_anchor_groups"] == 9  # mood and its twin share texts: one group
    assert settings["anchor_exclude"] == []

    before = snapshot(w)
    for concept in ("mood", "mood-twin"):
        message = user_error(
            w.run(
                "transplant", concept, "--source", "src", "--target", "tgt", "--solver", "anchored"
            )
        )
        assert f"{concept}@1 cannot go through anchored map" in message
        assert f"--exclude {concept}" in message
    assert snapshot(w) == before


def test_excluding_a_concept_drops_its_whole_family_and_then_it_transplants(
    anchored_world: World,
) -> None:
    w = anchored_world
    leaky = w.json(*w.facts["fit"], "--solver", "anchored")["items"]
    clean = w.json(*w.facts["fit"], "--solver", "anchored", "--exclude", "mood")["items"]
    assert {m["id"] for m in clean}.isdisjoint({m["id"] for m in leaky})
    with w.registry() as reg:
        anchors = reg.catalog.map_anchors([m["id"] for m in clean])
    refs = {a.ref for found in anchors.values() for a in found}
    assert not refs & {"mood@1", "mood-twin@1"}  # the twin shares mood's texts: out too
    assert len(refs) == 8
    assert clean[0]["solver_settings"]["anchor_exclude"] == ["mood"]
    vector = w.json(
        "transplant", "mood", "--source", "src", "--target", "tgt", "--solver", "anchored"
    )
    assert sorted(vector["record"]["map_ids"]) == sorted(m["id"] for m in clean)
    # the anchors are lineage: on the map, and as one node of the transplant's graph
    shown = w.json("show", "map", str(clean[0]["id"]))
    assert sorted(shown["anchors"]) == sorted(refs)
    graph = w.json("lineage", "mood", "--model", "tgt", "--vector", str(vector["record"]["id"]))
    nodes = [n for n in graph["nodes"] if n["kind"] == "anchors"]
    assert len(nodes) == 1  # every map of the fit shares one anchor set
    assert nodes[0]["details"]["n_concepts"] == 8
    assert set(nodes[0]["details"]["concepts"].split(", ")) == refs
    map_nodes = [n for n in graph["nodes"] if n["kind"] == "map"]
    assert map_nodes
    assert all(nodes[0]["key"] in n["inputs"] for n in map_nodes)
    # the same fit again is found, not refitted
    again = w.json(*w.facts["fit"], "--solver", "anchored", "--exclude", "mood")["items"]
    assert [m["id"] for m in again] == [m["id"] for m in clean]


def test_without_a_solver_a_transplant_never_picks_a_map_fitted_on_its_concept(
    anchored_world: World,
) -> None:
    w = anchored_world
    ridge = w.json(*w.facts["fit"])["items"]
    w.json(*w.facts["fit"], "--solver", "anchored")
    vector = w.json("transplant", "mood", "--source", "src", "--target", "tgt")
    assert sorted(vector["record"]["map_ids"]) == sorted(m["id"] for m in ridge)


def test_plans_reach_anchored_maps_only_through_vectors_transplanted_with_them(
    anchored_world: World,
) -> None:
    w = anchored_world
    w.json(*w.facts["fit"], "--solver", "anchored", "--exclude", "mood")
    w.ok("extract", "mood", "--model", "src")

    def hops(plan: dict) -> list[tuple[str, str]]:
        (item,) = plan["concepts"]
        return [(r["kind"], h["solver"]) for r in item["candidates"] for h in r["hops"]]

    # no direct route through an anchored map: whether it may carry mood is mood's question
    before = w.json("plan", "--target", "tgt", "--concept", "mood")
    assert ("direct", "anchored") not in hops(before)
    made = w.json(
        "transplant", "mood", "--source", "src", "--target", "tgt", "--solver", "anchored"
    )
    # the tiny random models' maps fit badly (R² < 0): a vector mapped through them is planned
    # once it is evaluated on the target, its evaluation being the evidence
    with w.registry() as reg:
        reg.record_evaluation(
            "tgt",
            "emotion",
            {"token_accuracy": 0.9},
            vector_id=made["record"]["id"],
            alpha=0.1,
            layers=[2],
            settings={"normalize": True},
        )
    after = w.json("plan", "--target", "tgt", "--concept", "mood")
    assert ("transplanted", "anchored") in hops(after), after["concepts"][0]["reasons"]
    # With no concept named (and none marked for use), the plan is of the team's concepts: the
    # bank's anchor maps, and are planned only when named.
    default = w.json("plan", "--target", "tgt")
    assert [c["concept"] for c in default["concepts"]] == ["mood@1", "mood-twin@1"]
    bank = f"{PREFIX}{bank_index()[0].name}"
    named = w.json("plan", "--target", "tgt", "--concept", bank)
    assert [c["concept"] for c in named["concepts"]] == [f"{bank}@1"]


def test_a_bank_in_a_template_is_another_version_and_anchors_only_the_fits_that_ask(
    anchored_world: World,
) -> None:
    w = anchored_world
    template = "Text: {text}\nThe style of the above text is"
    for model in ("src", "tgt"):
        made = w.json("bank", "extract", "--model", model, "--limit", "5", "--template", template)
        assert made["extracted"] == 5
    names = [e.name for e in bank_index()[:5]]
    with w.registry() as reg:
        second = reg.get_concept(f"{PREFIX}{names[0]}@2")
        assert second.template == template
        assert reg.load_pairs(second) == reg.load_pairs(f"{PREFIX}{names[0]}@1")
    maps = w.json(*w.facts["fit"], "--solver", "anchored", "--anchor-template", template)["items"]
    with w.registry() as reg:
        anchors = reg.catalog.map_anchors([maps[0]["id"]])[maps[0]["id"]]
    assert sorted(a.ref for a in anchors) == sorted(f"{PREFIX}{n}@2" for n in names)
    assert maps[0]["solver_settings"]["anchor_template"] == template
    # without a template, each concept anchors once, in its newest version: two versions of a
    # concept are one direction read twice
    every = w.json(*w.facts["fit"], "--solver", "anchored", "--exclude", "mood")["items"]
    with w.registry() as reg:
        anchors = reg.catalog.map_anchors([every[0]["id"]])[every[0]["id"]]
    newest = {f"{PREFIX}{n}@2" for n in names}
    newest |= {f"{PREFIX}{e.name}@1" for e in bank_index()[5:8]}
    assert {a.ref for a in anchors} == newest
    settings = every[0]["solver_settings"]
    assert (settings["n_anchor_concepts"], settings["n_anchor_groups"]) == (8, 8)
    refused = user_error(w.run(*w.facts["fit"], "--anchor-template", template))
    assert "apply to the anchored solver only" in refused


def test_an_anchored_fit_without_anchors_says_how_to_get_them_and_changes_nothing(
    world: World, model_dirs: dict[str, Path], corpus_file: Path
) -> None:
    _models(world, model_dirs)
    before = snapshot(world)
    fit = ("fit", "--source", "src", "--target", "tgt", "--corpus", str(corpus_file))
    message = user_error(world.run(*fit, "--solver", "anchored"))
    assert "crx bank extract --model src" in message
    assert snapshot(world) == before
    message = user_error(world.run(*fit, "--solver", "anchored", "--exclude", "nope"))
    assert "nope" in message
    assert snapshot(world) == before


def test_a_bank_of_fewer_pairs_is_a_version_of_its_own_that_anchors_once_extracted(
    anchored_world: World,
) -> None:
    w = anchored_world
    index = bank_index()
    for model in ("src", "tgt"):
        made = w.json("bank", "extract", "--model", model, "--limit", "4", "--pairs", "3")
        assert (made["extracted"], made["reused"]) == (4, 0)
    again = w.json("bank", "extract", "--model", "src", "--limit", "4", "--pairs", "3")
    assert (again["extracted"], again["reused"]) == (0, 4)
    with w.registry() as reg:
        short = reg.get_concept(f"{PREFIX}{index[0].name}@2")
        assert short.n_pairs == 3
        assert reg.load_pairs(short) == bank_pairs(index[0])[:3]
        assert short.description.endswith(f"(first 3 of {len(bank_pairs(index[0]))} pairs)")
        full = reg.catalog.find_vector(reg.get_concept(f"{PREFIX}{index[0].name}@1"), "src")
        part = reg.catalog.find_vector(short, "src")
        assert full is not None
        assert part is not None
        assert not np.allclose(reg.load_vector(full.id), reg.load_vector(part.id))
        assert not is_extracted(reg.catalog, reg.get_model("src"), pairs=3)  # 4 of the bank
    maps = w.json(*w.facts["fit"], "--solver", "anchored", "--exclude", "mood")["items"]
    with w.registry() as reg:
        anchors = reg.catalog.map_anchors([maps[0]["id"]])[maps[0]["id"]]
    short_ones = {f"{PREFIX}{e.name}@2" for e in index[:4]}
    assert {a.ref for a in anchors} == short_ones | {f"{PREFIX}{e.name}@1" for e in index[4:8]}
    before = snapshot(w)
    with w.registry() as reg, pytest.raises(InvalidInput, match="pairs must be at least 1"):
        reg.extract_bank("src", pairs=0)
    assert snapshot(w) == before


def _changes(w: World, spec: Path) -> dict[str, str]:
    """key → action of `crx diff --json`, for the maps and transplants."""
    found = w.json("diff", str(spec))["changes"]
    return {c["key"]: c["action"] for c in found if c["kind"] in ("map", "transplant")}


def test_spec_files_declare_anchored_maps_and_apply_never_carries_a_concept_through_its_own(
    anchored_world: World, corpus_file: Path
) -> None:
    w = anchored_world
    maps = [
        f"  - {{source: src, target: tgt, corpus: {corpus_file}, solver: anchored}}",
        f"  - {{source: src, target: tgt, corpus: {corpus_file}, solver: anchored, "
        "exclude: [mood]}",
    ]
    transplant = "transplants:\n  - {concept: mood, source: src, target: tgt}\n"
    # the map fitted on mood is the only one into tgt: the transplant is refused, not made
    before = snapshot(w)
    alone = w.file("alone.yaml", "maps:\n" + maps[0] + "\n" + transplant)
    message = user_error(w.run("apply", "--quiet", str(alone)))
    assert "mood cannot go through the anchored maps declared from src to tgt" in message
    assert "mood@1" in message
    assert "exclude: [mood]" in message
    # no row landed (the fit's blobs, computed before the refusal, are unreferenced: gc's)
    assert snapshot(w)["lists"] == before["lists"]

    spec = w.file("anchored.yaml", "maps:\n" + "\n".join(maps) + "\n" + transplant)
    planned = _changes(w, spec)
    assert sorted(planned.values()) == ["create"] * 3
    leaky_key, clean_key = sorted(k for k in planned if k.startswith("map:"))
    assert leaky_key.endswith(":exclude=:template=")
    assert clean_key.endswith(":exclude=mood:template=")

    w.ok("apply", str(spec))
    with w.registry() as reg:
        fitted = reg.catalog.list_maps(source="src", target="tgt", limit=0).items
        anchors = reg.catalog.map_anchors([m.id for m in fitted])
        vector = reg.catalog.find_vector(reg.get_concept("mood"), "tgt", origin="mapped")
    leaky = {m.id for m in fitted if "mood@1" in {a.ref for a in anchors[m.id]}}
    clean = {m.id for m in fitted} - leaky
    assert len(leaky) == len(clean) == 3  # one map per target block, each fit
    for map_id in clean:
        assert {a.ref for a in anchors[map_id]}.isdisjoint({"mood@1", "mood-twin@1"})
    by_id = {m.id: m for m in fitted}
    assert [by_id[i].solver_settings["anchor_exclude"] for i in clean] == [["mood"]] * 3
    assert [by_id[i].solver_settings["anchor_exclude"] for i in leaky] == [[]] * 3
    assert vector is not None
    assert vector.map_ids is not None
    assert set(vector.map_ids) <= clean  # the map fitted on mood never carries it

    # the same fit from the CLI is found, not refitted: spec and command are one recipe
    again = w.json(*w.facts["fit"], "--solver", "anchored", "--exclude", "mood")["items"]
    assert {m["id"] for m in again} == clean
    # and a second diff finds everything in place, the transplant included (it is compared
    # with what apply would choose: never a leaky map, however good its R²)
    assert set(_changes(w, spec).values()) == {"unchanged"}
    with w.registry() as reg:
        seen = Snapshot.read(reg.catalog, load_specs(spec).catalog)
        mood = reg.get_concept("mood")
    assert {m.id for m in seen.usable_maps(mood.id, "src", "tgt")} == clean

    # a new anchor on both models is a new anchor set: both anchored fits are to do again
    for model in ("src", "tgt"):
        w.ok("bank", "extract", "--model", model, "--limit", "9")
    assert _changes(w, spec) == {
        leaky_key: "create",
        clean_key: "create",
        **{k: v for k, v in planned.items() if k.startswith("transplant:")},
    }


def test_anchored_options_in_a_spec_are_checked_before_any_work(
    anchored_world: World, corpus_file: Path
) -> None:
    w = anchored_world
    before = snapshot(w)
    ridge = w.file(
        "ridge.yaml",
        f"maps:\n  - {{source: src, target: tgt, corpus: {corpus_file}, exclude: [mood]}}\n",
    )
    message = user_error(w.run("apply", str(ridge)))
    assert f"{ridge}:2" in message
    assert "apply to solver: anchored only" in message
    template = w.file(
        "template.yaml",
        "maps:\n  - {source: src, target: tgt, solver: anchored, anchor_template: 'no slot'}\n",
    )
    assert "must contain {text}" in user_error(w.run("diff", str(template)))
    in_template = w.file(
        "none.yaml",
        f"maps:\n  - {{source: src, target: tgt, corpus: {corpus_file}, solver: anchored, "
        "anchor_template: 'Q: {text}'}\n",
    )
    message = user_error(w.run("apply", str(in_template)))
    assert f"{in_template}:2" in message
    assert "crx bank extract --model src" in message
    assert "(with --template)" in message
    assert snapshot(w) == before
