"""Next-token readouts of prompts: the prefix-cached batched pass equals one full pass per
prompt, with and without steering.

On the tiny random-weight models of `tests.tiny_models`.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from crx.registry.engine.prompts import read_next_tokens
from crx.registry.engine.steer import steer
from tests.tiny_models import no_hooks, random_vector


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
