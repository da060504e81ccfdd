"""The catalogue (``crx.registry.catalog``): version numbers, identity conflicts and keyset
paging, through the `Registry` facade on both real databases (a SQLite file, a PostgreSQL
server).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crx.registry import Registry
from crx.registry.errors import AlreadyExists
from tests.registry_world import _events, _model_folder, _pairs, _snapshot, _vector

# -- through the facade, on each database ---------------------------------------------------


def test_concept_versions_count_up_and_identical_content_is_a_no_op(
    registry: Registry,
) -> None:
    first = registry.register_concept("joy", _pairs("a"), description="happiness")
    second = registry.register_concept("joy", _pairs("b"))
    third = registry.register_concept("joy", _pairs("c"))
    assert [r.created for r in (first, second, third)] == [True, True, True]
    assert [r.record.version for r in (first, second, third)] == [1, 2, 3]
    assert [r.record.ref for r in (first, second, third)] == ["joy@1", "joy@2", "joy@3"]
    assert len({r.record.pairs_oid for r in (first, second, third)}) == 3

    again = registry.register_concept("joy", _pairs("a"))
    assert not again.created
    assert again.record == first.record

    # Same pairs with another template or extraction recipe is new content.
    templated = registry.register_concept("joy", _pairs("a"), template="Q: {text}\nA:")
    assert templated.created
    assert templated.record.version == 4
    assert templated.record.pairs_oid == first.record.pairs_oid
    recipe = registry.register_concept("joy", _pairs("a"), extraction={"method": "pca"})
    assert recipe.created
    assert recipe.record.version == 5
    assert recipe.record.extraction["method"] == "pca"

    assert [v.version for v in registry.concept_versions("joy")] == [1, 2, 3, 4, 5]
    listed = registry.list_concepts().items
    assert [(c.name, c.versions, c.latest_version) for c in listed] == [("joy", [1, 2, 3, 4, 5], 5)]
    assert listed[0].description == "happiness"


def test_vector_identity_conflict_needs_replace(registry: Registry, tiny: str, joy: str) -> None:
    first, other = _vector(4), _vector(5)
    created = registry.save_vector(joy, tiny, first, origin="extracted")
    assert created.created
    same = registry.save_vector(joy, tiny, first, origin="extracted")
    assert not same.created
    assert same.record.id == created.record.id

    before = _snapshot(registry, with_store=False)
    with pytest.raises(AlreadyExists, match="replace"):
        registry.save_vector(joy, tiny, other, origin="extracted")
    assert _snapshot(registry, with_store=False) == before
    np.testing.assert_array_equal(registry.load_vector(created.record.id), first)

    replaced = registry.save_vector(joy, tiny, other, origin="extracted", replace=True)
    assert not replaced.created
    assert replaced.record.id == created.record.id
    assert replaced.record.oid != created.record.oid
    np.testing.assert_array_equal(registry.load_vector(created.record.id), other)
    last = _events(registry)[-1]
    assert (last.action, last.object_kind, last.object_id) == (
        "replace",
        "vector",
        created.record.id,
    )
    assert last.old["oid"] == created.record.oid
    assert last.new["oid"] == replaced.record.oid
    # A different identity (another estimator) is a new vector, not a conflict.
    sibling = registry.save_vector(joy, tiny, first, origin="extracted", estimator="pca")
    assert sibling.created
    assert sibling.record.id != created.record.id
    assert len(registry.list_vectors(limit=None).items) == 2


def test_paging_gives_every_item_once_in_order(registry: Registry, tmp_path: Path) -> None:
    names = [f"model-{i:02d}" for i in range(25)]
    for i, name in enumerate(names):
        registry.register_model(name, str(_model_folder(tmp_path, name, 2 + i % 3, 8)))

    seen: list[str] = []
    sizes: list[int] = []
    after = None
    while True:
        page = registry.list_models(limit=10, after=after)
        seen += [m.name for m in page.items]
        sizes.append(len(page.items))
        if page.next_after is None:
            break
        assert page.next_after == page.items[-1].id
        after = page.next_after
        if len(seen) == 10:  # a model registered mid-listing shows up once, at the end
            registry.register_model("late", str(_model_folder(tmp_path, "late", 2, 8)))
    assert sizes == [10, 10, 6]
    assert seen == [*names, "late"]
    assert [m.name for m in registry.list_models(limit=None).items] == seen
    exact = registry.list_models(limit=13)
    assert len(exact.items) == 13
    assert exact.next_after is not None
    tail = registry.list_models(limit=13, after=exact.next_after)
    assert len(tail.items) == 13
    assert tail.next_after is None
    assert registry.list_models(limit=5, after=10**9).items == []
