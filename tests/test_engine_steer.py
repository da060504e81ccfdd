"""Steering hooks: exactly alpha * v at the chosen blocks and nothing elsewhere, several
layers, prompt/generated scopes with a KV cache, normalized alphas, hooks that never stay
behind, bad vectors, and weights that are never touched.

On the tiny random-weight models of `tests.tiny_models`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crx.registry.engine.loading import LoadedModel
from crx.registry.engine.steer import residual_norm, steer
from crx.registry.errors import InvalidInput
from tests.tiny_models import (
    TEXTS,
    forward,
    no_hooks,
    open_steer,
    random_vector,
    recording,
    single_pass_blocks,
)


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


def test_a_layers_reference_norm_is_measured_once_per_loaded_model(llama: LoadedModel) -> None:
    from crx.registry.engine.steer import residual_norm
    from crx.registry.workflows.corpus import load_corpus
    from crx.registry.workflows.evaluate import _NORMS, NORM_LINES, reference_norm

    _NORMS.pop(llama.model, None)  # the fixture is shared: start from nothing measured
    passes: list[int] = []
    handle = llama.layers[0].register_forward_hook(lambda *_: passes.append(1))
    try:
        first = reference_norm(llama, 1)
        measured = len(passes)
        assert measured > 0
        assert reference_norm(llama, 1) == first
        assert len(passes) == measured  # the model did not run again
        reference_norm(llama, 2)
        assert len(passes) > measured  # another layer is measured
    finally:
        handle.remove()
    lines = load_corpus(None)[0][:NORM_LINES]
    assert first == pytest.approx(residual_norm(llama, lines, 1))
