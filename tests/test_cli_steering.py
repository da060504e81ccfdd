"""One meaning for α, and steering that follows the plan, through the ``crx`` CLI.

α is relative to the steered layer's mean residual norm by default (``crx evaluate``,
``crx generate``, the Python API); ``--absolute`` asks for absolute α and ``--normalize`` is a
no-op kept for old scripts. Every output that prints an α says which it is. ``crx generate
--concept C`` steers with the vector, layer and α ``crx plan`` chooses for C, and its header
says which and why. ``crx list vectors`` tells two transplants of a concept apart.

The models are the saved tiny Llama (4 x 32) and GPT-2 (3 x 48) of `tests.tiny_models`, the
registry a real SQLite file or PostgreSQL database with a local store (`tests.cli_world`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crx.registry.engine.emotion import (
    EMOTIONS,
    eval_prompts,
    label_token_ids,
    load_scenarios,
    split_scenarios,
)
from crx.registry.engine.prompts import read_next_tokens
from crx.registry.engine.steer import steer
from crx.registry.plot import accuracy_vs_alpha, alpha_figure
from crx.registry.workflows.evaluate import DEFAULT_ALPHAS, reference_norm
from tests.cli_world import World, tiny_array
from tests.tiny_models import PAIRS


def _engine_world(world: World, model_dirs: dict[str, Path], concept: str = "happiness") -> World:
    with world.registry() as reg:
        reg.register_model("src", str(model_dirs["llama"]))
        reg.register_model("tgt", str(model_dirs["gpt2"]))
        reg.register_concept(concept, PAIRS)
    return world


def _evaluations(world: World) -> int:
    with world.registry() as reg:
        return len(reg.list_evaluations(limit=None).items)


def test_evaluate_alpha_is_relative_by_default_and_absolute_on_request(
    world: World, model_dirs: dict[str, Path]
) -> None:
    # anger: the tiny random model answers it often enough for the scores to move with α.
    w = _engine_world(world, model_dirs, "anger")
    vector = w.json("extract", "anger", "--model", "src")["record"]

    # The default: α 0.05, 0.1, 0.2, 0.4 × the layer's mean residual norm, recorded so.
    rows = w.json("evaluate", "anger", "--model", "src")["items"]
    assert sorted({r["alpha"] for r in rows}) == list(DEFAULT_ALPHAS)
    assert {r["settings"]["normalize"] for r in rows} == {True}
    assert {r["layers"][0] for r in rows} == {3}  # depth 0.75 of 4 blocks
    with w.registry() as reg:
        loaded = reg.load_model("src")
        norm = reference_norm(loaded, 3)
        array = reg.load_vector(vector["id"])
    assert [r["settings"]["reference_norm"] for r in rows] == pytest.approx([norm] * len(rows))

    # --absolute: α as given, times the vector as stored; recorded as absolute, no norm.
    absolute = w.json("evaluate", "anger", "--model", "src", "--alpha", "0.4", "--absolute")
    assert [(r["alpha"], r["settings"]["normalize"]) for r in absolute["items"]] == [
        (0.4, False),
        (0.4, False),
    ]
    assert {r["settings"]["reference_norm"] for r in absolute["items"]} == {None}
    # Relative and absolute 0.4 are different rows: neither is served for the other.
    assert not {r["id"] for r in absolute["items"]} & {r["id"] for r in rows}

    # The steering magnitude: each row's scores are the model steered by hand with
    # 0.4 × norm × v/|v| (relative) and 0.4 × v (absolute), which differ here.
    test = split_scenarios(load_scenarios("anger"), 0.5).test
    ids = label_token_ids(loaded.tokenizer)
    target = EMOTIONS.index("anger")

    def by_hand(addition: np.ndarray) -> dict[str, float]:
        with steer(loaded.layers, addition, layer=3):
            out = read_next_tokens(loaded, eval_prompts(test), ids, use_prefix_cache=False)
        return {
            "token_accuracy": (out.top1 == ids[target]).double().mean().item(),
            "logit_accuracy": (out.candidate_logits.argmax(dim=-1) == target)
            .double()
            .mean()
            .item(),
        }

    row = array[3].astype(np.float64)
    assert abs(float(np.linalg.norm(row)) - norm) > 0.1 * norm  # so the two magnitudes differ
    relative = by_hand((0.4 * norm * row / np.linalg.norm(row)).astype(np.float32))
    plain = by_hand((0.4 * row).astype(np.float32))
    assert relative != plain
    assert {r["metric"]: r["value"] for r in rows if r["alpha"] == 0.4} == pytest.approx(relative)
    assert {r["metric"]: r["value"] for r in absolute["items"]} == pytest.approx(plain)

    # --normalize is a no-op now: the same rows as the default, reused.
    again = w.json("evaluate", "anger", "--model", "src", "--alpha", "0.1", "--normalize")
    assert {r["id"] for r in again["items"]} == {r["id"] for r in rows if r["alpha"] == 0.1}

    # The table says which α each row is.
    table = w.ok("evaluate", "anger", "--model", "src", "--alpha", "0.1").stdout
    assert "0.1 × norm" in table
    table = w.ok("evaluate", "anger", "--model", "src", "--alpha", "0.4", "--absolute").stdout
    assert "0.4 absolute" in table
    assert "× norm" not in table
    listed = w.ok("list", "evaluations", "--model", "src").stdout
    assert "0.05 × norm" in listed
    assert "0.4 absolute" in listed

    # Absolute α has no default (its scale is the model's); contradicting flags are refused.
    before = _evaluations(w)
    for args, message in (
        (["--absolute"], "absolute α has no default"),
        (["--absolute", "--normalize", "--alpha", "1"], "contradict each other"),
    ):
        result = w.run("evaluate", "anger", "--model", "src", *args)
        assert result.exit_code == 1
        assert result.stderr.startswith("Error: ")
        assert message in result.stderr
        assert result.stderr.count("\n") == 1
    assert _evaluations(w) == before


def _plan_world(w: World) -> dict[str, int]:
    """tgt holds a native happiness vector the plan chooses (evaluated best at layer 1, α 0.2
    × norm) and a newer one (RepE's PCA) evaluated worse."""
    with w.registry() as reg:
        native = reg.extract("happiness", "tgt").record
        newer = reg.extract("happiness", "tgt", method="pca").record
        for vector_id, value in ((native.id, 0.9), (newer.id, 0.1)):
            reg.record_evaluation(
                "tgt", "emotion", {"token_accuracy": value}, vector_id=vector_id, layers=[1],
                alpha=0.2, n=10, settings={"normalize": True},
            )  # fmt: skip
        assert reg.find_vector("happiness", "tgt").id == newer.id  # the newest is not the plan's
    return {"native": native.id, "newer": newer.id}


def _header(output: str) -> str:
    (line,) = [x for x in output.splitlines() if x.startswith("--- steered: ")]
    return line


def test_generate_steers_with_the_plans_choice_and_says_why(
    world: World, model_dirs: dict[str, Path]
) -> None:
    w = _engine_world(world, model_dirs)
    ids = _plan_world(w)
    plan = w.json("plan", "--target", "tgt", "--concept", "happiness")["concepts"][0]
    assert (plan["status"], plan["chosen"]["vector_id"], plan["chosen"]["layer"]) == (
        "ready",
        ids["native"],
        1,
    )
    plan_text = w.ok("plan", "--target", "tgt", "--concept", "happiness").stdout
    assert "α 0.2 × residual norm (token_accuracy 0.900" in plan_text

    prompt = "the cat"
    out = w.ok("generate", "--model", "tgt", "--concept", "happiness", "--max-new-tokens", "4",
               prompt).stdout  # fmt: skip
    assert _header(out).startswith(
        f"--- steered: vector {ids['native']} (extracted on tgt), layer 1, "
        "α 0.2 × residual norm (token_accuracy 0.900): the plan's choice (best evaluated "
        "token_accuracy: 0.900 against 0.100 for the next (native))"
    )
    # The text is the plan's vector at its layer and α, relative: the same as asking for them.
    with w.registry() as reg:
        asked = reg.generate("tgt", prompt, vector_id=ids["native"], layer=1, alpha=0.2,
                             max_new_tokens=4)  # fmt: skip
    assert out.splitlines()[-1] == prompt + list(asked.values())[1]
    # --json: the same continuations and header, as stable fields.
    doc = w.json("generate", "--model", "tgt", "--concept", "happiness", "--max-new-tokens", "4",
                 prompt)  # fmt: skip
    assert (doc["model"], doc["prompt"]) == ("tgt", prompt)
    assert (doc["base"], doc["steered"]) == tuple(asked.values())
    assert _header(out).removeprefix("--- steered: ").startswith(doc["steering"][:40])

    # --vector, --layer and --alpha override the plan's; --absolute makes α absolute.
    out = w.ok("generate", "--model", "tgt", "--concept", "happiness", "--vector",
               str(ids["newer"]), "--max-new-tokens", "2", prompt).stdout  # fmt: skip
    assert f"vector {ids['newer']} (extracted on tgt), layer 2, α 0.1 × residual norm (default): " \
        "the vector asked for" in _header(out)  # fmt: skip
    out = w.ok("generate", "--model", "tgt", "--concept", "happiness", "--layer", "2",
               "--alpha", "0.3", "--max-new-tokens", "2", prompt).stdout  # fmt: skip
    assert f"vector {ids['native']} (extracted on tgt), layer 2, α 0.3 × residual norm " \
        "(asked): the plan's choice" in _header(out)  # fmt: skip
    out = w.ok("generate", "--model", "tgt", "--concept", "happiness", "--layer", "0",
               "--max-new-tokens", "2", prompt).stdout  # fmt: skip
    assert "layer 0, α 0.2 × residual norm (token_accuracy 0.900 at the plan's layer 1): " \
        "the plan's choice" in _header(out)  # fmt: skip
    out = w.ok("generate", "--model", "tgt", "--concept", "happiness", "--alpha", "8",
               "--absolute", "--max-new-tokens", "2", prompt).stdout  # fmt: skip
    assert "layer 1, α 8 absolute (asked): the plan's choice" in _header(out)
    result = w.run("generate", "--model", "tgt", "--concept", "happiness", "--absolute", prompt)
    assert result.exit_code == 1
    assert "absolute α has no default" in result.stderr


def test_generate_falls_back_to_the_newest_vector_and_says_so(
    world: World, model_dirs: dict[str, Path]
) -> None:
    w = _engine_world(world, model_dirs)
    with w.registry() as reg:
        reg.extract("happiness", "src")
        weight = np.random.default_rng(0).standard_normal((48, 32)).astype("f4")
        reg.save_map("src", "tgt", 1, 2, weight, None, solver="ridge", r2=0.3)
        reg.save_map("src", "tgt", 3, 2, weight, None, solver="lstsq-svd", r2=0.9)
        source = reg.find_vector("happiness", "src")
        assert source is not None
        mapped = reg.transplant("happiness", "src", "tgt", solver="ridge").record
    # The plan would map the concept anew through the better map: no vector is ready.
    plan = w.json("plan", "--target", "tgt", "--concept", "happiness")["concepts"][0]
    assert plan["status"] == "to-transplant"
    out = w.ok("generate", "--model", "tgt", "--concept", "happiness", "--max-new-tokens", "2",
               "the cat").stdout  # fmt: skip
    header = _header(out)
    assert (
        f"vector {mapped.id} (transplanted: vector {source.id} on src, ridge 1->2), layer 2"
        in header
    )
    assert "α 0.1 × residual norm (default)" in header
    assert "the newest vector of happiness@1 on tgt; the plan has no ready route " \
        "(to-transplant: " in header  # fmt: skip


def test_list_vectors_tells_two_transplants_apart(world: World) -> None:
    # Config-only models: transplanting reads stored vectors and maps, it loads no model.
    with world.registry() as reg:
        reg.register_model("a", str(world.model_dir))  # 4 x 32
        folder = world.tmp / "b"
        folder.mkdir()
        (folder / "config.json").write_text(
            '{"model_type": "qwen2", "num_hidden_layers": 3, "hidden_size": 16}'
        )
        reg.register_model("b", str(folder))
        reg.register_concept("joy", world.pairs)
        source = reg.save_vector("joy", "a", tiny_array(), origin="extracted").record
        weight = np.ones((16, 32), np.float32)
        for layer in range(3):
            reg.save_map("a", "b", layer, layer, weight, None, solver="ridge", r2=0.5)
        reg.save_map("a", "b", 3, 2, weight, None, solver="lstsq-svd", r2=0.4)
    ridge = world.json("transplant", "joy", "--source", "a", "--target", "b", "--solver",
                       "ridge")["record"]  # fmt: skip
    svd = world.json("transplant", "joy", "--source", "a", "--target", "b", "--solver",
                     "lstsq-svd", "--layer", "2")["record"]  # fmt: skip
    lines = world.ok("list", "vectors", "--model", "b").stdout.splitlines()
    assert "MAPPED FROM" in lines[0]
    (ridge_line,) = [x for x in lines if x.startswith(f"{ridge['id']} ")]
    (svd_line,) = [x for x in lines if x.startswith(f"{svd['id']} ")]
    assert f"vector {source.id} on a, ridge 0->0,1->1,2->2" in ridge_line
    assert f"vector {source.id} on a, lstsq-svd 3->2" in svd_line
    # The source vector itself is not mapped.
    listed = world.ok("list", "vectors", "--model", "a").stdout.splitlines()
    assert listed[1].split()[-2] == "-"


def test_the_plot_axis_says_which_alpha(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    series = {"v": {0.1: 0.5, 0.2: 0.6}}
    for normalize, label in ((True, "α (× residual norm)"), (False, "α (absolute)")):
        fig = alpha_figure(series, base=0.4, metric="acc", title="t", normalize=normalize)
        assert fig.axes[0].get_xlabel() == label
        plt.close(fig)
    # The default, as the demo draws it, is relative.
    fig = alpha_figure(series, base=None, metric="acc", title="t")
    assert fig.axes[0].get_xlabel() == "α (× residual norm)"
    plt.close(fig)
    out = accuracy_vs_alpha(series, base=0.4, metric="acc", title="t", out=tmp_path / "a.png")
    assert out.read_bytes().startswith(b"\x89PNG")


def test_plan_reads_rows_recorded_as_absolute_as_absolute(populated: World) -> None:
    # Rows written before relative α was the default say normalize: false (what `crx evaluate`
    # recorded without --normalize); a row recorded by hand may say nothing. Both are absolute.
    w = populated
    with w.registry() as reg:
        vector = reg.save_vector(
            "joy", "tiny-b", np.ones((2, 16), np.float32), origin="imported"
        ).record
        for value, alpha, settings in ((0.3, 4.0, {"normalize": False}), (0.2, 8.0, None)):
            reg.record_evaluation("tiny-b", "emotion", {"token_accuracy": value},
                                  vector_id=vector.id, layers=[1], alpha=alpha, n=10,
                                  settings=settings)  # fmt: skip
    (item,) = w.json("plan", "--target", "tiny-b", "--concept", "joy")["concepts"]
    chosen = next(r for r in item["candidates"] if r["vector_id"] == vector.id)["alpha"]
    assert (chosen["alpha"], chosen["normalize"], chosen["value"]) == (4.0, False, 0.3)
    assert chosen["alphas_tried"] == [4.0, 8.0]
    assert chosen["note"].startswith("best token_accuracy over α 4, 8 (absolute)")
    text = w.ok("plan", "--target", "tiny-b", "--concept", "joy").stdout
    assert "α 4 (absolute) (token_accuracy 0.300" in text

    # A relative row that scores better wins, in its own unit; the absolute ones are not
    # listed beside it as if they were comparable.
    with w.registry() as reg:
        reg.record_evaluation("tiny-b", "emotion", {"token_accuracy": 0.6}, vector_id=vector.id,
                              layers=[1], alpha=0.2, n=10,
                              settings={"normalize": True})  # fmt: skip
    (item,) = w.json("plan", "--target", "tiny-b", "--concept", "joy")["concepts"]
    chosen = next(r for r in item["candidates"] if r["vector_id"] == vector.id)["alpha"]
    assert (chosen["alpha"], chosen["normalize"], chosen["alphas_tried"]) == (0.2, True, [0.2])
    text = w.ok("plan", "--target", "tiny-b", "--concept", "joy").stdout
    assert "α 0.2 × residual norm (token_accuracy 0.600" in text
