"""The catalogue (``crx.registry.catalog``): version numbers, identity conflicts, keyset paging
and listing filters.

The first tests go through the `Registry` facade on both real databases (a SQLite file, a
PostgreSQL server); the rest call the catalogue functions (models, concepts, vectors, maps,
evaluations, paging) directly on a real SQLite session, where each call's rows and audit events
are visible and nothing is committed but by the caller's transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from crx.registry import Registry
from crx.registry.catalog import concepts, evaluations, maps, models, paging, vectors
from crx.registry.db.connection import make_engine, transaction
from crx.registry.db.tables import SqlAuditEvent, SqlModel
from crx.registry.errors import (
    AlreadyExists,
    ConceptNotFound,
    InvalidInput,
    MapNotFound,
    VectorNotFound,
)
from crx.registry.models.facts import ModelFacts
from crx.schemas.records import ConceptVersionRecord, MapRecord, Registered, VectorRecord
from tests.databases import sqlite_url
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


# -- the catalogue functions, directly on a SQLite session ----------------------------------
#
# The facade above wraps these in its transactions; here each call gets a plain write session
# (``transaction(engine, write=True)``) on a copy of the migrated template, and no blob store:
# oids are sha256 strings of made-up bytes, since the catalogue never reads blobs.


@pytest.fixture
def catalog_engine(tmp_path: Path, sqlite_template: Path) -> Iterator[Engine]:
    engine = make_engine(sqlite_url(tmp_path, sqlite_template))
    yield engine
    engine.dispose()


def _oid(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _add_model(session: Session, name: str, **labels: Any) -> int:
    facts = ModelFacts(
        path=f"/models/{name}",
        gguf_file=None,
        architecture="LlamaForCausalLM",
        model_type="llama",
        n_layers=4,
        d_model=32,
        vocab_size=100,
        config_sha256=None,
        tokenizer_sha256=None,
        weights_sha256=None,
    )
    labels = {"revision": None, "family": None, "role": None, "tags": {}, **labels}
    return models.register(session, name, facts, **labels).record.id


def _add_version(
    session: Session, name: str, pairs: str, **recipe: Any
) -> Registered[ConceptVersionRecord]:
    recipe = {"template": "{text}", "description": None, **recipe}
    return concepts.register_version(
        session, name, pairs_oid=_oid(pairs), n_pairs=2, pair_construction="given", extraction={},
        **recipe,
    )  # fmt: skip


def _add_vector(
    session: Session, version_id: int, model_id: int, blob: str, **fields: Any
) -> Registered[VectorRecord]:
    fields = {"estimator": "mean_diff", "origin": "extracted", **fields}
    return vectors.add(
        session, concept_version_id=version_id, model_id=model_id, oid=_oid(blob),
        hook_point="resid_post", token_position="last", n_layers=4, d_model=32, dtype="float32",
        layers=None, layer_norms=[1.0] * 4, **fields,
    )  # fmt: skip


def _add_map(
    session: Session, source_id: int, target_id: int, blob: str, **recipe: Any
) -> Registered[MapRecord]:
    recipe = {"solver_settings": {"lambda": 0.1}, "corpus_oid": None, **recipe}
    return maps.add(
        session, source_model_id=source_id, target_model_id=target_id, source_layer=1,
        target_layer=2, oid=_oid(blob), solver="ridge", n_samples=48, r2=0.5, mse=0.1, cosine=0.9,
        **recipe,
    )  # fmt: skip


def _event_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(SqlAuditEvent)) or 0


def test_catalog_page_walks_any_statement_by_id(catalog_engine: Engine) -> None:
    names = [f"m{i}" for i in range(7)]
    with transaction(catalog_engine, write=True) as session:
        ids = [_add_model(session, name) for name in names]

    def by_name(rows: Sequence[Any]) -> list[str]:
        return [row[0].name for row in rows]

    with transaction(catalog_engine, write=False) as session:
        statement = select(SqlModel)
        seen, pages, after = [], [], None
        while True:
            result = paging.page(session, statement, SqlModel.id, by_name, limit=3, after=after)
            seen += result.items
            pages.append(len(result.items))
            if result.next_after is None:
                break
            assert result.next_after == ids[len(seen) - 1]
            after = result.next_after
        assert seen == names
        assert pages == [3, 3, 1]
        # A limit that divides the rows exactly ends on a full page, not an empty one after it.
        exact = paging.page(session, statement, SqlModel.id, by_name, limit=7, after=None)
        assert (exact.items, exact.next_after) == (names, None)
        for everything in (0, None):
            page = paging.page(
                session, statement, SqlModel.id, by_name, limit=everything, after=None
            )
            assert (page.items, page.next_after) == (names, None)
        assert (
            paging.page(session, statement, SqlModel.id, by_name, limit=3, after=ids[-1]).items
            == []
        )
        # Paging applies to the statement as given, filters included.
        odd = statement.where(SqlModel.name.in_(names[1::2]))
        first = paging.page(session, odd, SqlModel.id, by_name, limit=2, after=None)
        assert first.items == names[1:4:2]
        rest = paging.page(session, odd, SqlModel.id, by_name, limit=2, after=first.next_after)
        assert (rest.items, rest.next_after) == ([names[5]], None)


def test_catalog_functions_leave_committing_to_the_callers_transaction(
    catalog_engine: Engine,
) -> None:
    class Abort(Exception):
        pass

    def write_then_fail() -> None:
        with transaction(catalog_engine, write=True) as session:
            model_id = _add_model(session, "m")
            version = _add_version(session, "joy", "a").record
            _add_vector(session, version.id, model_id, "v")
            assert _event_count(session) == 3  # visible inside the transaction...
            raise Abort

    with pytest.raises(Abort):
        write_then_fail()
    with transaction(catalog_engine, write=False) as session:  # ...and gone with it
        assert models.listing(session, limit=None, after=None).items == []
        assert concepts.listing(session, limit=None, after=None).items == []
        assert vectors.listing(session, limit=None, after=None).items == []
        assert _event_count(session) == 0


def test_catalog_concept_versions_count_up_per_concept_and_reuse_identical_recipes(
    catalog_engine: Engine,
) -> None:
    with transaction(catalog_engine, write=True) as session:
        a1 = _add_version(session, "joy", "a", description="happiness")
        b = _add_version(session, "joy", "b")
        calm = _add_version(session, "calm", "a")
        templated = _add_version(session, "joy", "a", template="Q: {text}")
        assert [r.created for r in (a1, b, calm, templated)] == [True] * 4
        assert [r.record.version for r in (a1, b, calm, templated)] == [1, 2, 1, 3]
        events = _event_count(session)
        a2 = _add_version(session, "joy", "a")
        assert not a2.created
        assert a2.record.id == a1.record.id
        assert _event_count(session) == events
        # Same content with a new description: the version stays, the change is audited.
        described = _add_version(session, "joy", "a", description="joy")
        assert not described.created
        assert (described.record.version, described.record.description) == (1, "joy")
        assert _event_count(session) == events + 1

        _, latest = concepts.find_version(session, "joy", None)
        assert latest.version == 3
        _, first = concepts.find_version(session, "joy", 1)
        assert first.pairs_oid == _oid("a")
        assert [v.version for v in concepts.versions_of(session, "joy")] == [1, 2, 3]
        assert [v.ref for v in concepts.versions_of(session, "calm")] == ["calm@1"]
        with pytest.raises(ConceptNotFound):
            concepts.find_version(session, "joy", 4)
        with pytest.raises(ConceptNotFound):
            concepts.find_version(session, "sorrow", None)
        with pytest.raises(ConceptNotFound):
            concepts.versions_of(session, "sorrow")
        listed = concepts.listing(session, limit=None, after=None).items
        assert [(c.name, c.versions, c.latest_version, c.description) for c in listed] == [
            ("joy", [1, 2, 3], 3, "joy"),
            ("calm", [1], 1, ""),
        ]


def test_catalog_mark_for_use_keeps_at_most_one_version_marked(catalog_engine: Engine) -> None:
    with transaction(catalog_engine, write=True) as session:
        for pairs in ("a", "b", "c"):
            _add_version(session, "joy", pairs)

        def marked() -> list[int]:
            versions = concepts.versions_of(session, "joy")
            return [v.version for v in versions if v.tags.get("use")]

        events = _event_count(session)
        assert concepts.mark_for_use(session, "joy", 1, True).created
        assert marked() == [1]
        latest = concepts.mark_for_use(session, "joy", None, True)
        assert latest.created
        assert latest.record.version == 3
        assert marked() == [3]
        assert _event_count(session) == events + 2  # one event each, the unmarking included
        assert not concepts.mark_for_use(session, "joy", 3, True).created
        assert not concepts.mark_for_use(session, "joy", 2, False).created
        assert _event_count(session) == events + 2
        assert concepts.mark_for_use(session, "joy", 3, False).created
        assert marked() == []
        with pytest.raises(ConceptNotFound):
            concepts.mark_for_use(session, "joy", 9, True)


def test_catalog_vectors_same_identity_needs_the_same_blob_or_replace(
    catalog_engine: Engine,
) -> None:
    with transaction(catalog_engine, write=True) as session:
        model_id = _add_model(session, "tiny")
        version_id = _add_version(session, "joy", "a").record.id
        first = _add_vector(session, version_id, model_id, "v1")
        assert first.created
        assert vectors.get(session, first.record.id) == first.record
        same = _add_vector(session, version_id, model_id, "v1")
        assert (same.created, same.record.id) == (False, first.record.id)

        identity = {
            "concept_version_id": version_id,
            "model_id": model_id,
            "hook_point": "resid_post",
            "token_position": "last",
            "estimator": "mean_diff",
            "lineage_key": "",
        }
        vectors.check_conflict(session, identity=identity, oid=_oid("v1"), replace=False)
        vectors.check_conflict(session, identity=identity, oid=_oid("v2"), replace=True)
        with pytest.raises(AlreadyExists, match="replace"):
            vectors.check_conflict(session, identity=identity, oid=_oid("v2"), replace=False)
        events = _event_count(session)
        with pytest.raises(AlreadyExists, match="replace"):
            _add_vector(session, version_id, model_id, "v2")
        assert vectors.get(session, first.record.id).oid == _oid("v1")
        assert _event_count(session) == events

        replaced = _add_vector(session, version_id, model_id, "v2", replace=True)
        assert (replaced.created, replaced.record.id) == (False, first.record.id)
        assert vectors.get(session, first.record.id).oid == _oid("v2")
        assert _event_count(session) == events + 1
        other = _add_vector(session, version_id, model_id, "v1", estimator="pca")
        assert other.created
        assert other.record.id != first.record.id
        with pytest.raises(InvalidInput, match="origin must be one of"):
            _add_vector(session, version_id, model_id, "v3", estimator="x", origin="guessed")
        with pytest.raises(VectorNotFound):
            vectors.get(session, other.record.id + 1)


def test_catalog_listings_filter_by_concept_model_and_task(catalog_engine: Engine) -> None:
    with transaction(catalog_engine, write=True) as session:
        tiny, wide = _add_model(session, "tiny"), _add_model(session, "wide")
        joy = _add_version(session, "joy", "a").record.id
        calm = _add_version(session, "calm", "a").record.id
        v_joy_tiny = _add_vector(session, joy, tiny, "1").record.id
        v_calm_tiny = _add_vector(session, calm, tiny, "2").record.id
        v_joy_wide = _add_vector(session, joy, wide, "3").record.id
        runs = [
            ("tiny", "emotion", {"accuracy": 0.5, "kl": 0.1}, v_joy_tiny),
            ("tiny", "fluency", {"ppl": 12.0}, v_joy_tiny),
            ("wide", "emotion", {"accuracy": 0.25}, None),
        ]
        events = _event_count(session)
        recorded = []
        for name, task, metrics, vector_id in runs:
            rows = evaluations.add(
                session,
                model=models.find(session, name),
                task=task,
                metrics=metrics,
                vector_id=vector_id,
                dataset_oid=None,
                layers=[1],
                alpha=2.0 if vector_id else None,
                n=8,
                settings=None,
            )
            assert [(r.metric, r.value, r.task, r.model) for r in rows] == [
                (metric, value, task, name) for metric, value in metrics.items()
            ]
            recorded += rows
        assert _event_count(session) == events + len(runs)  # one event per run, not per metric

        def vector_ids(**filters: Any) -> list[int]:
            listed = vectors.listing(session, limit=None, after=None, **filters)
            return [v.id for v in listed.items]

        assert vector_ids() == [v_joy_tiny, v_calm_tiny, v_joy_wide]
        assert vector_ids(concept="joy") == [v_joy_tiny, v_joy_wide]
        assert vector_ids(model="tiny") == [v_joy_tiny, v_calm_tiny]
        assert vector_ids(concept="calm", model="wide") == []
        assert vector_ids(concept="sorrow") == []

        def evaluation_ids(**filters: Any) -> list[int]:
            listed = evaluations.listing(session, limit=None, after=None, **filters)
            return [e.id for e in listed.items]

        ids = [r.id for r in recorded]
        assert evaluation_ids() == ids
        assert evaluation_ids(model="wide") == ids[3:]
        assert evaluation_ids(vector_id=v_joy_tiny) == ids[:3]
        assert evaluation_ids(task="emotion") == [ids[0], ids[1], ids[3]]
        assert evaluation_ids(task="emotion", model="tiny") == ids[:2]
        assert evaluation_ids(vector_id=v_calm_tiny) == []
        first = evaluations.listing(session, limit=2, after=None, task="emotion")
        rest = evaluations.listing(session, limit=2, after=first.next_after, task="emotion")
        assert [e.id for e in first.items + rest.items] == [ids[0], ids[1], ids[3]]
        assert rest.next_after is None


def test_catalog_maps_one_row_per_layer_pair_and_fit_recipe(catalog_engine: Engine) -> None:
    with transaction(catalog_engine, write=True) as session:
        src, tgt = _add_model(session, "src"), _add_model(session, "tgt")
        fitted = _add_map(session, src, tgt, "w1")
        assert fitted.created
        assert maps.get(session, fitted.record.id) == fitted.record
        same = _add_map(session, src, tgt, "w1")
        assert (same.created, same.record.id) == (False, fitted.record.id)
        # The same recipe fitted again to other weights replaces the row (no replace flag).
        events = _event_count(session)
        refit = _add_map(session, src, tgt, "w2")
        assert (refit.created, refit.record.id) == (False, fitted.record.id)
        assert maps.get(session, fitted.record.id).oid == _oid("w2")
        assert _event_count(session) == events + 1
        # Another recipe (solver settings or corpus) is another row for the same layer pair.
        other_lambda = _add_map(session, src, tgt, "w1", solver_settings={"lambda": 1.0})
        other_corpus = _add_map(session, src, tgt, "w1", corpus_oid=_oid("corpus"))
        backwards = _add_map(session, tgt, src, "w3")
        assert all(r.created for r in (other_lambda, other_corpus, backwards))
        assert len({fitted.record.id, other_lambda.record.id, other_corpus.record.id}) == 3

        def map_ids(**filters: Any) -> list[int]:
            return [m.id for m in maps.listing(session, limit=None, after=None, **filters).items]

        forward = [fitted.record.id, other_lambda.record.id, other_corpus.record.id]
        assert map_ids() == [*forward, backwards.record.id]
        assert map_ids(source="src") == forward
        assert map_ids(target="src") == [backwards.record.id]
        assert map_ids(source="tgt", target="src") == [backwards.record.id]
        assert map_ids(source="src", target="src") == []
        with pytest.raises(MapNotFound):
            maps.get(session, backwards.record.id + 1)
