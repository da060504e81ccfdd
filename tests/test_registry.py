"""The `Registry` facade on both real databases (SQLite file, PostgreSQL server).

Every refusal is checked twice: the right error, and a registry left exactly as it was.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from crx.registry import Registry
from crx.registry.errors import (
    AlreadyExists,
    BlobCorrupt,
    BlobMissing,
    ConceptNotFound,
    InvalidInput,
    InvalidName,
    ModelNotFound,
    PairsFileError,
    StoreUnavailable,
    TensorShapeError,
    VectorNotFound,
)
from crx.registry.modelinfo import tokenizer_sha256
from crx.registry.pairs import ContrastPair
from tests.servers import free_port

N_LAYERS, D_MODEL = 4, 32  # tiny_model_dir's shape

TRICKY_PAIRS = [
    ContrastPair("I feel wonderful, truly", 'She said "awful", then left'),
    ContrastPair("Café au lait ☕ — délicieux", "Кофе остыл"),
    ContrastPair("  leading and trailing spaces  ", "tab\tinside"),
    ContrastPair("line one\nline two", "emoji 😞 only"),
]


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


def _set_layers(folder: Path, n_layers: int) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = n_layers
    (folder / "config.json").write_text(json.dumps(config))


def _vector(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((N_LAYERS, D_MODEL)).astype(np.float32)


def _write_gguf(path: Path, *, block_count: int | None = 6, width: int = 48) -> None:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    if block_count is not None:
        writer.add_block_count(block_count)
    writer.add_embedding_length(width)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>", "▁hello", "▁world", "!"])
    writer.add_tensor("token_embd.weight", np.ones((6, width), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def tiny(registry: Registry, tiny_model_dir: Path) -> str:
    registry.register_model("tiny", str(tiny_model_dir))
    return "tiny"


@pytest.fixture
def joy(registry: Registry, pairs_file: Path) -> str:
    return registry.register_concept("joy", pairs_file).record.ref


# -- models --------------------------------------------------------------------------------


def test_register_model_from_folder_reads_config_facts(
    registry: Registry, tiny_model_dir: Path
) -> None:
    result = registry.register_model(
        "tiny", str(tiny_model_dir), family="llama", role="base", tags={"size": "tiny"}
    )
    model = result.record
    assert result.created
    assert (model.n_layers, model.d_model, model.vocab_size) == (4, 32, 100)
    assert model.architecture == "LlamaForCausalLM"
    assert model.model_type == "llama"
    assert model.path == str(tiny_model_dir.resolve())
    assert model.gguf_file is None
    assert model.weights_sha256 is None
    config_bytes = (tiny_model_dir / "config.json").read_bytes()
    assert model.config_sha256 == hashlib.sha256(config_bytes).hexdigest()
    assert model.tokenizer_sha256 is not None
    assert model.tokenizer_sha256 == tokenizer_sha256(tiny_model_dir)
    assert (model.family, model.role, model.tags) == ("llama", "base", {"size": "tiny"})
    assert registry.get_model("tiny") == model
    assert registry.get_model(model.id) == model

    events = len(_events(registry))
    again = registry.register_model(
        "tiny", str(tiny_model_dir), family="llama", role="base", tags={"size": "tiny"}
    )
    assert not again.created
    assert again.record == model
    assert len(_events(registry)) == events

    # A changed tokenizer file changes the recorded tokenizer hash (an audited update).
    (tiny_model_dir / "tokenizer.json").write_text('{"version": "2.0"}')
    updated = registry.register_model(
        "tiny", str(tiny_model_dir), family="llama", role="base", tags={"size": "tiny"}
    )
    assert not updated.created
    assert updated.record.id == model.id
    assert updated.record.tokenizer_sha256 not in (None, model.tokenizer_sha256)
    last = _events(registry)[-1]
    assert (last.action, last.object_kind, last.object_ref) == ("update", "model", "tiny")
    assert last.old == {"tokenizer_sha256": model.tokenizer_sha256}
    assert last.new == {"tokenizer_sha256": updated.record.tokenizer_sha256}


def test_model_without_tokenizer_files_has_no_tokenizer_hash(
    registry: Registry, tmp_path: Path
) -> None:
    folder = _model_folder(tmp_path, "bare", 2, 16)
    model = registry.register_model("bare", str(folder)).record
    assert model.tokenizer_sha256 is None
    assert (model.n_layers, model.d_model, model.vocab_size) == (2, 16, 50)


def test_register_model_from_gguf(registry: Registry, tmp_path: Path) -> None:
    folder = tmp_path / "gguf-model"
    folder.mkdir()
    path = folder / "tiny-q8.gguf"
    _write_gguf(path)
    expected_sha = hashlib.sha256(path.read_bytes()).hexdigest()

    by_file = registry.register_model("g1", str(path)).record
    by_folder = registry.register_model("g2", str(folder), gguf_file=path.name).record
    for model in (by_file, by_folder):
        assert (model.n_layers, model.d_model, model.vocab_size) == (6, 48, 6)
        assert model.architecture == "gguf:llama"
        assert model.model_type == "llama"
        assert model.gguf_file == "tiny-q8.gguf"
        assert model.path == str(folder.resolve())
        assert model.weights_sha256 == expected_sha
        assert model.config_sha256 is None
    assert not registry.register_model("g1", str(path)).created


def test_gguf_without_block_count_is_refused(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "broken.gguf"
    _write_gguf(path, block_count=None)
    before = _snapshot(registry)
    with pytest.raises(InvalidInput, match="block count"):
        registry.register_model("broken", str(path))
    (tmp_path / "notgguf.gguf").write_bytes(b"GGUF but not really")
    with pytest.raises(InvalidInput, match="GGUF"):
        registry.register_model("broken", str(tmp_path / "notgguf.gguf"))
    with pytest.raises(InvalidInput, match="does not exist"):
        registry.register_model("broken", str(tmp_path / "absent"))
    with pytest.raises(InvalidInput, match="role"):
        registry.register_model("broken", str(path), role="chatty")
    assert _snapshot(registry) == before


def test_shape_change_is_refused_for_a_model_in_use(
    registry: Registry, tiny_model_dir: Path, tmp_path: Path, joy: str
) -> None:
    registry.register_model("tiny", str(tiny_model_dir))
    registry.save_vector(joy, "tiny", _vector(0), origin="extracted")
    _set_layers(tiny_model_dir, 6)
    before = _snapshot(registry)
    with pytest.raises(InvalidInput, match="another name"):
        registry.register_model("tiny", str(tiny_model_dir))
    assert _snapshot(registry) == before
    assert registry.get_model("tiny").n_layers == 4

    # A model only used by a map is in use too.
    src = _model_folder(tmp_path, "src", 2, 8)
    dst = _model_folder(tmp_path, "dst", 2, 8)
    registry.register_model("src", str(src))
    registry.register_model("dst", str(dst))
    registry.save_map("src", "dst", 0, 1, np.eye(8, dtype=np.float32), None, solver="ridge")
    _set_layers(dst, 3)
    with pytest.raises(InvalidInput, match="another name"):
        registry.register_model("dst", str(dst))

    # A model nothing uses may change shape.
    free = _model_folder(tmp_path, "free", 2, 8)
    registry.register_model("free", str(free))
    _set_layers(free, 5)
    changed = registry.register_model("free", str(free))
    assert not changed.created
    assert changed.record.n_layers == 5


# -- concepts ------------------------------------------------------------------------------


def test_concept_versions_count_up_and_identical_content_is_a_no_op(
    registry: Registry,
) -> None:
    first = registry.register_concept("joy", _pairs("a"), description="happiness")
    second = registry.register_concept("joy", _pairs("b"))
    third = registry.register_concept("joy", _pairs("c"))
    assert [r.created for r in (first, second, third)] == [True, True, True]
    assert [r.record.version for r in (first, second, third)] == [1, 2, 3]
    assert [r.record.ref for r in (first, second, third)] == ["joy@1", "joy@2", "joy@3"]
    assert len({r.record.pairs_oid for r in (first, second, third)}) == 3

    again = registry.register_concept("joy", _pairs("a"))
    assert not again.created
    assert again.record == first.record

    # Same pairs with another template or extraction recipe is new content.
    templated = registry.register_concept("joy", _pairs("a"), template="Q: {text}\nA:")
    assert templated.created
    assert templated.record.version == 4
    assert templated.record.pairs_oid == first.record.pairs_oid
    recipe = registry.register_concept("joy", _pairs("a"), extraction={"method": "pca"})
    assert recipe.created
    assert recipe.record.version == 5
    assert recipe.record.extraction["method"] == "pca"

    assert [v.version for v in registry.concept_versions("joy")] == [1, 2, 3, 4, 5]
    listed = registry.list_concepts().items
    assert [(c.name, c.versions, c.latest_version) for c in listed] == [("joy", [1, 2, 3, 4, 5], 5)]
    assert listed[0].description == "happiness"


def _write_all_formats(folder: Path, pairs: list[ContrastPair]) -> list[Path]:
    as_list = folder / "pairs.json"
    as_list.write_text(
        json.dumps([{"positive": p.positive, "negative": p.negative} for p in pairs])
    )
    contrans = folder / "contrans.json"
    contrans.write_text(
        json.dumps({"pos": [p.positive for p in pairs], "neg": [p.negative for p in pairs]})
    )
    jsonl = folder / "pairs.jsonl"
    jsonl.write_text(
        "\n".join(
            json.dumps({"positive": p.positive, "negative": p.negative}, ensure_ascii=False)
            for p in pairs
        )
        + "\n\n"
    )
    as_csv = folder / "pairs.csv"
    with as_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["positive", "negative"])
        writer.writerows([p.positive, p.negative] for p in pairs)
    return [as_list, contrans, jsonl, as_csv]


def test_all_pair_formats_give_the_same_pairs_oid(registry: Registry, tmp_path: Path) -> None:
    files = _write_all_formats(tmp_path, TRICKY_PAIRS)
    results = [registry.register_concept("feel", path) for path in files]
    assert [r.created for r in results] == [True, False, False, False]
    assert {r.record.ref for r in results} == {"feel@1"}
    assert len({r.record.pairs_oid for r in results}) == 1
    assert results[0].record.n_pairs == len(TRICKY_PAIRS)
    assert registry.load_pairs("feel") == TRICKY_PAIRS
    assert registry.load_pairs("feel@1") == TRICKY_PAIRS
    # The blob is canonical JSON of exactly those pairs.
    stored = json.loads(registry.store.get(results[0].record.pairs_oid))
    assert stored == {
        "pairs": [{"positive": p.positive, "negative": p.negative} for p in TRICKY_PAIRS]
    }


def test_name_and_version_resolution(registry: Registry) -> None:
    registry.register_concept("joy", _pairs("a"))
    registry.register_concept("joy", _pairs("b"))
    assert registry.get_concept("joy").version == 2
    assert registry.get_concept("joy@1").version == 1
    assert registry.get_concept("joy@2").pairs_oid != registry.get_concept("joy@1").pairs_oid
    assert registry.load_pairs("joy@1") == _pairs("a")
    assert registry.load_pairs("joy") == _pairs("b")
    with pytest.raises(ConceptNotFound, match="joy@3"):
        registry.get_concept("joy@3")
    with pytest.raises(ConceptNotFound, match="sorrow"):
        registry.get_concept("sorrow")
    for bad in ("joy@0", "joy@x", "joy@", "joy@-1", "joy@1.0"):
        with pytest.raises(InvalidInput, match="invalid version"):
            registry.get_concept(bad)
    with pytest.raises(ModelNotFound):
        registry.get_model("nope")


BAD_NAMES = [
    "a/b",
    "../etc",
    "a..b",
    "bell\x07",
    "tab\tname",
    "new\nline",
    "a@b",
    "",
    " pad",
    "a\\b",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_invalid_names_are_refused_and_change_nothing(
    registry: Registry, tiny_model_dir: Path, pairs_file: Path, name: str
) -> None:
    registry.register_model("tiny", str(tiny_model_dir))
    registry.register_concept("joy", pairs_file)
    before = _snapshot(registry)
    with pytest.raises(InvalidName):
        registry.register_concept(name, pairs_file)
    with pytest.raises(InvalidName):
        registry.register_concept(name, _pairs("fresh"))
    with pytest.raises(InvalidName):
        registry.register_model(name, str(tiny_model_dir))
    assert _snapshot(registry) == before


def test_bad_pairs_files_are_refused_and_change_nothing(registry: Registry, tmp_path: Path) -> None:
    registry.register_concept("joy", _pairs("a"))
    before = _snapshot(registry)
    files = {
        "empty.json": "[]",
        "blank.json": "",
        "no_negative.json": '[{"positive": "x"}]',
        "blank_negative.json": '[{"positive": "x", "negative": "   "}]',
        "broken.json": '[{"positive": "x", "negative": "y"',
        "mismatch.json": '{"pos": ["a", "b"], "neg": ["c"]}',
        "scalar.json": "42",
        "columns.csv": "good,bad\nx,y\n",
        "header_only.csv": "positive,negative\n",
        "bad_line.jsonl": '{"positive": "x", "negative": "y"}\nnot json\n',
    }
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    (tmp_path / "latin1.json").write_bytes(b'[{"positive": "caf\xe9", "negative": "x"}]')
    for path in [*(tmp_path / n for n in files), tmp_path / "latin1.json", tmp_path / "absent"]:
        with pytest.raises(PairsFileError) as caught:
            registry.register_concept("joy", path)
        assert str(path) in str(caught.value)
    with pytest.raises(InvalidInput, match="no contrast pairs"):
        registry.register_concept("joy", [])
    with pytest.raises(InvalidInput, match=r"\{text\}"):
        registry.register_concept("joy", _pairs("b"), template="no placeholder")
    assert _snapshot(registry) == before


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
    assert one.settings == {"file": "whole.safetensors", "source_dtype": "float32"}
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
    with pytest.raises(InvalidInput, match="not a valid safetensors"):
        registry.register_vector(joy, "tiny", tmp_path / "garbage.safetensors")
    with pytest.raises(InvalidInput, match="cannot read"):
        registry.register_vector(joy, "tiny", tmp_path / "absent.safetensors")
    assert _snapshot(registry) == before


def test_vector_identity_conflict_needs_replace(registry: Registry, tiny: str, joy: str) -> None:
    first, other = _vector(4), _vector(5)
    created = registry.save_vector(joy, tiny, first, origin="extracted")
    assert created.created
    same = registry.save_vector(joy, tiny, first, origin="extracted")
    assert not same.created
    assert same.record.id == created.record.id

    before = _snapshot(registry, with_store=False)
    with pytest.raises(AlreadyExists, match="replace"):
        registry.save_vector(joy, tiny, other, origin="extracted")
    assert _snapshot(registry, with_store=False) == before
    np.testing.assert_array_equal(registry.load_vector(created.record.id), first)

    replaced = registry.save_vector(joy, tiny, other, origin="extracted", replace=True)
    assert not replaced.created
    assert replaced.record.id == created.record.id
    assert replaced.record.oid != created.record.oid
    np.testing.assert_array_equal(registry.load_vector(created.record.id), other)
    last = _events(registry)[-1]
    assert (last.action, last.object_kind, last.object_id) == (
        "replace",
        "vector",
        created.record.id,
    )
    assert last.old["oid"] == created.record.oid
    assert last.new["oid"] == replaced.record.oid
    # A different identity (another estimator) is a new vector, not a conflict.
    sibling = registry.save_vector(joy, tiny, first, origin="extracted", estimator="pca")
    assert sibling.created
    assert sibling.record.id != created.record.id
    assert len(registry.list_vectors(limit=None).items) == 2


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


# -- listing -------------------------------------------------------------------------------


def test_paging_gives_every_item_once_in_order(registry: Registry, tmp_path: Path) -> None:
    names = [f"model-{i:02d}" for i in range(25)]
    for i, name in enumerate(names):
        registry.register_model(name, str(_model_folder(tmp_path, name, 2 + i % 3, 8)))

    seen: list[str] = []
    sizes: list[int] = []
    after = None
    while True:
        page = registry.list_models(limit=10, after=after)
        seen += [m.name for m in page.items]
        sizes.append(len(page.items))
        if page.next_after is None:
            break
        assert page.next_after == page.items[-1].id
        after = page.next_after
        if len(seen) == 10:  # a model registered mid-listing shows up once, at the end
            registry.register_model("late", str(_model_folder(tmp_path, "late", 2, 8)))
    assert sizes == [10, 10, 6]
    assert seen == [*names, "late"]
    assert [m.name for m in registry.list_models(limit=None).items] == seen
    exact = registry.list_models(limit=13)
    assert len(exact.items) == 13
    assert exact.next_after is not None
    tail = registry.list_models(limit=13, after=exact.next_after)
    assert len(tail.items) == 13
    assert tail.next_after is None
    assert registry.list_models(limit=5, after=10**9).items == []


# -- audit ---------------------------------------------------------------------------------


def test_every_mutating_call_writes_exactly_one_audit_event(
    registry: Registry, tiny_model_dir: Path, tmp_path: Path
) -> None:
    def expect(call: Any, *wanted: tuple[str, str]) -> Any:
        before = _events(registry)
        result = call()
        after = _events(registry)
        new = after[len(before) :]
        assert after[: len(before)] == before  # append-only
        assert [(e.action, e.object_kind) for e in new] == list(wanted)
        assert all(e.actor == "tester" for e in new)
        return result

    wide = _model_folder(tmp_path, "wide", 4, 32)
    expect(lambda: registry.register_model("tiny", str(tiny_model_dir)), ("register", "model"))
    expect(lambda: registry.register_model("tiny", str(tiny_model_dir)))
    expect(
        lambda: registry.register_model("tiny", str(tiny_model_dir), family="llama"),
        ("update", "model"),
    )
    expect(lambda: registry.register_model("wide", str(wide)), ("register", "model"))
    joy = expect(
        lambda: registry.register_concept("joy", _pairs("a"), description="d1"),
        ("register", "concept_version"),
    ).record
    expect(lambda: registry.register_concept("joy", _pairs("a")))
    expect(
        lambda: registry.register_concept("joy", _pairs("a"), description="d2"),
        ("update", "concept"),
    )
    expect(
        lambda: registry.register_concept("joy", _pairs("b"), description="d3"),
        ("register", "concept_version"),
    )
    vector = expect(
        lambda: registry.save_vector(joy.ref, "tiny", _vector(8), origin="extracted"),
        ("register", "vector"),
    ).record
    expect(lambda: registry.save_vector(joy.ref, "tiny", _vector(8), origin="extracted"))
    expect(
        lambda: registry.save_vector(joy.ref, "tiny", _vector(9), origin="extracted", replace=True),
        ("replace", "vector"),
    )
    eye = np.eye(32, dtype=np.float32)
    expect(
        lambda: registry.save_map("tiny", "wide", 0, 0, eye, None, solver="ridge"),
        ("register", "map"),
    )
    expect(lambda: registry.save_map("tiny", "wide", 0, 0, eye, None, solver="ridge"))
    expect(
        lambda: registry.save_map("tiny", "wide", 0, 0, 2 * eye, None, solver="ridge"),
        ("replace", "map"),
    )
    expect(
        lambda: registry.record_evaluation(
            "tiny", "t", {"a": 1.0, "b": 2.0, "c": 3.0}, vector_id=vector.id
        ),
        ("record", "evaluation"),
    )
    # Refused calls write nothing.
    for refused in (
        lambda: registry.register_concept("bad/name", _pairs("x")),
        lambda: registry.save_vector(joy.ref, "tiny", _vector(10), origin="extracted"),
        lambda: registry.save_vector(joy.ref, "tiny", np.ones((2, 2)), origin="extracted"),
    ):
        with pytest.raises((InvalidInput, AlreadyExists)):
            expect(refused)

    events = _events(registry)
    first_version = next(e for e in events if e.object_ref == "joy@1")
    assert first_version.new["description"] == "d1"
    assert first_version.old is None
    second_version = next(e for e in events if e.object_ref == "joy@2")
    assert second_version.old == {"description": "d2"}
    assert second_version.new["description"] == "d3"
    assert registry.list_concepts().items[0].description == "d3"


# -- store maintenance ---------------------------------------------------------------------


def _blob_path(registry: Registry, oid: str) -> Path:
    return Path(registry.store.path(oid))


def _corrupt(registry: Registry, oid: str) -> None:
    path = _blob_path(registry, oid)
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[:-1] + b"!")


def _age(registry: Registry, oid: str, seconds: float) -> None:
    stamp = time.time() - seconds
    os.utime(_blob_path(registry, oid), (stamp, stamp))


def test_verify_store_names_the_rows_of_missing_and_corrupt_blobs(
    registry: Registry, tiny: str, tmp_path: Path
) -> None:
    joy = registry.register_concept("joy", _pairs("joy")).record
    calm = registry.register_concept("calm", _pairs("calm")).record
    shared = _vector(11)
    v1 = registry.save_vector(joy.ref, tiny, shared, origin="extracted").record
    v2 = registry.save_vector(calm.ref, tiny, shared, origin="extracted").record
    assert v1.oid == v2.oid
    map_record = registry.save_map(
        tiny, tiny, 0, 1, np.eye(32, dtype=np.float32), None, solver="ridge"
    ).record

    clean = registry.verify_store()
    assert (clean.checked, clean.ok, clean.problems, clean.unreferenced) == (4, 4, [], 0)

    _blob_path(registry, v1.oid).unlink()
    _corrupt(registry, joy.pairs_oid)
    report = registry.verify_store()
    assert (report.checked, report.ok, report.unreferenced) == (4, 2, 0)
    problems = {p.oid: p for p in report.problems}
    assert set(problems) == {v1.oid, joy.pairs_oid}
    assert problems[v1.oid].status == "missing"
    assert problems[v1.oid].referenced_by == sorted([f"vector {v1.id}", f"vector {v2.id}"])
    assert problems[joy.pairs_oid].status == "corrupt"
    assert problems[joy.pairs_oid].referenced_by == ["concept joy@1 (pairs)"]
    assert map_record.oid not in problems
    assert calm.pairs_oid not in problems

    with pytest.raises(BlobMissing):
        registry.load_vector(v2.id)
    with pytest.raises(BlobCorrupt):
        registry.load_pairs("joy@1")
    assert registry.load_pairs("calm") == _pairs("calm")


def test_gc_removes_only_unreferenced_old_blobs(registry: Registry, tiny: str, joy: str) -> None:
    vector = registry.save_vector(joy, tiny, _vector(12), origin="extracted").record
    corpus = registry.store.put(b"calibration corpus")
    dataset = registry.store.put(b"evaluation dataset")
    registry.save_map(
        tiny, tiny, 0, 0, np.eye(32, dtype=np.float32), None, solver="ridge", corpus_oid=corpus
    )
    registry.record_evaluation(tiny, "t", {"a": 1.0}, dataset_oid=dataset)
    referenced = set(registry.store.iter_oids())
    old_orphan = registry.store.put(b"left by a crashed register")
    young_orphan = registry.store.put(b"put a moment ago by a register in flight")
    for oid in (*referenced, old_orphan):
        _age(registry, oid, 3600)

    assert registry.verify_store().unreferenced == 2
    listed = registry.gc_store()
    assert listed.deleted is False
    assert listed.unreferenced == [old_orphan]
    everything = sorted(referenced | {old_orphan, young_orphan})
    assert sorted(registry.store.iter_oids()) == everything
    no_grace = registry.gc_store(dry_run=True, grace_seconds=0)
    assert sorted(no_grace.unreferenced) == sorted([old_orphan, young_orphan])
    assert sorted(registry.store.iter_oids()) == everything

    # Deleting with the default grace keeps the young blob.
    kept = registry.gc_store(dry_run=False)
    assert kept.deleted
    assert kept.unreferenced == [old_orphan]
    assert sorted(registry.store.iter_oids()) == sorted(referenced | {young_orphan})

    swept = registry.gc_store(dry_run=False, grace_seconds=0)
    assert swept.unreferenced == [young_orphan]
    assert sorted(registry.store.iter_oids()) == sorted(referenced)
    assert {corpus, dataset, vector.oid} <= set(registry.store.iter_oids())
    report = registry.verify_store()
    assert report.problems == []
    assert report.unreferenced == 0
    assert registry.gc_store(dry_run=False, grace_seconds=0).unreferenced == []


# -- the registry over every store backend -------------------------------------------------


def test_registry_works_over_every_store_backend(
    db_url: str, store_url: str, tiny_model_dir: Path, pairs_file: Path
) -> None:
    with Registry(db_url, store_url) as registry:
        registry.init()
        registry.register_model("tiny", str(tiny_model_dir))
        joy = registry.register_concept("joy", pairs_file).record
        array = _vector(13)
        vector = registry.save_vector(joy.ref, "tiny", array, origin="extracted").record
        np.testing.assert_array_equal(registry.load_vector(vector.id), array)
        orphan = registry.store.put(b"orphan")
        assert registry.verify_store().problems == []
        assert registry.gc_store(dry_run=True, grace_seconds=0).unreferenced == [orphan]
        assert registry.gc_store(dry_run=False).unreferenced == []  # too young to take
        assert registry.gc_store(dry_run=False, grace_seconds=0).unreferenced == [orphan]
        assert sorted(registry.store.iter_oids()) == sorted([joy.pairs_oid, vector.oid])

        if registry.store.is_local:
            os.chmod(registry.store.path(vector.oid), 0o644)
        registry.store.fs.pipe_file(registry.store.path(vector.oid), b"garbage")
        problems = registry.verify_store().problems
        assert [(p.oid, p.status, p.referenced_by) for p in problems] == [
            (vector.oid, "corrupt", [f"vector {vector.id}"])
        ]


def test_unreachable_bucket_fails_cleanly_and_writes_no_rows(
    db_url: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Registry(db_url, str(tmp_path / "unused")) as setup:
        setup.register_model("tiny", str(tiny_model_dir))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with Registry(db_url, "s3://crx-nowhere/store") as registry:
        before = _snapshot(registry, with_store=False)
        with pytest.raises(StoreUnavailable, match="s3://crx-nowhere/store"):
            registry.register_concept("joy", _pairs("a"))
        with pytest.raises(StoreUnavailable):
            registry.verify_store()
        assert _snapshot(registry, with_store=False) == before
