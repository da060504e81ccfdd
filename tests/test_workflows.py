"""The ConTrans workflow on a registry: extract, fit, transplant, steer with a stored
vector, cached corpus states, emotion evaluations, and refusals that register nothing.

The registry is a SQLite file and a local store (the ``reg`` fixture); the models are the saved
tiny Llama (4 x 32) and GPT-2 (3 x 48) of `tests.tiny_models`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from crx import Registry
from crx.registry.config import crx_home
from crx.registry.engine.capture import residual_states
from crx.registry.engine.emotion import (
    EMOTIONS,
    eval_prompts,
    label_token_ids,
    load_scenarios,
    split_scenarios,
)
from crx.registry.engine.extract import extract_vector
from crx.registry.engine.loading import LoadedModel, ModelLoadError
from crx.registry.engine.prompts import read_next_tokens
from crx.registry.engine.steer import steer
from crx.registry.errors import InvalidInput, NotFound, TensorShapeError, VectorNotFound
from crx.registry.workflows.corpus import corpus_states, load_corpus
from crx.registry.workflows.evaluate import default_layer, reference_norm
from tests.tiny_models import CORPUS, PAIRS, TEXTS, forward, no_hooks, open_steer, recording


def counts(reg: Registry) -> tuple[int, int, int, int]:
    return (
        len(reg.list_models(limit=None).items),
        len(reg.list_vectors(limit=None).items),
        len(reg.list_maps(limit=None).items),
        len(reg.list_evaluations(limit=None).items),
    )


def _register_pair(reg: Registry, model_dirs: dict[str, Path]) -> None:
    reg.register_model("src", str(model_dirs["llama"]))
    reg.register_model("tgt", str(model_dirs["gpt2"]))
    reg.register_concept("joy", PAIRS, template="Scenario: {text}\nThe feeling is")


def test_contrans_extract_fit_transplant(
    reg: Registry, model_dirs: dict[str, Path], corpus_file: Path, llama: LoadedModel
) -> None:
    _register_pair(reg, model_dirs)
    src, tgt = reg.get_model("src"), reg.get_model("tgt")
    assert (src.n_layers, src.d_model, tgt.n_layers, tgt.d_model) == (4, 32, 3, 48)

    # extract: computed once, then reused.
    first = reg.extract("joy", "src", batch_size=4)
    assert first.created
    vec = first.record
    assert (vec.origin, vec.estimator, vec.token_position) == ("extracted", "mean_diff", "last")
    assert (vec.n_layers, vec.d_model, vec.settings["n_pairs"]) == (4, 32, len(PAIRS))
    source = reg.load_vector(vec.id)
    expected = extract_vector(llama, PAIRS, template="Scenario: {text}\nThe feeling is")
    np.testing.assert_allclose(source, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vec.layer_norms, np.linalg.norm(source, axis=1), rtol=1e-5)
    again = reg.extract("joy", "src", batch_size=4)
    assert not again.created
    assert again.record.id == vec.id
    assert counts(reg)[1] == 1

    # fit: every pair, the best source layer per target layer, one explicit pair.
    all_maps = reg.fit("src", "tgt", corpus=corpus_file, pairs="all")
    assert sorted((m.source_layer, m.target_layer) for m in all_maps) == [
        (ls, lt) for ls in range(4) for lt in range(3)
    ]
    auto = reg.fit("src", "tgt", corpus=corpus_file, pairs="auto")
    assert [m.target_layer for m in auto] == [0, 1, 2]
    explicit = reg.fit("src", "tgt", corpus=corpus_file, pairs="1:2")
    assert [(m.source_layer, m.target_layer) for m in explicit] == [(1, 2)]
    for m in all_maps + auto + explicit:
        assert (m.source_model, m.target_model, m.solver, m.n_samples) == (
            "src",
            "tgt",
            "ridge",
            48,
        )
        assert m.r2 is not None
        assert np.isfinite(m.r2)
        weight, bias = reg.load_map(m.id)
        assert weight.shape == (48, 32)
        assert bias is not None
        assert bias.shape == (48,)
    assert counts(reg)[2] == 12 + 3 + 1
    assert {m.solver_settings["pairs"] for m in all_maps + auto + explicit} == {
        "all",
        "auto",
        "explicit",
    }
    # A second fit reuses the cached corpus states (one shard per layer, a folder per model).
    cached = sorted((crx_home() / "cache" / "states").glob("*/layer-*.safetensors"))
    assert sorted(p.name for p in cached) == sorted(
        [f"layer-{i:03d}.safetensors" for i in range(4)]
        + [f"layer-{i:03d}.safetensors" for i in range(3)]
    )
    reg.fit("src", "tgt", corpus=corpus_file, pairs="1:2")
    assert counts(reg)[2] == 16

    # transplant: per target layer, the best map (by held-out R²) applied to the source row.
    mapped = reg.transplant("joy", "src", "tgt")
    assert mapped.created
    record = mapped.record
    assert (record.origin, record.model, record.layers) == ("mapped", "tgt", [0, 1, 2])
    assert record.source_vector_id == vec.id
    assert record.map_ids == [record.settings["maps"][str(lt)] for lt in range(3)]
    out = reg.load_vector(record.id)
    assert out.shape == (3, 48)
    everything = all_maps + auto + explicit
    for lt in range(3):
        chosen = reg.get_map(record.map_ids[lt])
        assert chosen.target_layer == lt
        assert chosen.source_layer == record.settings["source_layers"][str(lt)]
        assert chosen.r2 == max(m.r2 for m in everything if m.target_layer == lt)  # type: ignore[type-var]
        weight, _ = reg.load_map(chosen.id)
        by_hand = weight.astype(np.float64) @ source[chosen.source_layer].astype(np.float64)
        np.testing.assert_allclose(out[lt], by_hand, rtol=1e-5, atol=1e-6)
    assert not reg.transplant("joy", "src", "tgt").created

    # One target layer: that row only, the others zero.
    single = reg.transplant("joy", "src", "tgt", layer=2).record
    assert single.layers == [2]
    assert single.map_ids == [record.map_ids[2]]
    single_out = reg.load_vector(single.id)
    np.testing.assert_array_equal(single_out[2], out[2])
    assert not single_out[:2].any()

    # The transplanted vector steers the target; alpha 0 changes nothing.
    texts = reg.generate(
        "tgt", "the cat sat", vector_id=record.id, alpha=0.0, layer=2, max_new_tokens=5
    )
    base_text, steered_text = texts.values()
    assert steered_text == base_text


def test_registry_steer_with_a_vector_id(reg: Registry, model_dirs: dict[str, Path]) -> None:
    _register_pair(reg, model_dirs)
    vec = reg.extract("joy", "src").record
    model = reg.load_model("src")
    assert model is reg.load_model("src")  # loaded once per registry object
    vector = reg.load_vector(vec.id)
    batch = model.tokenizer(TEXTS[:3], return_tensors="pt", padding=True)
    with recording(model.layers) as plain, torch.inference_mode():
        model.model(**batch)
    layer = default_layer(model.n_layers)  # relative depth 0.75: block 3 of 4
    assert layer == 3
    with (
        reg.steer(model, vec.id, alpha=2.0, normalize=False),  # absolute: v as stored, × 2
        recording(model.layers) as steered,
        torch.inference_mode(),
    ):
        model.model(**batch)
    for i in range(layer):
        assert torch.equal(plain[i][0], steered[i][0])
    diff = steered[layer][0] - plain[layer][0]
    expected = (2.0 * torch.from_numpy(vector[layer])).expand_as(diff)
    torch.testing.assert_close(diff, expected, rtol=0, atol=1e-5)

    # The default: alpha relative to the block's mean residual norm on the default corpus
    # (0.1 of it when no alpha is given), whatever the vector's own length.
    reference = reference_norm(reg.load_model("src"), 1)
    for kwargs, share in (({"alpha": 0.25}, 0.25), ({}, 0.1)):
        with (
            reg.steer(model, vec.id, layer=1, **kwargs),
            recording(model.layers, [1]) as scaled,
            torch.inference_mode(),
        ):
            model.model(**batch)
        lengths = (scaled[1][0] - plain[1][0]).norm(dim=-1)
        torch.testing.assert_close(
            lengths, torch.full_like(lengths, share * reference), rtol=1e-5, atol=1e-5
        )
    assert abs(float(np.linalg.norm(vector[1])) - reference) > 1e-3  # so the two differ

    # A vector of the target's width does not fit the source; hooks never stay behind.
    wrong = reg.save_vector("joy", "tgt", np.ones((3, 48), np.float32), origin="imported")
    with pytest.raises(InvalidInput, match=r"shape \[3, 48\], this model needs \[4, 32\]"):
        open_steer_registry(reg, model, wrong.record.id)
    with pytest.raises(InvalidInput, match=r"needs \[32\]"):
        open_steer_registry(reg, model, np.ones(48, np.float32), layer=1)
    with pytest.raises(InvalidInput, match="out of range"):
        open_steer_registry(reg, model, vec.id, layer=4)
    with pytest.raises(KeyError), reg.steer(model, vec.id, layer=0):
        raise KeyError("boom")
    assert no_hooks(model)


def open_steer_registry(reg: Registry, model: LoadedModel, vector: Any, **kwargs: Any) -> None:
    with reg.steer(model, vector, **kwargs):
        pass


def test_corpus_states_are_cached_per_model_not_per_config(
    reg: Registry, model_dirs: dict[str, Path], corpus_file: Path
) -> None:
    # Two models with byte-identical config.json but different weights (a base model and its
    # fine-tune look like this): their cached corpus states must not be shared.
    reg.register_model("a", str(model_dirs["llama"]))
    reg.register_model("b", str(model_dirs["twin"]))
    a, b = reg.get_model("a"), reg.get_model("b")
    assert a.config_sha256 == b.config_sha256
    lines, raw = load_corpus(corpus_file)
    oid = reg.store.put(raw)
    states_a = corpus_states(reg.workspace, a, lines, oid).tensor()
    states_b = corpus_states(reg.workspace, b, lines, oid).tensor()
    fresh_b = residual_states(reg.load_model(b), lines)
    torch.testing.assert_close(states_b, fresh_b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(states_a, states_b, atol=1e-2)
    # Cached: a second call reads the shards, with the same numbers.
    assert torch.equal(corpus_states(reg.workspace, b, lines, oid).tensor(), states_b)


def test_contrans_bad_input_registers_nothing(
    reg: Registry,
    model_dirs: dict[str, Path],
    corpus_file: Path,
    tmp_path: Path,
    tiny_model_dir: Path,
) -> None:
    _register_pair(reg, model_dirs)
    reg.register_model("other", str(model_dirs["twin"]))
    # Nothing extracted yet: transplanting says so.
    with pytest.raises(VectorNotFound, match="crx extract"):
        reg.transplant("joy", "src", "tgt")
    vec = reg.extract("joy", "src").record
    other_vec = reg.extract("joy", "other").record
    reg.fit("src", "tgt", corpus=corpus_file, pairs="1:2")
    before = counts(reg)

    # No map between these models (the only maps are src → tgt).
    with pytest.raises(NotFound, match="no map from src to other"):
        reg.transplant("joy", "src", "other")
    with pytest.raises(NotFound, match="no map from other to tgt"):
        reg.transplant("joy", "other", "tgt")
    # No map at that target layer, or a layer out of range.
    with pytest.raises(NotFound, match="at layer 0"):
        reg.transplant("joy", "src", "tgt", layer=0)
    for layer in (3, -1):
        with pytest.raises(InvalidInput, match="out of range"):
            reg.transplant("joy", "src", "tgt", layer=layer)
    # A source vector that is not the source model's.
    with pytest.raises(InvalidInput, match="is not a vector of joy"):
        reg.transplant("joy", "src", "tgt", vector_id=other_vec.id)
    # A map of the wrong shape for these models.
    with pytest.raises(TensorShapeError):
        reg.save_map("src", "tgt", 0, 0, np.zeros((32, 48), np.float32), None, solver="ridge")
    with pytest.raises(InvalidInput, match="out of range"):
        reg.save_map("src", "tgt", 4, 0, np.zeros((48, 32), np.float32), None, solver="ridge")
    # Fit: layer pairs out of range or malformed, a corpus too small or missing.
    for spec in ("4:0", "0:3", "x", "1-2"):
        with pytest.raises(InvalidInput):
            reg.fit("src", "tgt", corpus=corpus_file, pairs=spec)
    short = tmp_path / "short.txt"
    short.write_text("\n".join(CORPUS[:10]))
    with pytest.raises(InvalidInput, match="at least 20"):
        reg.fit("src", "tgt", corpus=short)
    with pytest.raises(InvalidInput, match="cannot read corpus"):
        reg.fit("src", "tgt", corpus=tmp_path / "missing.txt")
    # A vector of the wrong width for the model it steers.
    target = reg.load_model("tgt")
    with pytest.raises(InvalidInput, match=r"needs \[3, d_model\]"):
        open_steer(target.layers, reg.load_vector(vec.id), layer=1)
    with (
        pytest.raises(InvalidInput, match="32 dimensions, block 1 outputs 48"),
        steer(target.layers, reg.load_vector(vec.id)[1], layer=1),
    ):
        forward(target, ["the cat"])
    with pytest.raises(InvalidInput, match="belongs to src"):
        reg.generate("tgt", "the cat", vector_id=vec.id, alpha=1.0)
    with pytest.raises(InvalidInput, match="out of range"):
        reg.generate("src", "the cat", vector_id=vec.id, alpha=1.0, layer=4, max_new_tokens=2)
    with pytest.raises(InvalidInput, match="belongs to src"):
        reg.evaluate_emotion("happiness", "tgt", vector_id=vec.id, alphas=[1.0])
    assert no_hooks(target)
    assert counts(reg) == before

    # Models that fail to load: a folder without weights, a config broken after registering,
    # and a folder whose model no longer matches its registration.
    reg.register_model("weightless", str(tiny_model_dir))
    broken = tmp_path / "broken"
    shutil.copytree(model_dirs["llama"], broken)
    reg.register_model("broken", str(broken))
    (broken / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    swapped = tmp_path / "swapped"
    shutil.copytree(model_dirs["llama"], swapped)
    reg.register_model("swapped", str(swapped))
    shutil.rmtree(swapped)
    shutil.copytree(model_dirs["gpt2"], swapped)
    before = counts(reg)
    for name in ("weightless", "broken"):
        with pytest.raises(ModelLoadError, match=f"cannot load model {name}"):
            reg.extract("joy", name)
        with pytest.raises(ModelLoadError, match=f"cannot load model {name}"):
            reg.fit("src", name, corpus=corpus_file, pairs="1:0")
    with pytest.raises(InvalidInput, match="registered as 4 x 32"):
        reg.extract("joy", "swapped")
    assert counts(reg) == before
    assert json.loads((tiny_model_dir / "config.json").read_text())["hidden_size"] == 32


def test_evaluate_emotion_records_and_reuses(
    reg: Registry, model_dirs: dict[str, Path], llama: LoadedModel
) -> None:
    ids = label_token_ids(llama.tokenizer)
    assert len(set(ids)) == len(EMOTIONS)
    reg.register_model("src", str(model_dirs["llama"]))
    reg.register_concept("happiness", PAIRS)
    vec = reg.extract("happiness", "src").record
    base = reg.evaluate_emotion("happiness", "src", vector_id=None, alphas=[], holdout=0.05)
    assert {r.metric for r in base} == {"token_accuracy", "logit_accuracy"}
    assert all(r.vector_id is None and r.alpha is None and r.n for r in base)
    # Absolute α (normalize=False): the vector as stored, times α.
    steered = reg.evaluate_emotion(
        "happiness", "src", vector_id=vec.id, alphas=[0.0, 4.0], layer=1, holdout=0.05,
        normalize=False,
    )  # fmt: skip
    assert sorted((r.alpha, r.metric) for r in steered) == [
        (0.0, "logit_accuracy"),
        (0.0, "token_accuracy"),
        (4.0, "logit_accuracy"),
        (4.0, "token_accuracy"),
    ]
    assert all(r.layers == [1] and r.vector_id == vec.id for r in steered)
    assert all(r.settings["normalize"] is False for r in steered)
    assert all(r.settings["reference_norm"] is None for r in steered)
    base_values = {r.metric: r.value for r in base}
    assert {r.metric: r.value for r in steered if r.alpha == 0.0} == base_values

    # By hand: full passes over the held-out prompts, no prefix cache.
    loaded = reg.load_model("src")
    test = split_scenarios(load_scenarios("happiness"), 0.05).test
    assert {r.n for r in base + steered} == {len(test)}

    def by_hand() -> dict[str, float]:
        out = read_next_tokens(loaded, eval_prompts(test), ids, use_prefix_cache=False)
        return {
            "token_accuracy": (out.top1 == ids[0]).double().mean().item(),
            "logit_accuracy": (out.candidate_logits.argmax(dim=-1) == 0).double().mean().item(),
        }

    assert base_values == pytest.approx(by_hand())
    with steer(loaded.layers, reg.load_vector(vec.id), layer=1, alpha=4.0):
        expected = by_hand()
    assert {r.metric: r.value for r in steered if r.alpha == 4.0} == pytest.approx(expected)
    before = counts(reg)
    again = reg.evaluate_emotion(
        "happiness", "src", vector_id=vec.id, alphas=[0.0, 4.0], layer=1, holdout=0.05,
        normalize=False,
    )  # fmt: skip
    assert sorted(r.id for r in again) == sorted(r.id for r in steered)
    reread = reg.evaluate_emotion("happiness", "src", vector_id=None, alphas=[], holdout=0.05)
    assert sorted(r.id for r in reread) == sorted(r.id for r in base)
    assert counts(reg) == before
    with pytest.raises(InvalidInput, match="out of range"):
        reg.evaluate_emotion("happiness", "src", vector_id=vec.id, alphas=[1.0], layer=7)
    assert counts(reg) == before
    assert no_hooks(reg.load_model("src"))


def test_fit_again_reuses_identical_maps_unless_forced(
    reg: Registry, model_dirs: dict[str, Path], corpus_file: Path
) -> None:
    reg.register_model("src", str(model_dirs["llama"]))
    reg.register_model("tgt", str(model_dirs["gpt2"]))
    first = reg.fit("src", "tgt", corpus=corpus_file, pairs="auto")
    again = reg.fit("src", "tgt", corpus=corpus_file, pairs="auto")
    assert [m.id for m in again] == [m.id for m in first]
    explicit = reg.fit("src", "tgt", corpus=corpus_file, pairs="1:2")
    assert [(m.source_layer, m.target_layer) for m in explicit] == [(1, 2)]
    assert reg.fit("src", "tgt", corpus=corpus_file, pairs="1:2") == explicit
    forced = reg.fit("src", "tgt", corpus=corpus_file, pairs="1:2", force=True)
    assert [(m.source_layer, m.target_layer) for m in forced] == [(1, 2)]
    # The ridge default is float32 products; asking for float64 explicitly is another fit, not
    # served the float32 maps, while a fit that names no precision reuses either.
    assert {m.solver_settings["dtype"] for m in first} == {"float32"}
    exact = reg.fit("src", "tgt", corpus=corpus_file, pairs="auto", precision="float64")
    assert {m.id for m in exact}.isdisjoint(m.id for m in first)
    assert {m.solver_settings["dtype"] for m in exact} == {"float64"}
    for a, b in zip(exact, first, strict=True):
        assert a.target_layer == b.target_layer
        assert a.r2 == pytest.approx(b.r2, abs=1e-4)
    again64 = reg.fit("src", "tgt", corpus=corpus_file, pairs="auto", precision="float64")
    assert [m.id for m in again64] == [m.id for m in exact]
    assert len(reg.fit("src", "tgt", corpus=corpus_file, pairs="auto")) == len(first)
    before = counts(reg)
    with pytest.raises(InvalidInput, match="ridge solver only"):
        reg.fit("src", "tgt", corpus=corpus_file, solver="lstsq-svd", precision="float32")
    assert counts(reg) == before
