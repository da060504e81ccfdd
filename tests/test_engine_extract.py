"""Extraction of concept vectors from contrast pairs: the mean difference and the PCA
direction, checked against hand computations on residual states, and bad input.

On the tiny random-weight models of `tests.tiny_models`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crx.registry.engine.capture import residual_states
from crx.registry.engine.extract import extract_vector, extract_vectors, pca_direction
from crx.registry.engine.loading import LoadedModel
from crx.registry.errors import InvalidInput
from tests.tiny_models import PAIRS, single_pass_blocks


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


@pytest.mark.parametrize("method", ["mean", "pca"])
def test_several_pair_sets_in_one_pass_equal_each_set_extracted_alone(
    llama: LoadedModel, method: str
) -> None:
    # Sets of different sizes and lengths, one overlapping another: the split must follow the
    # sets, not the length-sorted batches.
    sets = [PAIRS[:2], PAIRS[2:], PAIRS[1:4]]
    template = "Scenario: {text}\nThe feeling is"
    together = extract_vectors(llama, sets, template=template, method=method, batch_size=3)
    assert len(together) == len(sets)
    for pairs, vector in zip(sets, together, strict=True):
        alone = extract_vector(llama, pairs, template=template, method=method)
        np.testing.assert_allclose(vector, alone, rtol=1e-4, atol=1e-5)
    assert not np.allclose(together[0], together[1], atol=1e-3)
    with pytest.raises(InvalidInput, match="no contrast pairs"):
        extract_vectors(llama, [PAIRS, []])
    with pytest.raises(InvalidInput, match="at least 2"):
        extract_vectors(llama, [PAIRS, PAIRS[:1]], method="pca")


def test_extract_vector_bad_input(llama: LoadedModel) -> None:
    with pytest.raises(InvalidInput, match="method"):
        extract_vector(llama, PAIRS, method="median")
    with pytest.raises(InvalidInput, match="no contrast pairs"):
        extract_vector(llama, [])
    with pytest.raises(InvalidInput, match="at least 2"):
        extract_vector(llama, PAIRS[:1], method="pca")
