"""registry.engine.fit: affine maps between residual streams, on synthetic data with known maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crx.registry.engine.fit import (
    DEFAULT_LAMBDAS,
    FittedMap,
    fit_pairs,
    map_vector,
    relative_depth_pair,
    split_indices,
)
from crx.registry.errors import InvalidInput, TensorShapeError


def _affine_data(
    n: int = 400, ds: int = 12, dt: int = 7, noise: float = 0.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One source and one target layer, ``y = W x + b (+ noise)``, with unequal input scales."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, ds)) * np.linspace(0.5, 3.0, ds) + rng.standard_normal(ds)
    w = rng.standard_normal((dt, ds))
    b = 5.0 * rng.standard_normal(dt)
    y = x @ w.T + b + noise * rng.standard_normal((n, dt))
    return x[:, None, :], y[:, None, :], w, b


def _layered_data(
    sources: list[int], n: int = 500, n_src: int = 6, ds: int = 10, dt: int = 8, seed: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Independent source layers; target layer t = affine(source layer sources[t]) + noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, n_src, ds)).astype(np.float32)
    ys = []
    for s in sources:
        w = rng.standard_normal((dt, ds))
        ys.append(x[:, s].astype(np.float64) @ w.T + rng.standard_normal(dt))
    y = np.stack(ys, axis=1)
    y += 0.3 * rng.standard_normal(y.shape)
    return x, y.astype(np.float32)


# -- splits and the pair rule ----------------------------------------------------------------


def test_split_indices_file_order_and_sizes() -> None:
    tr, va, te = split_indices(2000)
    assert (len(tr), len(va), len(te)) == (1600, 200, 200)
    np.testing.assert_array_equal(tr, np.arange(1600))
    np.testing.assert_array_equal(va, np.arange(1600, 1800))
    np.testing.assert_array_equal(te, np.arange(1800, 2000))
    assert [len(p) for p in split_indices(10)] == [8, 1, 1]
    assert [len(p) for p in split_indices(7, (0.5, 0.5, 0.0))] == [4, 3, 0]


def test_split_indices_shuffled_is_a_seeded_partition() -> None:
    a = split_indices(103, shuffle=True, seed=3)
    b = split_indices(103, shuffle=True, seed=3)
    c = split_indices(103, shuffle=True, seed=4)
    for p, q in zip(a, b, strict=True):
        np.testing.assert_array_equal(p, q)
    assert not np.array_equal(a[0], c[0])
    np.testing.assert_array_equal(np.sort(np.concatenate(a)), np.arange(103))
    assert [len(p) for p in a] == [82, 11, 10]


def test_relative_depth_pair_matches_contrans() -> None:
    # ConTrans pairs hidden_states 24 -> 30 (0 = embeddings) for 32 -> 40 layers: depth 0.75.
    # In 0-based decoder blocks that is 23 -> 29.
    assert relative_depth_pair(32, 40, 29) == 23
    assert relative_depth_pair(32, 40, 30 - 1) + 1 == 24
    # SmolLM2 (30 blocks) -> Gemma-3-270m (18 blocks): the reference run's 22 -> 13.
    assert relative_depth_pair(30, 18, 13) == 22
    assert [relative_depth_pair(5, 5, t) for t in range(5)] == [0, 1, 2, 3, 4]
    assert relative_depth_pair(30, 18, 17) == 29
    assert relative_depth_pair(2, 40, 0) == 0
    with pytest.raises(InvalidInput, match="target layer 40 is out of range"):
        relative_depth_pair(32, 40, 40)


# -- recovering known maps -------------------------------------------------------------------


def test_ridge_recovers_known_affine_map() -> None:
    x, y, w, b = _affine_data()
    # float64 products: exact to 1e-8 (float32, the default, is checked below)
    (m,) = fit_pairs(x.astype(np.float32), y.astype(np.float32), [(0, 0)], precision="float64")
    assert isinstance(m, FittedMap)
    assert m.weight.dtype == np.float32
    assert m.weight.shape == (7, 12)
    assert m.bias is not None
    assert m.bias.dtype == np.float32
    np.testing.assert_allclose(m.weight, w, atol=1e-4)
    np.testing.assert_allclose(m.bias, b, atol=1e-4)
    assert m.r2 > 1 - 1e-8
    assert m.r2_val > 1 - 1e-8
    assert m.r2_train > 1 - 1e-8
    assert m.cosine > 1 - 1e-8
    assert m.mse < 1e-8
    assert m.settings["solver"] == "ridge"
    assert m.settings["centring"] is True
    assert m.settings["lambda"] == min(DEFAULT_LAMBDAS)
    assert (m.n_train, m.n_val, m.n_test) == (320, 40, 40)


def test_float32_precision_recovers_the_map_and_matches_float64() -> None:
    x, y, w, _b = _affine_data(noise=0.1)
    x, y = x.astype(np.float32), y.astype(np.float32)
    (m32,) = fit_pairs(x, y, [(0, 0)])  # the ridge default
    (m64,) = fit_pairs(x, y, [(0, 0)], precision="float64")
    assert m32.settings["dtype"] == "float32"
    assert m64.settings["dtype"] == "float64"
    assert m32.weight.dtype == np.float32
    assert m32.weight.flags.c_contiguous
    np.testing.assert_allclose(m32.weight, w, atol=0.05)
    np.testing.assert_allclose(m32.weight, m64.weight, rtol=0, atol=1e-4)
    assert m32.bias is not None
    assert m64.bias is not None
    np.testing.assert_allclose(m32.bias, m64.bias, rtol=0, atol=1e-3)
    for metric in ("r2", "r2_val", "r2_train", "cosine"):
        assert getattr(m32, metric) == pytest.approx(getattr(m64, metric), abs=1e-5)
    assert m32.settings["lambda"] == m64.settings["lambda"]


def test_float32_sweep_agrees_with_float64_on_every_pair() -> None:
    # A mean offset, as residual states have; the float32 products run on centred data.
    x, y = _layered_data([3, 0, 5])
    x = x + np.float32(50.0)
    maps32 = fit_pairs(x, y, "all", precision="float32")
    maps64 = fit_pairs(x, y, "all", precision="float64")
    assert {m.settings["dtype"] for m in fit_pairs(x, y, [(0, 0)], solver="lstsq-svd")} == {
        "float64"
    }
    assert len(maps32) == len(maps64) == 18
    for a, b in zip(maps32, maps64, strict=True):
        assert (a.source_layer, a.target_layer) == (b.source_layer, b.target_layer)
        assert a.r2 == pytest.approx(b.r2, abs=1e-4)
        assert a.settings["val_r2_by_lambda"] == pytest.approx(
            b.settings["val_r2_by_lambda"], abs=1e-4
        )
        np.testing.assert_allclose(a.weight, b.weight, rtol=0, atol=1e-3)
    auto32 = fit_pairs(x, y, "auto", precision="float32")
    assert [m.source_layer for m in auto32] == [3, 0, 5]
    with pytest.raises(InvalidInput, match="ridge solver only"):
        fit_pairs(x, y, [(0, 0)], solver="lstsq-svd", precision="float32")
    with pytest.raises(InvalidInput, match="precision must be"):
        fit_pairs(x, y, [(0, 0)], precision="float16")


def test_lstsq_svd_recovers_map_without_bias() -> None:
    x, y, w, b = _affine_data()
    y = y - b  # the ConTrans solver has no bias term
    (m,) = fit_pairs(torch.from_numpy(x), torch.from_numpy(y), [(0, 0)], solver="lstsq-svd")
    assert m.bias is None
    np.testing.assert_allclose(m.weight, w, atol=1e-5)
    assert m.r2 > 1 - 1e-10
    assert m.settings["centring"] is False
    assert m.settings["rank"] == 12


def test_lstsq_svd_is_the_pseudo_inverse_solution() -> None:
    x, y, _, _ = _affine_data(n=60, ds=30, noise=1.0)
    (m,) = fit_pairs(x, y, [(0, 0)], solver="lstsq-svd")
    tr, _, _ = split_indices(60)
    expected = (np.linalg.pinv(x[tr, 0]) @ y[tr, 0]).T
    np.testing.assert_allclose(m.weight, expected, rtol=1e-5, atol=1e-5)
    pred = x[tr, 0] @ expected.T
    sst = ((y[tr, 0] - y[tr, 0].mean(0)) ** 2).sum()
    assert m.r2_train == pytest.approx(1 - ((y[tr, 0] - pred) ** 2).sum() / sst, abs=1e-9)


def test_map_vector_is_w_times_v() -> None:
    rng = np.random.default_rng(5)
    w = rng.standard_normal((7, 4)).astype(np.float32)
    v = rng.standard_normal(4).astype(np.float32)
    out = map_vector(w, v)
    assert out.dtype == np.float32
    assert out.shape == (7,)
    np.testing.assert_allclose(out, w.astype(np.float64) @ v, rtol=1e-6)
    vs = rng.standard_normal((3, 4))
    np.testing.assert_allclose(map_vector(torch.from_numpy(w), vs), vs @ w.T, rtol=1e-6)
    with pytest.raises(TensorShapeError, match="the vector has shape"):
        map_vector(w, np.ones(5))
    with pytest.raises(TensorShapeError, match="the map weight has shape"):
        map_vector(np.ones(4), v)


# -- many pairs ------------------------------------------------------------------------------


def test_all_gives_every_pair_in_order() -> None:
    x, y = _layered_data([4, 1, 5], n_src=6)
    maps = fit_pairs(x, y, "all")
    assert [(m.source_layer, m.target_layer) for m in maps] == [
        (ls, lt) for ls in range(6) for lt in range(3)
    ]
    assert all(m.settings["pairs"] == "all" for m in maps)


def test_explicit_pairs_keep_their_order() -> None:
    x, y = _layered_data([4, 1, 5], n_src=6)
    pairs = [(5, 2), (0, 0), (5, 0)]
    assert [(m.source_layer, m.target_layer) for m in fit_pairs(x, y, pairs)] == pairs


def test_auto_picks_the_generating_source_layer() -> None:
    sources = [4, 1, 5, 2]
    x, y = _layered_data(sources, n_src=6)
    maps = fit_pairs(x, y, "auto")
    assert [m.target_layer for m in maps] == [0, 1, 2, 3]
    assert [m.source_layer for m in maps] == sources
    for m in maps:
        scores = m.settings["auto_val_r2"]
        assert len(scores) == 6
        assert int(np.argmax(scores)) == m.source_layer
        assert m.r2_val == pytest.approx(scores[m.source_layer], abs=1e-9)
        assert max(m.settings["val_r2_by_lambda"]) == pytest.approx(m.r2_val, abs=1e-9)
        assert m.settings["relative_depth_source_layer"] == relative_depth_pair(
            6, 4, m.target_layer
        )
        assert m.r2 > 0.9
    svd = fit_pairs(x, y, "auto", solver="lstsq-svd")
    assert [m.source_layer for m in svd] == sources


def test_auto_breaks_ties_by_relative_depth() -> None:
    x, y = _layered_data([1, 1, 1], n_src=6)
    x[:, 4] = x[:, 1]  # two identical source layers: an exact tie for every target
    picks = [m.source_layer for m in fit_pairs(x, y, "auto")]
    # target depths 1/3, 2/3, 1; source depths 2/6 and 5/6
    assert picks == [1, 4, 4]


def test_fast_all_pairs_equals_a_slow_per_pair_solve() -> None:
    rng = np.random.default_rng(7)
    n, n_src, ds, n_tgt, dt = 90, 3, 40, 2, 6  # fewer rows than twice ds: λ matters
    x = (rng.standard_normal((n, n_src, ds)) * np.linspace(0.1, 4.0, ds) + 2.0).astype(np.float32)
    w_true = 0.3 * rng.standard_normal((n_tgt, dt, ds))
    y = np.stack([x[:, t].astype(np.float64) @ w_true[t].T for t in range(n_tgt)], axis=1)
    y = (y + 3.0 * rng.standard_normal((n, n_tgt, dt))).astype(np.float32)
    grid = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
    # float64 products, so the comparison with a float64 solve per pair can be to 1e-9
    maps = fit_pairs(x, y, "all", lambdas=grid, precision="float64")
    tr, va, _ = split_indices(n)
    chosen = set()
    for m in maps:
        xs, yt = x[:, m.source_layer].astype(np.float64), y[:, m.target_layer].astype(np.float64)
        xm, ym = xs[tr].mean(0), yt[tr].mean(0)
        xc, yc = xs[tr] - xm, yt[tr] - ym
        scale = np.trace(xc.T @ xc / len(tr)) / ds
        val_r2 = []
        for lam in grid:
            w = np.linalg.solve(xc.T @ xc + lam * scale * len(tr) * np.eye(ds), xc.T @ yc).T
            pred = (xs[va] - xm) @ w.T + ym
            sse = ((yt[va] - pred) ** 2).sum()
            val_r2.append(1 - sse / ((yt[va] - yt[va].mean(0)) ** 2).sum())
        np.testing.assert_allclose(m.settings["val_r2_by_lambda"], val_r2, rtol=0, atol=1e-9)
        best = grid[int(np.argmax(val_r2))]
        assert m.settings["lambda"] == best
        assert m.settings["lambda_abs"] == pytest.approx(best * scale, rel=1e-9)
        w = np.linalg.solve(xc.T @ xc + best * scale * len(tr) * np.eye(ds), xc.T @ yc).T
        np.testing.assert_allclose(m.weight, w, rtol=1e-5, atol=1e-5)
        assert m.bias is not None
        np.testing.assert_allclose(m.bias, ym - w @ xm, rtol=1e-5, atol=1e-5)
        pred_tr = xc @ w.T
        assert m.r2_train == pytest.approx(1 - ((yc - pred_tr) ** 2).sum() / (yc**2).sum(), 1e-9)
        chosen.add(best)
    assert {0.1, 1.0} <= chosen  # the data make interior λ win, not just the grid edges


def test_test_metrics_follow_their_definitions() -> None:
    x, y, _, _ = _affine_data(n=200, ds=10, dt=5, noise=2.0, seed=3)
    for solver in ("ridge", "lstsq-svd"):
        (m,) = fit_pairs(x, y, [(0, 0)], solver=solver)
        tr, _, te = split_indices(200)
        w = m.weight.astype(np.float64)
        b = 0.0 if m.bias is None else m.bias.astype(np.float64)
        pred = x[te, 0] @ w.T + b
        truth = y[te, 0]
        sst = ((truth - truth.mean(0)) ** 2).sum()
        assert m.r2 == pytest.approx(1 - ((truth - pred) ** 2).sum() / sst, abs=1e-5)
        assert m.mse == pytest.approx(((truth - pred) ** 2).mean(), rel=1e-5)
        va = split_indices(200)[1]
        pred_va, truth_va = x[va, 0] @ w.T + b, y[va, 0]
        sst_va = ((truth_va - truth_va.mean(0)) ** 2).sum()
        assert m.r2_val == pytest.approx(1 - ((truth_va - pred_va) ** 2).sum() / sst_va, abs=1e-5)
        mean_tr = y[tr, 0].mean(0)
        a, c = pred - mean_tr, truth - mean_tr
        cos = (a * c).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(c, axis=1)
        assert m.cosine == pytest.approx(cos.mean(), abs=1e-6)
        assert 0.0 < m.r2 < 1.0


def test_progress_reports_every_step() -> None:
    x, y = _layered_data([4, 1, 5], n_src=6)
    seen: list[tuple[int, int]] = []
    fit_pairs(x, y, "all", progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 6) for i in range(1, 7)]
    seen.clear()
    fit_pairs(x, y, "auto", progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 9) for i in range(1, 10)]


# -- bad input -------------------------------------------------------------------------------


def test_bad_input_is_a_clear_error() -> None:
    x, y = _layered_data([4, 1], n_src=6)
    with pytest.raises(InvalidInput, match="source states have 500 rows and the target states 499"):
        fit_pairs(x, y[:-1])
    with pytest.raises(InvalidInput, match=r"source layer 6 in pair \(6, 0\) is out of range"):
        fit_pairs(x, y, [(6, 0)])
    with pytest.raises(InvalidInput, match=r"target layer 2 in pair \(0, 2\) is out of range"):
        fit_pairs(x, y, [(0, 2)])
    with pytest.raises(InvalidInput, match=r"target layer -1 in pair \(0, -1\) is out of range"):
        fit_pairs(x, y, [(0, -1)])
    with pytest.raises(InvalidInput, match="unknown solver 'svd': choose one of ridge, lstsq-svd"):
        fit_pairs(x, y, solver="svd")
    with pytest.raises(InvalidInput, match="pairs must be 'auto', 'all' or a list"):
        fit_pairs(x, y, "best")
    with pytest.raises(InvalidInput, match="listed twice"):
        fit_pairs(x, y, [(0, 0), (0, 0)])
    with pytest.raises(TensorShapeError, match="expected"):
        fit_pairs(x[:, 0], y)
    bad = x.copy()
    bad[3, 2, 1] = np.nan
    with pytest.raises(InvalidInput, match="contains NaN"):
        fit_pairs(bad, y)
    with pytest.raises(InvalidInput, match="ridge solver only"):
        fit_pairs(x, y, solver="lstsq-svd", lambdas=[1.0])
    with pytest.raises(InvalidInput, match="positive numbers"):
        fit_pairs(x, y, lambdas=[0.0])
    with pytest.raises(InvalidInput, match="validation split is empty"):
        fit_pairs(x, y, "auto", split=(0.9, 0.0, 0.1))
    with pytest.raises(InvalidInput, match="sum to 1"):
        fit_pairs(x, y, split=(0.5, 0.1, 0.1))
