"""Tiny random-weight models for the engine tests (no download), as fixtures and helpers.

The models are built here from configs (Llama 4 x 32, GPT-2 3 x 48, and a Llama twin with the
same config but other weights), with a byte-level BPE tokenizer trained on a few sentences,
and saved with ``save_pretrained`` so crx's own loader and ``Registry.register_model`` read them
like any model folder. ``tests/conftest.py`` registers this module as a plugin, so its fixtures
(``model_dirs``, ``llama``, ``gpt2``, ``reg``, ``corpus_file``) serve every test; test modules
import the plain helpers and texts from here.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from crx.registry import Registry
from crx.registry.engine.emotion import EMOTIONS, six_shot_prefix
from crx.registry.engine.layers import block_output
from crx.registry.engine.loading import LoadedModel, LoadSettings, load_model
from crx.registry.engine.steer import steer
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
    return load_model(str(model_dirs["llama"]), name="llama", settings=LoadSettings(device="cpu"))


@pytest.fixture(scope="session")
def gpt2(model_dirs: dict[str, Path]) -> LoadedModel:
    return load_model(str(model_dirs["gpt2"]), name="gpt2", settings=LoadSettings(device="cpu"))


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


def open_steer(layers: Any, vector: Any, **kwargs: Any) -> None:
    """Enter and leave a steering context (its arguments are checked on entry)."""
    with steer(layers, vector, **kwargs):
        pass
