"""Store maintenance through the `Registry` facade: ``verify_store`` names the rows of missing
and corrupt blobs, ``gc_store`` removes only unreferenced blobs past the grace period, on every
store backend (local folder, memory, S3), and an unreachable bucket writes no rows.


Every refusal is checked twice: the right error, and a registry left exactly as it was. Each
test runs on both real databases (a SQLite file, a PostgreSQL server) through the `registry`
fixture.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from crx.registry import Registry
from crx.registry.errors import BlobCorrupt, BlobMissing, StoreUnavailable
from tests.registry_world import _pairs, _snapshot, _vector
from tests.servers import free_port

# -- store maintenance ---------------------------------------------------------------------


def _blob_path(registry: Registry, oid: str) -> Path:
    return Path(registry.store.path(oid))


def _corrupt(registry: Registry, oid: str) -> None:
    path = _blob_path(registry, oid)
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[:-1] + b"!")


def _age(registry: Registry, oid: str, seconds: float) -> None:
    stamp = time.time() - seconds
    os.utime(_blob_path(registry, oid), (stamp, stamp))


def test_verify_store_names_the_rows_of_missing_and_corrupt_blobs(
    registry: Registry, tiny: str, tmp_path: Path
) -> None:
    joy = registry.register_concept("joy", _pairs("joy")).record
    calm = registry.register_concept("calm", _pairs("calm")).record
    shared = _vector(11)
    v1 = registry.save_vector(joy.ref, tiny, shared, origin="extracted").record
    v2 = registry.save_vector(calm.ref, tiny, shared, origin="extracted").record
    assert v1.oid == v2.oid
    map_record = registry.save_map(
        tiny, tiny, 0, 1, np.eye(32, dtype=np.float32), None, solver="ridge"
    ).record

    clean = registry.verify_store()
    assert (clean.checked, clean.ok, clean.problems, clean.unreferenced) == (4, 4, [], 0)

    _blob_path(registry, v1.oid).unlink()
    _corrupt(registry, joy.pairs_oid)
    report = registry.verify_store()
    assert (report.checked, report.ok, report.unreferenced) == (4, 2, 0)
    problems = {p.oid: p for p in report.problems}
    assert set(problems) == {v1.oid, joy.pairs_oid}
    assert problems[v1.oid].status == "missing"
    assert problems[v1.oid].referenced_by == sorted([f"vector {v1.id}", f"vector {v2.id}"])
    assert problems[joy.pairs_oid].status == "corrupt"
    assert problems[joy.pairs_oid].referenced_by == ["concept joy@1 (pairs)"]
    assert map_record.oid not in problems
    assert calm.pairs_oid not in problems

    with pytest.raises(BlobMissing):
        registry.load_vector(v2.id)
    with pytest.raises(BlobCorrupt):
        registry.load_pairs("joy@1")
    assert registry.load_pairs("calm") == _pairs("calm")


def test_gc_removes_only_unreferenced_old_blobs(registry: Registry, tiny: str, joy: str) -> None:
    vector = registry.save_vector(joy, tiny, _vector(12), origin="extracted").record
    corpus = registry.store.put(b"calibration corpus")
    dataset = registry.store.put(b"evaluation dataset")
    registry.save_map(
        tiny, tiny, 0, 0, np.eye(32, dtype=np.float32), None, solver="ridge", corpus_oid=corpus
    )
    registry.record_evaluation(tiny, "t", {"a": 1.0}, dataset_oid=dataset)
    referenced = set(registry.store.iter_oids())
    old_orphan = registry.store.put(b"left by a crashed register")
    young_orphan = registry.store.put(b"put a moment ago by a register in flight")
    for oid in (*referenced, old_orphan):
        _age(registry, oid, 3600)

    assert registry.verify_store().unreferenced == 2
    listed = registry.gc_store()
    assert listed.deleted is False
    assert listed.unreferenced == [old_orphan]
    everything = sorted(referenced | {old_orphan, young_orphan})
    assert sorted(registry.store.iter_oids()) == everything
    no_grace = registry.gc_store(dry_run=True, grace_seconds=0)
    assert sorted(no_grace.unreferenced) == sorted([old_orphan, young_orphan])
    assert sorted(registry.store.iter_oids()) == everything

    # Deleting with the default grace keeps the young blob.
    kept = registry.gc_store(dry_run=False)
    assert kept.deleted
    assert kept.unreferenced == [old_orphan]
    assert sorted(registry.store.iter_oids()) == sorted(referenced | {young_orphan})

    swept = registry.gc_store(dry_run=False, grace_seconds=0)
    assert swept.unreferenced == [young_orphan]
    assert sorted(registry.store.iter_oids()) == sorted(referenced)
    assert {corpus, dataset, vector.oid} <= set(registry.store.iter_oids())
    report = registry.verify_store()
    assert report.problems == []
    assert report.unreferenced == 0
    assert registry.gc_store(dry_run=False, grace_seconds=0).unreferenced == []


# -- the registry over every store backend -------------------------------------------------


def test_registry_works_over_every_store_backend(
    db_url: str, store_url: str, tiny_model_dir: Path, pairs_file: Path
) -> None:
    with Registry(db_url, store_url) as registry:
        registry.init()
        registry.register_model("tiny", str(tiny_model_dir))
        joy = registry.register_concept("joy", pairs_file).record
        array = _vector(13)
        vector = registry.save_vector(joy.ref, "tiny", array, origin="extracted").record
        np.testing.assert_array_equal(registry.load_vector(vector.id), array)
        orphan = registry.store.put(b"orphan")
        assert registry.verify_store().problems == []
        assert registry.gc_store(dry_run=True, grace_seconds=0).unreferenced == [orphan]
        assert registry.gc_store(dry_run=False).unreferenced == []  # too young to take
        assert registry.gc_store(dry_run=False, grace_seconds=0).unreferenced == [orphan]
        assert sorted(registry.store.iter_oids()) == sorted([joy.pairs_oid, vector.oid])

        if registry.store.is_local:
            os.chmod(registry.store.path(vector.oid), 0o644)
        registry.store.fs.pipe_file(registry.store.path(vector.oid), b"garbage")
        problems = registry.verify_store().problems
        assert [(p.oid, p.status, p.referenced_by) for p in problems] == [
            (vector.oid, "corrupt", [f"vector {vector.id}"])
        ]


def test_unreachable_bucket_fails_cleanly_and_writes_no_rows(
    db_url: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Registry(db_url, str(tmp_path / "unused")) as setup:
        setup.register_model("tiny", str(tiny_model_dir))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with Registry(db_url, "s3://crx-nowhere/store") as registry:
        before = _snapshot(registry, with_store=False)
        with pytest.raises(StoreUnavailable, match="s3://crx-nowhere/store"):
            registry.register_concept("joy", _pairs("a"))
        with pytest.raises(StoreUnavailable):
            registry.verify_store()
        assert _snapshot(registry, with_store=False) == before
