"""Capture of residual states: block outputs at the last or mean token, independent of
padding side, batch size and shared-prefix batching; layer subsets and bad input.

On the tiny random-weight models of `tests.tiny_models`; every assertion is an exact number or a
float tolerance against a hand computation (one unpadded pass per text).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crx.registry.engine.capture import residual_states
from crx.registry.engine.loading import LoadedModel, LoadSettings, load_model
from crx.registry.errors import InvalidInput
from tests.tiny_models import TEXTS, no_hooks, single_pass_blocks


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
    loaded = load_model(str(model_dirs[which]), settings=LoadSettings(device="cpu"))
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
