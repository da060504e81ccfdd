"""The concept-anchored solver (`crx.registry.engine.fit.anchored`): what it fits and chooses.

Synthetic states with a known truth: the corpus follows one linear map and the concept vectors
another (as a model's concept directions need not be where its neutral-text variance is), so
only the anchors can teach the second, and leave-concepts-out validation must see that.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crx.registry.engine.fit import fit_pairs
from crx.registry.engine.fit.anchored import Anchors, fold_of, solve_anchored
from crx.registry.errors import InvalidInput

N, DS, DT, K = 300, 24, 20, 40


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def world() -> dict:
    rng = np.random.default_rng(7)
    w_corpus = rng.normal(size=(DT, DS))
    w_concepts = w_corpus + 2.0 * rng.normal(size=(DT, DS))
    x = rng.normal(size=(N, 2, DS))
    y = np.stack([x[:, i] @ w_corpus.T + 0.3 * rng.normal(size=(N, DT)) for i in range(2)], 1)
    vs = rng.normal(size=(K, 2, DS)) * rng.uniform(0.5, 5.0, size=(K, 1, 1))  # norms vary
    vt = np.stack([vs[:, i] @ w_concepts.T for i in range(2)], 1)
    return {"x": x, "y": y, "vs": vs, "vt": vt, "w_concepts": w_concepts, "rng": rng}


def test_anchors_teach_the_concept_map_the_corpus_cannot(world: dict) -> None:
    groups = [f"c{k}" for k in range(K)]
    anchored = fit_pairs(
        world["x"], world["y"], [(0, 0)], solver="anchored",
        anchors=Anchors(world["vs"], world["vt"], groups),
    )[0]  # fmt: skip
    ridge = fit_pairs(world["x"], world["y"], [(0, 0)])[0]
    # a concept never seen: its true target direction comes from the concepts' map
    fresh = world["rng"].normal(size=DS)
    truth = world["w_concepts"] @ fresh
    assert _cos(anchored.weight @ fresh, truth) > 0.95
    assert _cos(ridge.weight @ fresh, truth) < 0.8
    settings = anchored.settings
    assert settings["anchor_weight"] != 0.0  # validation chose to use the anchors
    assert settings["anchor_cv_best"] > 0.9
    assert settings["n_anchors"] == K
    assert settings["n_anchor_groups"] == K
    # the table it chose from: one row per weight, one column per λ, best where it says
    table = np.array(settings["anchor_cv_cosine"], dtype=float)
    assert table.shape == (len(settings["anchor_weight_grid"]), len(settings["anchor_lambda_grid"]))
    assert np.nanmax(table) == pytest.approx(settings["anchor_cv_best"])
    # the corpus fit it records is real (held out) and worse than ridge's, which only fits it
    assert anchored.r2 < ridge.r2


def test_consistent_anchors_are_not_needed_when_the_corpus_already_agrees(world: dict) -> None:
    # concept vectors that follow the corpus's own map: the corpus alone already transfers them,
    # so whatever weight is chosen, a fresh concept comes out right
    rng = np.random.default_rng(3)
    w_corpus = np.linalg.lstsq(world["x"][:, 0], world["y"][:, 0], rcond=None)[0].T
    vs = rng.normal(size=(K, 2, DS))
    vt = np.stack([vs[:, i] @ w_corpus.T for i in range(2)], 1)
    fm = fit_pairs(
        world["x"], world["y"], [(0, 0)], solver="anchored",
        anchors=Anchors(vs, vt, [f"c{k}" for k in range(K)]),
    )[0]  # fmt: skip
    fresh = rng.normal(size=DS)
    assert _cos(fm.weight @ fresh, w_corpus @ fresh) > 0.98


def test_leave_concepts_out_never_validates_on_a_group_it_trained_on() -> None:
    groups = ["a", "a", "b", "c", "c", "c", "d", "e", "f"]
    folds = fold_of(groups, 3)
    for g in set(groups):
        assert len({int(f) for f, h in zip(folds, groups, strict=True) if h == g}) == 1
    assert set(folds.tolist()) == {0, 1, 2}


def test_grouped_copies_cannot_vouch_for_each_other() -> None:
    # 20 copies of one concept (one group) plus 4 unrelated noise concepts: if copies were
    # validated on each other, the anchors would look perfect; grouped, they cannot
    rng = np.random.default_rng(11)
    v = rng.normal(size=DS)
    vs = np.vstack([np.tile(v, (20, 1)), rng.normal(size=(4, DS))])
    vt = np.vstack([np.tile(rng.normal(size=DT), (20, 1)), rng.normal(size=(4, DT))])
    ungrouped = solve_anchored(
        None, None, torch.tensor(vs), torch.tensor(vt), [str(i) for i in range(24)]
    )
    grouped = solve_anchored(
        None, None, torch.tensor(vs), torch.tensor(vt), ["copy"] * 20 + ["n1", "n2", "n3", "n4"]
    )
    assert ungrouped.cv_cosine.max() > 0.8
    assert grouped.cv_cosine.max() < 0.5
    assert math.isinf(grouped.weight)  # no corpus: the anchors alone


def test_the_solver_and_its_anchors_go_together(world: dict) -> None:
    with pytest.raises(InvalidInput, match="needs anchors"):
        fit_pairs(world["x"], world["y"], [(0, 0)], solver="anchored")
    anchors = Anchors(world["vs"], world["vt"], [f"c{k}" for k in range(K)])
    with pytest.raises(InvalidInput, match="anchored solver only"):
        fit_pairs(world["x"], world["y"], [(0, 0)], anchors=anchors)
    few = Anchors(world["vs"][:3], world["vt"][:3], ["a", "b", "c"])
    with pytest.raises(InvalidInput, match="at least 4 independent"):
        fit_pairs(world["x"], world["y"], [(0, 0)], solver="anchored", anchors=few)


def test_auto_pairs_are_ridges_choice_of_source_block(world: dict) -> None:
    anchors = Anchors(world["vs"], world["vt"], [f"c{k}" for k in range(K)])
    anchored = fit_pairs(world["x"], world["y"], "auto", solver="anchored", anchors=anchors)
    ridge = fit_pairs(world["x"], world["y"], "auto")
    assert [(m.source_layer, m.target_layer) for m in anchored] == [
        (m.source_layer, m.target_layer) for m in ridge
    ]
    for a, r in zip(anchored, ridge, strict=True):
        assert a.settings["auto_val_r2"] == r.settings["auto_val_r2"]


def test_target_blocks_sharing_a_source_block_get_the_maps_each_would_get_alone(
    world: dict,
) -> None:
    # the fit decomposes a source block once for every target block mapped from it
    anchors = Anchors(world["vs"], world["vt"], [f"c{k}" for k in range(K)])
    together = fit_pairs(world["x"], world["y"], [(0, 0), (1, 1), (0, 1)], solver="anchored",
                         anchors=anchors)  # fmt: skip
    for fm in together:
        pair = (fm.source_layer, fm.target_layer)
        (alone,) = fit_pairs(world["x"], world["y"], [pair], solver="anchored", anchors=anchors)
        np.testing.assert_array_equal(fm.weight, alone.weight)
        np.testing.assert_array_equal(fm.bias, alone.bias)
        assert fm.settings["anchor_cv_cosine"] == alone.settings["anchor_cv_cosine"]
    assert not np.allclose(together[0].weight, together[2].weight)  # two different maps


def _direct(x, y, vs, vt, groups, weights, lambdas, folds):  # type: ignore[no-untyped-def]
    """The solver's definition, solved directly: for every (w, λ, fold) the normal equations
    ``(C + w_abs·A + λ_abs·I) Wᵀ = P + w_abs·Q`` (no shared factorisation, no Woodbury)."""
    norms = np.linalg.norm(vs, axis=1, keepdims=True)
    vs, vt = vs / norms, vt / norms
    xc, yc = x - x.mean(0), y - y.mean(0)
    c, p = xc.T @ xc / len(x), xc.T @ yc / len(x)
    ds = vs.shape[1]
    fold = fold_of(groups, folds)

    def solve(w: float, lam: float, rows: np.ndarray) -> np.ndarray:
        a = vs[rows].T @ vs[rows] / rows.sum()
        q = vs[rows].T @ vt[rows] / rows.sum()
        if math.isinf(w):
            m, r = a, q
        else:
            w_abs = w * np.trace(c) / np.trace(a)
            m, r = c + w_abs * a, p + w_abs * q
        return np.linalg.solve(m + lam * np.trace(m) / ds * np.eye(ds), r)

    table = np.zeros((len(weights), len(lambdas)))
    for i, w in enumerate(weights):
        for j, lam in enumerate(lambdas):
            total = 0.0
            for f in range(folds):
                wt = solve(w, lam, fold != f)
                pred, true = vs[fold == f] @ wt, vt[fold == f]
                cos = (
                    (pred * true).sum(1)
                    / np.linalg.norm(pred, axis=1)
                    / np.linalg.norm(true, axis=1)
                )
                total += cos.sum()
            table[i, j] = total / len(vs)
    return table, solve


def test_the_shared_factorisation_solves_the_definition_exactly() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(120, 16)), rng.normal(size=(120, 12))
    y += x @ rng.normal(size=(16, 12))
    vs, vt = rng.normal(size=(30, 16)), rng.normal(size=(30, 12))
    groups = [f"g{k // 2}" for k in range(30)]  # pairs of anchors share a group
    weights, lambdas = (0.0, 0.3, 3.0, math.inf), (1e-3, 1e-1, 10.0)
    sol = solve_anchored(
        torch.tensor(x), torch.tensor(y), torch.tensor(vs), torch.tensor(vt), groups,
        weights=weights, lambdas=lambdas, folds=4,
    )  # fmt: skip
    table, solve = _direct(x, y, vs, vt, groups, weights, lambdas, 4)
    np.testing.assert_allclose(sol.cv_cosine, table, rtol=1e-7, atol=1e-9)
    chosen = solve(sol.weight, sol.lam, np.ones(30, dtype=bool))
    np.testing.assert_allclose(sol.wt.numpy(), chosen, rtol=1e-6, atol=1e-9)
    assert sol.cv_cosine.max() == pytest.approx(table.max())
