"""Layer discovery and model loading: the decoder blocks of each known architecture, the
override for unknown ones, and every way a model folder can fail to load.

The architectures are built in memory from small configs; the saved tiny models come from
`tests.tiny_models`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from crx.registry.engine.layers import KNOWN_LAYER_PATHS, find_layers
from crx.registry.engine.loading import LoadedModel, ModelLoadError, load_model
from crx.registry.errors import CrxError, InvalidInput


def _tiny_in_memory(kind: str) -> tuple[Any, Any]:
    """(model, its expected block list) for an architecture, built from a config."""
    import transformers as tf

    torch.manual_seed(0)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4}
    if kind == "llama":
        cfg = tf.LlamaConfig(vocab_size=64, num_hidden_layers=2, num_key_value_heads=2, **small)
        model = tf.LlamaForCausalLM(cfg)
        return model, model.model.layers
    if kind == "qwen2":
        cfg = tf.Qwen2Config(vocab_size=64, num_hidden_layers=3, num_key_value_heads=2, **small)
        model = tf.Qwen2ForCausalLM(cfg)
        return model, model.model.layers
    if kind == "gemma3_text":
        cfg = tf.Gemma3TextConfig(
            vocab_size=64, num_hidden_layers=2, num_key_value_heads=1, head_dim=8, **small
        )
        model = tf.Gemma3ForCausalLM(cfg)
        return model, model.model.layers
    cfg = tf.GPT2Config(vocab_size=64, n_layer=3, n_embd=32, n_head=4, n_positions=32)
    model = tf.GPT2LMHeadModel(cfg)
    return model, model.transformer.h


@pytest.mark.parametrize(
    ("kind", "n_layers"), [("llama", 2), ("qwen2", 3), ("gemma3_text", 2), ("gpt2", 3)]
)
def test_find_layers_known_architectures(kind: str, n_layers: int) -> None:
    model, expected = _tiny_in_memory(kind)
    assert model.config.model_type == kind
    found = find_layers(model)
    assert found is expected
    assert len(found) == n_layers


def test_find_layers_unknown_architecture_needs_the_override() -> None:
    class Custom(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = torch.nn.Module()
            self.trunk.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(5))
            self.trunk.head = torch.nn.Linear(4, 4)

    model = Custom()
    with pytest.raises(InvalidInput, match="override") as caught:
        find_layers(model)
    assert "Custom" in str(caught.value)
    assert all(path in str(caught.value) for path in KNOWN_LAYER_PATHS)
    assert find_layers(model, override="trunk.blocks") is model.trunk.blocks
    for bad in ("trunk.missing", "trunk.head", "trunk"):
        with pytest.raises(InvalidInput, match="not a list of decoder blocks"):
            find_layers(model, override=bad)
    # An override also wins over the known paths of a known architecture.
    llama_model, _ = _tiny_in_memory("llama")
    assert find_layers(llama_model, override="model.layers") is llama_model.model.layers


def test_load_model_from_saved_folders(llama: LoadedModel, gpt2: LoadedModel) -> None:
    assert (llama.n_layers, llama.d_model, llama.name) == (4, 32, "llama")
    assert (gpt2.n_layers, gpt2.d_model) == (3, 48)
    assert llama.layers is llama.model.model.layers
    assert gpt2.layers is gpt2.model.transformer.h
    assert not llama.model.training
    assert llama.model.dtype == torch.float32
    assert llama.tokenizer.pad_token == "<pad>"
    assert llama.tokenizer("ok")["input_ids"][0] == llama.tokenizer.bos_token_id == 1


def test_load_model_failures_are_model_load_errors(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(model_dirs["llama"], broken)
    (broken / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    with pytest.raises(ModelLoadError, match="cannot load model broken-one") as caught:
        load_model(str(broken), name="broken-one")
    assert isinstance(caught.value, CrxError)
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ModelLoadError):
        load_model(str(broken))
    no_weights = tmp_path / "no-weights"
    shutil.copytree(model_dirs["llama"], no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError):
        load_model(str(no_weights))
    with pytest.raises(ModelLoadError):
        load_model(str(tmp_path / "does-not-exist"))
