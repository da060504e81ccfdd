"""Registering models through the `Registry` facade: facts read from a transformers folder or
a GGUF file, audited updates, and shape changes refused for a model in use.


Every refusal is checked twice: the right error, and a registry left exactly as it was. Each
test runs on both real databases (a SQLite file, a PostgreSQL server) through the `registry`
fixture.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from crx.registry import Registry
from crx.registry.errors import InvalidInput
from crx.registry.models.facts import tokenizer_sha256
from tests.registry_world import _events, _model_folder, _snapshot, _vector


def _set_layers(folder: Path, n_layers: int) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = n_layers
    (folder / "config.json").write_text(json.dumps(config))


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
