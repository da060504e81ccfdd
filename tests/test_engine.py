"""The ConTrans engine and its registry workflows, on tiny random-weight models (no download).

The models are built here from configs (Llama 4 x 32, GPT-2 3 x 48, and a Llama twin with the
same config but other weights), with a byte-level BPE tokenizer trained on a few sentences,
and saved with ``save_pretrained`` so crx's own loader and ``Registry.register_model`` read them
like any model folder. Every assertion is an exact number or a float tolerance.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from crx.registry import Registry, contrans
from crx.registry.config import crx_home
from crx.registry.engine.capture import residual_states
from crx.registry.engine.emotion import (
    EMOTIONS,
    eval_prompts,
    label_token_ids,
    load_scenarios,
    six_shot_prefix,
    split_scenarios,
)
from crx.registry.engine.extract import extract_vector, pca_direction
from crx.registry.engine.layers import KNOWN_LAYER_PATHS, block_output, find_layers
from crx.registry.engine.loading import LoadedModel, ModelLoadError, load_model
from crx.registry.engine.prompts import read_next_tokens
from crx.registry.engine.steer import residual_norm, steer
from crx.registry.errors import (
    CrxError,
    InvalidInput,
    NotFound,
    TensorShapeError,
    VectorNotFound,
)
from crx.registry.pairs import ContrastPair

# 48 neutral lines: the calibration corpus of the fit tests (and tokenizer training text).
CORPUS = [
    "The river runs past the old mill and into the valley below.",
    "She opened the window to let the morning air into the kitchen.",
    "A small boat was tied to the wooden post near the shore.",
    "The library closes at six on weekdays and at noon on Saturdays.",
    "He painted the fence white before the summer rains began.",
    "Three students waited outside the office for their results.",
    "The train to the coast leaves from the second platform.",
    "Fresh bread was sold at the market every Tuesday morning.",
    "The committee met twice before the final report was written.",
    "Snow covered the hills for most of the long winter.",
    "The museum keeps a collection of maps from the last century.",
    "They planted tomatoes, beans and peppers in the back garden.",
    "The bridge was rebuilt after the flood damaged its pillars.",
    "A tall lighthouse stands at the end of the northern pier.",
    "The recipe calls for two eggs, flour and a cup of milk.",
    "Our neighbours moved to a smaller house across the town.",
    "The orchestra tuned their instruments before the concert.",
    "Most of the village works on the farms around the lake.",
    "The road climbs slowly through the forest to the pass.",
    "He kept his notes in a green folder on the top shelf.",
    "The factory produced bicycles and spare parts for decades.",
    "A narrow path leads from the church to the school.",
    "The city council approved the budget for the new park.",
    "Rain fell steadily through the night and into the afternoon.",
    "The old clock in the hall stopped at a quarter past nine.",
    "She wrote a letter to her brother who lives abroad.",
    "The ferry crosses the bay four times a day in summer.",
    "Workers repaired the roof of the station last spring.",
    "The garden has a pond with fish and a few water lilies.",
    "Two cats slept on the warm stones beside the door.",
    "The company opened a second office in the capital.",
    "He learned to play the piano when he was seven years old.",
    "The market square fills with stalls on the first Sunday.",
    "A gentle wind moved the curtains in the empty room.",
    "The team trained on the field behind the sports hall.",
    "Farmers brought their sheep down from the high pastures.",
    "The castle walls were built from grey stone and lime.",
    "Children played in the snow until the lamps were lit.",
    "The newspaper printed the election results on Monday.",
    "A wooden bench stands under the oak tree by the gate.",
    "The bakery on the corner sells cakes and small pies.",
    "The scientists measured the temperature of the lake each hour.",
    "Her grandmother grew roses along the front of the house.",
    "The bus was late because of the roadworks in the centre.",
    "The hikers reached the hut just before the storm arrived.",
    "The teacher handed out the books at the start of the lesson.",
    "A map of the island hangs on the wall of the harbour office.",
    "The workshop repairs old radios and gramophones by hand.",
]
PAIRS = [
    ContrastPair("I feel wonderful and happy today", "I feel awful and sad today"),
    ContrastPair("What a joyful party with friends", "What a gloomy funeral in the rain"),
    ContrastPair("We laughed all the way home", "We cried all the way home"),
    ContrastPair("The sun is shining and I am glad", "The sky is grey and I am miserable"),
    ContrastPair("My friends threw me a great surprise", "My friends forgot about me again"),
    ContrastPair("I won the prize", "I lost everything I had"),
]
TEXTS = [
    "the cat sat",
    "a dog ran in the park after the red ball",
    "I feel wonderful today",
    "Rain fell steadily through the night and into the afternoon of a long day",
    "ok",
    "The ferry crosses the bay",
    "Two cats slept on the warm stones beside the door, and then they woke up",
    "We laughed",
    "The castle walls were built from grey stone and lime",
    "Snow covered the hills",
]
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]


# -- tiny models ------------------------------------------------------------------------------


def _train_tokenizer() -> Any:
    """A byte-level BPE (any text encodes) whose vocabulary holds each emotion word whole."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    words = " ".join(" " + e for e in EMOTIONS)
    texts = CORPUS + TEXTS + [six_shot_prefix()] + [p.positive for p in PAIRS] + [words] * 40
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def _llama_config(vocab: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def _gpt2_config(vocab: int) -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab,
        n_layer=3,
        n_embd=48,
        n_head=4,
        n_positions=1024,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Saved model folders: ``llama`` (4 x 32), ``twin`` (same config, other weights), ``gpt2``
    (3 x 48), all sharing one tokenizer."""
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    root = tmp_path_factory.mktemp("tiny-models")
    tokenizer = _train_tokenizer()
    dirs = {}
    for name, seed, build in (
        ("llama", 0, lambda: LlamaForCausalLM(_llama_config(len(tokenizer)))),
        ("twin", 1, lambda: LlamaForCausalLM(_llama_config(len(tokenizer)))),
        ("gpt2", 2, lambda: GPT2LMHeadModel(_gpt2_config(len(tokenizer)))),
    ):
        torch.manual_seed(seed)
        model = build().eval()
        dirs[name] = root / name
        model.save_pretrained(dirs[name])
        tokenizer.save_pretrained(dirs[name])
    return dirs


@pytest.fixture(scope="session")
def llama(model_dirs: dict[str, Path]) -> LoadedModel:
    return load_model(str(model_dirs["llama"]), name="llama", device="cpu")


@pytest.fixture(scope="session")
def gpt2(model_dirs: dict[str, Path]) -> LoadedModel:
    return load_model(str(model_dirs["gpt2"]), name="gpt2", device="cpu")


@pytest.fixture
def reg(tmp_path: Path, sqlite_template: Path) -> Iterator[Registry]:
    """An empty registry: a SQLite file (copy of the migrated template) and a local store."""
    path = tmp_path / "registry.db"
    shutil.copy(sqlite_template, path)
    registry = Registry(f"sqlite:///{path}", str(tmp_path / "store"))
    registry.init()
    yield registry
    registry.close()


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    return path


# -- helpers ----------------------------------------------------------------------------------


@contextmanager
def recording(layers: Any, which: Sequence[int] | None = None) -> Iterator[dict[int, list[Any]]]:
    """Copies of the output of each block in ``which``, one per forward pass."""
    which = range(len(layers)) if which is None else which
    seen: dict[int, list[Any]] = {i: [] for i in which}

    def make(i: int) -> Any:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            seen[i].append(block_output(output).detach().clone())

        return hook

    handles = [layers[i].register_forward_hook(make(i)) for i in which]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def forward(loaded: LoadedModel, texts: Sequence[str]) -> Any:
    batch = loaded.tokenizer(list(texts), return_tensors="pt", padding=True)
    with torch.inference_mode():
        return loaded.model(**batch).logits


def single_pass_blocks(loaded: LoadedModel, text: str) -> list[Any]:
    """Every block's output ``[seq, d]`` for one text, unpadded."""
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
    with recording(loaded.layers) as seen, torch.inference_mode():
        loaded.model(input_ids=ids)
    return [seen[i][0][0] for i in range(loaded.n_layers)]


def no_hooks(loaded: LoadedModel) -> bool:
    return all(len(layer._forward_hooks) == 0 for layer in loaded.layers)


def random_vector(loaded: LoadedModel, seed: int = 1) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(loaded.n_layers, loaded.d_model, generator=generator).numpy()


def counts(reg: Registry) -> tuple[int, int, int, int]:
    return (
        len(reg.list_models(limit=None).items),
        len(reg.list_vectors(limit=None).items),
        len(reg.list_maps(limit=None).items),
        len(reg.list_evaluations(limit=None).items),
    )


# -- layer discovery and loading --------------------------------------------------------------


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


# -- capture ----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["llama", "gpt2"])
@pytest.mark.parametrize("token", ["last", "mean"])
def test_residual_states_left_and_right_padding_agree(
    request: pytest.FixtureRequest, which: str, token: str
) -> None:
    loaded = request.getfixturevalue(which)
    lengths = {len(loaded.tokenizer(t)["input_ids"]) for t in TEXTS}
    assert len(lengths) >= 6  # the batches really are padded
    right = residual_states(loaded, TEXTS, token=token, batch_size=8, padding_side="right")
    left = residual_states(loaded, TEXTS, token=token, batch_size=8, padding_side="left")
    assert right.shape == (len(TEXTS), loaded.n_layers, loaded.d_model)
    assert right.dtype == torch.float32
    torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-4)
    # Texts differ, so the rows differ: the agreement above is not between constants.
    assert not torch.allclose(right[0], right[1], atol=1e-2)


def test_residual_states_batch_size_does_not_matter(llama: LoadedModel) -> None:
    one = residual_states(llama, TEXTS, batch_size=1)
    eight = residual_states(llama, TEXTS, batch_size=8)
    torch.testing.assert_close(one, eight, rtol=1e-4, atol=1e-4)
    progress: list[tuple[int, int]] = []
    residual_states(llama, TEXTS, batch_size=4, progress=lambda d, t: progress.append((d, t)))
    assert progress == [(4, 10), (8, 10), (10, 10)]


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_residual_states_are_block_outputs(model_dirs: dict[str, Path], which: str) -> None:
    # A copy of its own: output_hidden_states makes transformers 5 install permanent forward
    # hooks on the blocks, and the shared models must stay hook-free for the steering tests.
    loaded = load_model(str(model_dirs[which]), device="cpu")
    text = TEXTS[1]
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        hidden_states = loaded.model(input_ids=ids, output_hidden_states=True).hidden_states
    states = residual_states(loaded, [text])[0]  # [L, d]
    assert len(hidden_states) == loaded.n_layers + 1
    # hidden_states[0] is the embedding output and hidden_states[l + 1] block l's output, except
    # the last entry: transformers applies the final norm (Llama's norm, GPT-2's ln_f) to it, so
    # it is not the last block's raw output. Compare the inner blocks to hidden_states and the
    # last block to a hook on the block itself.
    for layer in range(loaded.n_layers - 1):
        torch.testing.assert_close(
            states[layer], hidden_states[layer + 1][0, -1], rtol=1e-5, atol=1e-5
        )
    blocks = single_pass_blocks(loaded, text)
    for layer in range(loaded.n_layers):
        torch.testing.assert_close(states[layer], blocks[layer][-1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(states[-1], hidden_states[-1][0, -1], atol=1e-3)


def test_residual_states_mean_token_is_the_mean_over_tokens(llama: LoadedModel) -> None:
    states = residual_states(llama, TEXTS[:5], token="mean", batch_size=5)
    for row, text in enumerate(TEXTS[:5]):
        blocks = single_pass_blocks(llama, text)
        for layer in range(llama.n_layers):
            expected = blocks[layer].double().mean(dim=0).float()
            torch.testing.assert_close(states[row, layer], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("which", ["llama", "gpt2"])
@pytest.mark.parametrize("token", ["last", "mean"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_residual_states_shared_prefix_runs_once_and_changes_nothing(
    request: pytest.FixtureRequest, which: str, token: str, side: str
) -> None:
    loaded = request.getfixturevalue(which)
    persona = "Pretend you are a careful narrator describing the world. "
    texts = [persona + t for t in TEXTS]
    tokens_seen: list[int] = []
    # Tokens entering block 0 per pass: with sharing the persona runs once, not once per text.
    handle = loaded.layers[0].register_forward_pre_hook(
        lambda _m, args, kwargs: tokens_seen.append(
            (args[0] if args else kwargs["hidden_states"]).shape[:2].numel()
        ),
        with_kwargs=True,
    )
    try:
        shared = residual_states(loaded, texts, token=token, batch_size=4, padding_side=side)
        shared_tokens = sum(tokens_seen)
        tokens_seen.clear()
        plain = residual_states(
            loaded, texts, token=token, batch_size=4, padding_side=side, share_prefix=False
        )
        plain_tokens = sum(tokens_seen)
    finally:
        handle.remove()
    torch.testing.assert_close(shared, plain, rtol=1e-4, atol=1e-4)
    persona_tokens = len(loaded.tokenizer(persona)["input_ids"]) - 2
    assert plain_tokens - shared_tokens >= persona_tokens * (len(texts) - 1)
    for row in (0, 3):  # and both equal one unpadded pass of the whole text
        blocks = single_pass_blocks(loaded, texts[row])
        for layer in range(loaded.n_layers):
            expected = blocks[layer][-1] if token == "last" else blocks[layer].mean(dim=0)
            torch.testing.assert_close(shared[row, layer], expected, rtol=1e-4, atol=1e-4)
    assert no_hooks(loaded)


def test_residual_states_layer_subset_and_bad_input(llama: LoadedModel) -> None:
    full = residual_states(llama, TEXTS)
    subset = residual_states(llama, TEXTS, layers=[2, 0])
    assert subset.shape == (len(TEXTS), 2, llama.d_model)
    torch.testing.assert_close(subset, full[:, [2, 0]], rtol=1e-5, atol=1e-5)
    only_first = residual_states(llama, TEXTS, layers=[0])  # stops after block 0
    torch.testing.assert_close(only_first[:, 0], full[:, 0], rtol=1e-5, atol=1e-5)
    for layers in ([4], [-1], [0, 7]):
        with pytest.raises(InvalidInput, match="out of range"):
            residual_states(llama, TEXTS, layers=layers)
    with pytest.raises(InvalidInput, match="token"):
        residual_states(llama, TEXTS, token="first")
    with pytest.raises(InvalidInput, match="no texts"):
        residual_states(llama, [])
    assert no_hooks(llama)


# -- extraction -------------------------------------------------------------------------------


def test_mean_difference_equals_hand_computation(llama: LoadedModel) -> None:
    template = "Scenario: {text}\nThe feeling is"
    vector = extract_vector(llama, PAIRS, template=template, method="mean", batch_size=4)
    assert vector.shape == (llama.n_layers, llama.d_model)
    assert vector.dtype == np.float32
    pos = residual_states(llama, [template.replace("{text}", p.positive) for p in PAIRS])
    neg = residual_states(llama, [template.replace("{text}", p.negative) for p in PAIRS])
    expected = np.zeros((llama.n_layers, llama.d_model))
    for i in range(len(PAIRS)):
        expected += (pos[i] - neg[i]).double().numpy()
    expected /= len(PAIRS)
    np.testing.assert_allclose(vector, expected, rtol=1e-4, atol=1e-5)
    # Single pair: the vector is that pair's difference, at the last token of each text.
    one = extract_vector(llama, PAIRS[:1], method="mean")
    blocks_pos = single_pass_blocks(llama, PAIRS[0].positive)
    blocks_neg = single_pass_blocks(llama, PAIRS[0].negative)
    for layer in range(llama.n_layers):
        diff = (blocks_pos[layer][-1] - blocks_neg[layer][-1]).numpy()
        np.testing.assert_allclose(one[layer], diff, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_pca_direction_points_from_negatives_to_positives(
    request: pytest.FixtureRequest, which: str
) -> None:
    loaded = request.getfixturevalue(which)
    vector = extract_vector(loaded, PAIRS, method="pca")
    assert vector.shape == (loaded.n_layers, loaded.d_model)
    assert vector.dtype == np.float32
    pos = residual_states(loaded, [p.positive for p in PAIRS]).double()
    neg = residual_states(loaded, [p.negative for p in PAIRS]).double()
    v = torch.from_numpy(vector).double()
    unit = v / v.norm(dim=-1, keepdim=True)
    for layer in range(loaded.n_layers):
        projection_gap = ((pos[:, layer] - neg[:, layer]) @ unit[layer]).mean()
        assert projection_gap > 0
        # Scaled to the mean projection of the differences.
        assert float(v[layer].norm()) == pytest.approx(float(projection_gap), rel=1e-4)
    # The sign fix holds whichever way the SVD happens to orient the component.
    flipped = pca_direction(neg.float(), pos.float())
    torch.testing.assert_close(flipped, -torch.from_numpy(vector), rtol=1e-4, atol=1e-5)


def test_extract_vector_bad_input(llama: LoadedModel) -> None:
    with pytest.raises(InvalidInput, match="method"):
        extract_vector(llama, PAIRS, method="median")
    with pytest.raises(InvalidInput, match="no contrast pairs"):
        extract_vector(llama, [])
    with pytest.raises(InvalidInput, match="at least 2"):
        extract_vector(llama, PAIRS[:1], method="pca")


# -- steering ---------------------------------------------------------------------------------


def open_steer(layers: Any, vector: Any, **kwargs: Any) -> None:
    """Enter and leave a steering context (its arguments are checked on entry)."""
    with steer(layers, vector, **kwargs):
        pass


@pytest.mark.parametrize(("which", "layer"), [("llama", 0), ("llama", 2), ("gpt2", 1)])
def test_steer_adds_exactly_alpha_v_at_its_block_and_nothing_elsewhere(
    request: pytest.FixtureRequest, which: str, layer: int
) -> None:
    loaded = request.getfixturevalue(which)
    vector, alpha = random_vector(loaded), 2.5
    batch = loaded.tokenizer(TEXTS[:4], return_tensors="pt", padding=True)
    with recording(loaded.layers) as plain, torch.inference_mode():
        loaded.model(**batch)
    for v in (vector, vector[layer]):  # [n_layers, d] or one [d] row
        # The recording hooks go on after steer's, so they see the steered outputs.
        with (
            steer(loaded.layers, v, layer=layer, alpha=alpha),
            recording(loaded.layers) as steered,
            torch.inference_mode(),
        ):
            hooks = [len(block._forward_hooks) for block in loaded.layers]
            loaded.model(**batch)
        assert hooks == [2 if i == layer else 1 for i in range(loaded.n_layers)]
        expected = alpha * torch.from_numpy(vector[layer])
        for i in range(loaded.n_layers):
            before, after = plain[i][0], steered[i][0]
            if i < layer:
                assert torch.equal(before, after)
            elif i == layer:
                diff = after - before  # [batch, seq, d]: every position, pads included
                torch.testing.assert_close(diff, expected.expand_as(diff), rtol=0, atol=1e-5)
            else:
                assert not torch.allclose(before, after, atol=1e-3)
        assert no_hooks(loaded)


def test_steer_several_layers(llama: LoadedModel) -> None:
    vector, alpha = random_vector(llama), -1.5
    batch = llama.tokenizer(TEXTS[:2], return_tensors="pt", padding=True)
    with (
        steer(llama.layers, vector, layer=[1, 3], alpha=alpha),
        recording(llama.layers) as both,
        torch.inference_mode(),
    ):
        llama.model(**batch)
    with (
        steer(llama.layers, vector, layer=1, alpha=alpha),
        recording(llama.layers) as first,
        torch.inference_mode(),
    ):
        llama.model(**batch)
    with recording(llama.layers) as plain, torch.inference_mode():
        llama.model(**batch)
    assert torch.equal(both[0][0], plain[0][0])
    for layer, upstream in ((1, plain), (3, first)):
        # Block 3 sees the same input with layer=[1, 3] as with layer=1 alone.
        diff = both[layer][0] - upstream[layer][0]
        expected = (alpha * torch.from_numpy(vector[layer])).expand_as(diff)
        torch.testing.assert_close(diff, expected, rtol=0, atol=1e-5)
    assert torch.equal(both[2][0], first[2][0])
    assert no_hooks(llama)


def test_steer_hooks_are_gone_after_the_context_and_after_an_exception(
    llama: LoadedModel,
) -> None:
    base = forward(llama, TEXTS[:3])
    vector = random_vector(llama)
    with steer(llama.layers, vector, layer=2, alpha=4.0):
        steered = forward(llama, TEXTS[:3])
    assert not torch.allclose(steered, base, atol=1e-3)
    assert no_hooks(llama)
    assert torch.equal(forward(llama, TEXTS[:3]), base)

    class Boom(Exception):
        pass

    def fail_while_steering() -> None:
        with steer(llama.layers, vector, layer=[0, 3], alpha=4.0):
            forward(llama, TEXTS[:3])
            assert not no_hooks(llama)
            raise Boom

    with pytest.raises(Boom):
        fail_while_steering()
    assert no_hooks(llama)
    assert torch.equal(forward(llama, TEXTS[:3]), base)


@pytest.mark.parametrize("scope", ["all", "prompt", "generated"])
def test_steer_scope_with_cached_generate(llama: LoadedModel, scope: str) -> None:
    layer, alpha = 1, 3.0
    vector = random_vector(llama)
    inputs = llama.tokenizer("the cat sat on the", return_tensors="pt")
    with (
        recording(llama.layers, [layer]) as raw,  # registered before steer's hook: raw outputs
        steer(llama.layers, vector, layer=layer, alpha=alpha, scope=scope),
        recording(llama.layers, [layer]) as seen,  # registered after it: steered outputs
        torch.inference_mode(),
    ):
        llama.model.generate(
            **inputs,
            max_new_tokens=4,
            do_sample=False,
            use_cache=True,
            pad_token_id=llama.tokenizer.pad_token_id,
        )
    # The prompt in one pass, then one pass per generated token reusing the KV cache.
    assert [r.shape[1] for r in raw[layer]] == [inputs["input_ids"].shape[1], 1, 1, 1]
    expected = alpha * torch.from_numpy(vector[layer])
    for k, (before, after) in enumerate(zip(raw[layer], seen[layer], strict=True)):
        on = scope == "all" or (scope == "prompt") == (k == 0)
        if on:
            diff = after - before
            torch.testing.assert_close(diff, expected.expand_as(diff), rtol=0, atol=1e-5)
        else:
            assert torch.equal(after, before)
    assert no_hooks(llama)


def test_steer_normalize_and_residual_norm(llama: LoadedModel) -> None:
    layer, alpha = 2, 0.5
    texts = TEXTS[:4]
    reference = residual_norm(llama, texts, layer, batch_size=3)
    # By hand: the mean L2 norm of the block output over every token but each text's first.
    norms = [single_pass_blocks(llama, t)[layer][1:].double().norm(dim=-1) for t in texts]
    by_hand = float(torch.cat(norms).mean())
    assert reference == pytest.approx(by_hand, rel=1e-5)

    vector = random_vector(llama)
    batch = llama.tokenizer(texts, return_tensors="pt", padding=True)
    with recording(llama.layers, [layer]) as plain, torch.inference_mode():
        llama.model(**batch)
    with (
        steer(
            llama.layers, vector, layer=layer, alpha=alpha, normalize=True, reference_norm=reference
        ),
        recording(llama.layers, [layer]) as steered,
        torch.inference_mode(),
    ):
        llama.model(**batch)
    diff = steered[layer][0] - plain[layer][0]
    lengths = diff.norm(dim=-1)
    torch.testing.assert_close(
        lengths, torch.full_like(lengths, alpha * reference), rtol=1e-5, atol=1e-5
    )
    direction = torch.from_numpy(vector[layer] / np.linalg.norm(vector[layer]))
    torch.testing.assert_close(
        diff / lengths.unsqueeze(-1), direction.expand_as(diff), rtol=0, atol=1e-5
    )

    with pytest.raises(InvalidInput, match="reference"):
        open_steer(llama.layers, vector, layer=layer, normalize=True)
    zero = vector.copy()
    zero[layer] = 0.0
    with pytest.raises(InvalidInput, match="zero"):
        open_steer(llama.layers, zero, layer=layer, normalize=True, reference_norm=1.0)
    assert no_hooks(llama)


def test_steer_bad_input(llama: LoadedModel, gpt2: LoadedModel) -> None:
    vector = random_vector(llama)
    batch = llama.tokenizer(TEXTS[:2], return_tensors="pt", padding=True)
    for layer in (-1, 4, [1, 9]):
        with pytest.raises(InvalidInput, match="out of range"):
            open_steer(llama.layers, vector, layer=layer)
    with pytest.raises(InvalidInput, match="scope"):
        open_steer(llama.layers, vector, layer=1, scope="sometimes")
    # A vector for another model: the wrong number of layers...
    with pytest.raises(InvalidInput, match=r"shape \[3, 48\], this model needs \[4, d_model\]"):
        open_steer(llama.layers, random_vector(gpt2), layer=1)
    with pytest.raises(InvalidInput, match=r"shape \[3, 48\], this model needs \[4, 32\]"):
        open_steer(llama.layers, random_vector(gpt2), layer=1, d_model=32)
    # ...or the right number of layers (or a single row) of the wrong width: caught on entry
    # when d_model is given, else by the hook at the first forward pass.
    for wrong in (np.ones((4, 48), np.float32), np.ones(48, np.float32)):
        with pytest.raises(InvalidInput, match=r"shape \[.*48\], this model needs"):
            open_steer(llama.layers, wrong, layer=1, d_model=llama.d_model)
        with (
            pytest.raises(InvalidInput, match="48 dimensions, block 1 outputs 32"),
            steer(llama.layers, wrong, layer=1),
            torch.inference_mode(),
        ):
            llama.model(**batch)
        assert no_hooks(llama)
    assert no_hooks(llama)


def test_steering_never_mutates_the_model(llama: LoadedModel) -> None:
    before = {k: v.detach().clone() for k, v in llama.model.state_dict().items()}
    inputs = llama.tokenizer("the cat", return_tensors="pt")
    vector = random_vector(llama)
    for scope in ("all", "prompt", "generated"):
        with (
            steer(
                llama.layers,
                vector,
                layer=[0, 2],
                alpha=10.0,
                scope=scope,
                normalize=True,
                reference_norm=[1.0, 2.0],
            ),
            torch.inference_mode(),
        ):
            llama.model(**inputs)
            llama.model.generate(
                **inputs,
                max_new_tokens=2,
                do_sample=False,
                pad_token_id=llama.tokenizer.pad_token_id,
            )
    after = llama.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- prefix-cached readout --------------------------------------------------------------------


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_read_next_tokens_prefix_cache_equals_full_passes(
    request: pytest.FixtureRequest, which: str
) -> None:
    loaded = request.getfixturevalue(which)
    prefix = "Scenario: the cat sat on the mat.\nThe emotion is calm.\nScenario: "
    prompts = [
        prefix + tail
        for tail in (
            "a dog ran in the park after the red ball",
            "I",
            "We laughed all the way home",
            "Rain fell",
            "The bridge was rebuilt after the flood damaged its pillars and the road",
        )
    ]
    candidates = [5, 17, 42, 99, 300]
    encoded = [loaded.tokenizer(p)["input_ids"] for p in prompts]
    assert len({len(e) for e in encoded}) == len(prompts)

    def plain() -> tuple[Any, Any]:  # one unpadded full pass per prompt
        rows = []
        with torch.inference_mode():
            for ids in encoded:
                rows.append(loaded.model(input_ids=torch.tensor([ids])).logits[0, -1].float())
        logits = torch.stack(rows)
        return logits.argmax(dim=-1), logits[:, candidates]

    vector = random_vector(loaded, seed=3)
    results = {}
    for steered in (False, True):
        with steer(loaded.layers, vector, layer=1, alpha=2.0 if steered else 0.0):
            cached = read_next_tokens(loaded, prompts, candidates, batch_size=2)
            uncached = read_next_tokens(
                loaded, prompts, candidates, batch_size=2, use_prefix_cache=False
            )
            top1, logits = plain()
        assert torch.equal(cached.top1, uncached.top1)
        assert torch.equal(cached.top1, top1)
        torch.testing.assert_close(
            cached.candidate_logits, uncached.candidate_logits, rtol=0, atol=1e-4
        )
        torch.testing.assert_close(cached.candidate_logits, logits, rtol=0, atol=1e-4)
        results[steered] = cached.candidate_logits
    assert not torch.allclose(results[False], results[True], atol=1e-3)  # steering did act
    assert no_hooks(loaded)


# -- the ConTrans workflow on a registry ------------------------------------------------------


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
    first = contrans.extract(reg, "joy", "src", batch_size=4)
    assert first.created
    vec = first.record
    assert (vec.origin, vec.estimator, vec.token_position) == ("extracted", "mean_diff", "last")
    assert (vec.n_layers, vec.d_model, vec.settings["n_pairs"]) == (4, 32, len(PAIRS))
    source = reg.load_vector(vec.id)
    expected = extract_vector(llama, PAIRS, template="Scenario: {text}\nThe feeling is")
    np.testing.assert_allclose(source, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vec.layer_norms, np.linalg.norm(source, axis=1), rtol=1e-5)
    again = contrans.extract(reg, "joy", "src", batch_size=4)
    assert not again.created
    assert again.record.id == vec.id
    assert counts(reg)[1] == 1

    # fit: every pair, the best source layer per target layer, one explicit pair.
    all_maps = contrans.fit(reg, "src", "tgt", corpus=corpus_file, pairs="all")
    assert sorted((m.source_layer, m.target_layer) for m in all_maps) == [
        (ls, lt) for ls in range(4) for lt in range(3)
    ]
    auto = contrans.fit(reg, "src", "tgt", corpus=corpus_file, pairs="auto")
    assert [m.target_layer for m in auto] == [0, 1, 2]
    explicit = contrans.fit(reg, "src", "tgt", corpus=corpus_file, pairs="1:2")
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
    # A second fit reuses the cached corpus states (one file per model) and the same rows.
    assert len(list((crx_home() / "cache" / "states").glob("*.safetensors"))) == 2
    contrans.fit(reg, "src", "tgt", corpus=corpus_file, pairs="1:2")
    assert counts(reg)[2] == 16

    # transplant: per target layer, the best map (by held-out R²) applied to the source row.
    mapped = contrans.transplant(reg, "joy", "src", "tgt")
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
    assert not contrans.transplant(reg, "joy", "src", "tgt").created

    # One target layer: that row only, the others zero.
    single = contrans.transplant(reg, "joy", "src", "tgt", layer=2).record
    assert single.layers == [2]
    assert single.map_ids == [record.map_ids[2]]
    single_out = reg.load_vector(single.id)
    np.testing.assert_array_equal(single_out[2], out[2])
    assert not single_out[:2].any()

    # The transplanted vector steers the target; alpha 0 changes nothing.
    texts = contrans.generate(
        reg, "tgt", "the cat sat", vector_id=record.id, alpha=0.0, layer=2, max_new_tokens=5
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
    layer = contrans.default_layer(model.n_layers)  # relative depth 0.75: block 3 of 4
    assert layer == 3
    with (
        reg.steer(model, vec.id, alpha=2.0),
        recording(model.layers) as steered,
        torch.inference_mode(),
    ):
        model.model(**batch)
    for i in range(layer):
        assert torch.equal(plain[i][0], steered[i][0])
    diff = steered[layer][0] - plain[layer][0]
    expected = (2.0 * torch.from_numpy(vector[layer])).expand_as(diff)
    torch.testing.assert_close(diff, expected, rtol=0, atol=1e-5)

    # normalize: alpha relative to the block's mean residual norm on the default corpus.
    reference = contrans.reference_norm(reg, "src", 1)
    with (
        reg.steer(model, vec.id, layer=1, alpha=0.25, normalize=True),
        recording(model.layers, [1]) as scaled,
        torch.inference_mode(),
    ):
        model.model(**batch)
    lengths = (scaled[1][0] - plain[1][0]).norm(dim=-1)
    torch.testing.assert_close(
        lengths, torch.full_like(lengths, 0.25 * reference), rtol=1e-5, atol=1e-5
    )

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
    lines, raw = contrans.load_corpus(corpus_file)
    oid = reg.store.put(raw)
    states_a = contrans.corpus_states(reg, a, lines, oid)
    states_b = contrans.corpus_states(reg, b, lines, oid)
    fresh_b = residual_states(contrans.load(reg, b), lines)
    torch.testing.assert_close(states_b, fresh_b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(states_a, states_b, atol=1e-2)
    # Cached: a second call reads the file, with the same numbers.
    assert torch.equal(contrans.corpus_states(reg, b, lines, oid), states_b)


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
        contrans.transplant(reg, "joy", "src", "tgt")
    vec = contrans.extract(reg, "joy", "src").record
    other_vec = contrans.extract(reg, "joy", "other").record
    contrans.fit(reg, "src", "tgt", corpus=corpus_file, pairs="1:2")
    before = counts(reg)

    # No map between these models (the only maps are src → tgt).
    with pytest.raises(NotFound, match="no map from src to other"):
        contrans.transplant(reg, "joy", "src", "other")
    with pytest.raises(NotFound, match="no map from other to tgt"):
        contrans.transplant(reg, "joy", "other", "tgt")
    # No map at that target layer, or a layer out of range.
    with pytest.raises(NotFound, match="at layer 0"):
        contrans.transplant(reg, "joy", "src", "tgt", layer=0)
    for layer in (3, -1):
        with pytest.raises(InvalidInput, match="out of range"):
            contrans.transplant(reg, "joy", "src", "tgt", layer=layer)
    # A source vector that is not the source model's.
    with pytest.raises(InvalidInput, match="is not a vector of joy"):
        contrans.transplant(reg, "joy", "src", "tgt", vector_id=other_vec.id)
    # A map of the wrong shape for these models.
    with pytest.raises(TensorShapeError):
        reg.save_map("src", "tgt", 0, 0, np.zeros((32, 48), np.float32), None, solver="ridge")
    with pytest.raises(InvalidInput, match="out of range"):
        reg.save_map("src", "tgt", 4, 0, np.zeros((48, 32), np.float32), None, solver="ridge")
    # Fit: layer pairs out of range or malformed, a corpus too small or missing.
    for spec in ("4:0", "0:3", "x", "1-2"):
        with pytest.raises(InvalidInput):
            contrans.fit(reg, "src", "tgt", corpus=corpus_file, pairs=spec)
    short = tmp_path / "short.txt"
    short.write_text("\n".join(CORPUS[:10]))
    with pytest.raises(InvalidInput, match="at least 20"):
        contrans.fit(reg, "src", "tgt", corpus=short)
    with pytest.raises(InvalidInput, match="cannot read corpus"):
        contrans.fit(reg, "src", "tgt", corpus=tmp_path / "missing.txt")
    # A vector of the wrong width for the model it steers.
    target = contrans.load(reg, "tgt")
    with pytest.raises(InvalidInput, match=r"needs \[3, d_model\]"):
        open_steer(target.layers, reg.load_vector(vec.id), layer=1)
    with (
        pytest.raises(InvalidInput, match="32 dimensions, block 1 outputs 48"),
        steer(target.layers, reg.load_vector(vec.id)[1], layer=1),
    ):
        forward(target, ["the cat"])
    with pytest.raises(InvalidInput, match="belongs to src"):
        contrans.generate(reg, "tgt", "the cat", vector_id=vec.id, alpha=1.0)
    with pytest.raises(InvalidInput, match="out of range"):
        contrans.generate(
            reg, "src", "the cat", vector_id=vec.id, alpha=1.0, layer=4, max_new_tokens=2
        )
    with pytest.raises(InvalidInput, match="belongs to src"):
        contrans.evaluate_emotion(reg, "happiness", "tgt", vector_id=vec.id, alphas=[1.0])
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
            contrans.extract(reg, "joy", name)
        with pytest.raises(ModelLoadError, match=f"cannot load model {name}"):
            contrans.fit(reg, "src", name, corpus=corpus_file, pairs="1:0")
    with pytest.raises(InvalidInput, match="registered as 4 x 32"):
        contrans.extract(reg, "joy", "swapped")
    assert counts(reg) == before
    assert json.loads((tiny_model_dir / "config.json").read_text())["hidden_size"] == 32


def test_evaluate_emotion_records_and_reuses(
    reg: Registry, model_dirs: dict[str, Path], llama: LoadedModel
) -> None:
    ids = label_token_ids(llama.tokenizer)
    assert len(set(ids)) == len(EMOTIONS)
    reg.register_model("src", str(model_dirs["llama"]))
    reg.register_concept("happiness", PAIRS)
    vec = contrans.extract(reg, "happiness", "src").record
    base = contrans.evaluate_emotion(
        reg, "happiness", "src", vector_id=None, alphas=[], holdout=0.05
    )
    assert {r.metric for r in base} == {"token_accuracy", "logit_accuracy"}
    assert all(r.vector_id is None and r.alpha is None and r.n for r in base)
    steered = contrans.evaluate_emotion(
        reg, "happiness", "src", vector_id=vec.id, alphas=[0.0, 4.0], layer=1, holdout=0.05
    )
    assert sorted((r.alpha, r.metric) for r in steered) == [
        (0.0, "logit_accuracy"),
        (0.0, "token_accuracy"),
        (4.0, "logit_accuracy"),
        (4.0, "token_accuracy"),
    ]
    assert all(r.layers == [1] and r.vector_id == vec.id for r in steered)
    base_values = {r.metric: r.value for r in base}
    assert {r.metric: r.value for r in steered if r.alpha == 0.0} == base_values

    # By hand: full passes over the held-out prompts, no prefix cache.
    loaded = contrans.load(reg, "src")
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
    again = contrans.evaluate_emotion(
        reg, "happiness", "src", vector_id=vec.id, alphas=[0.0, 4.0], layer=1, holdout=0.05
    )
    assert sorted(r.id for r in again) == sorted(r.id for r in steered)
    reread = contrans.evaluate_emotion(
        reg, "happiness", "src", vector_id=None, alphas=[], holdout=0.05
    )
    assert sorted(r.id for r in reread) == sorted(r.id for r in base)
    assert counts(reg) == before
    with pytest.raises(InvalidInput, match="out of range"):
        contrans.evaluate_emotion(reg, "happiness", "src", vector_id=vec.id, alphas=[1.0], layer=7)
    assert counts(reg) == before
    assert no_hooks(contrans.load(reg, "src"))


def test_fit_again_reuses_identical_maps_unless_forced(
    reg: Registry, model_dirs: dict[str, Path], corpus_file: Path
) -> None:
    reg.register_model("src", str(model_dirs["llama"]))
    reg.register_model("tgt", str(model_dirs["gpt2"]))
    first = contrans.fit(reg, "src", "tgt", corpus=corpus_file, pairs="auto")
    again = contrans.fit(reg, "src", "tgt", corpus=corpus_file, pairs="auto")
    assert [m.id for m in again] == [m.id for m in first]
    explicit = contrans.fit(reg, "src", "tgt", corpus=corpus_file, pairs="1:2")
    assert [(m.source_layer, m.target_layer) for m in explicit] == [(1, 2)]
    assert contrans.fit(reg, "src", "tgt", corpus=corpus_file, pairs="1:2") == explicit
    forced = contrans.fit(reg, "src", "tgt", corpus=corpus_file, pairs="1:2", force=True)
    assert [(m.source_layer, m.target_layer) for m in forced] == [(1, 2)]
    # The ridge default is float32 products; asking for float64 explicitly is another fit, not
    # served the float32 maps, while a fit that names no precision reuses either.
    assert {m.solver_settings["dtype"] for m in first} == {"float32"}
    exact = contrans.fit(reg, "src", "tgt", corpus=corpus_file, pairs="auto", precision="float64")
    assert {m.id for m in exact}.isdisjoint(m.id for m in first)
    assert {m.solver_settings["dtype"] for m in exact} == {"float64"}
    for a, b in zip(exact, first, strict=True):
        assert a.target_layer == b.target_layer
        assert a.r2 == pytest.approx(b.r2, abs=1e-4)
    again64 = contrans.fit(reg, "src", "tgt", corpus=corpus_file, pairs="auto", precision="float64")
    assert [m.id for m in again64] == [m.id for m in exact]
    assert len(contrans.fit(reg, "src", "tgt", corpus=corpus_file, pairs="auto")) == len(first)
    before = counts(reg)
    with pytest.raises(InvalidInput, match="ridge solver only"):
        contrans.fit(reg, "src", "tgt", corpus=corpus_file, solver="lstsq-svd", precision="float32")
    assert counts(reg) == before
