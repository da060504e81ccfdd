"""``crx store verify`` and ``crx store gc``: corrupt and missing blobs named with the rows
that use them, and garbage collection that lists by default and deletes only unreferenced
blobs older than the grace period.
"""

from __future__ import annotations

import json
import os
import time

from crx.registry.store import ObjectStore
from tests.cli_world import World

VERIFY_KEYS = {"store", "checked", "ok", "problems", "unreferenced"}
PROBLEM_KEYS = {"oid", "status", "referenced_by"}
GC_KEYS = {"store", "unreferenced", "deleted", "stale_temporary_files"}


# -- the store ------------------------------------------------------------------------------


def test_store_verify_names_corrupt_and_missing_blobs(populated_sqlite: World) -> None:
    w = populated_sqlite
    oid = w.facts["vector_oid"]
    assert w.ok("store", "verify").stdout == (
        f"store {w.store}: 3/3 referenced blobs ok, 0 unreferenced\n"
    )
    report = w.json("store", "verify")
    assert set(report) == VERIFY_KEYS
    assert (report["checked"], report["ok"], report["problems"]) == (3, 3, [])

    path = w.blob_path(oid)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    result = w.run("store", "verify")
    assert result.exit_code == 1
    assert result.stderr == "Error: 1 blob(s) missing or corrupt\n"
    assert f"corrupt {oid} <- vector {w.facts['vector_id']}" in result.stdout
    assert "2/3 referenced blobs ok" in result.stdout
    result = w.run("store", "verify", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert set(report["problems"][0]) == PROBLEM_KEYS
    assert report["problems"] == [
        {"oid": oid, "status": "corrupt", "referenced_by": [f"vector {w.facts['vector_id']}"]}
    ]

    path.unlink()
    pairs_blob = w.blob_path(w.facts["pairs_oid"])
    pairs_blob.chmod(0o644)
    pairs_blob.write_bytes(b"{}")
    result = w.run("store", "verify")
    assert result.exit_code == 1
    assert result.stderr == "Error: 2 blob(s) missing or corrupt\n"
    assert f"missing {oid} <- vector {w.facts['vector_id']}" in result.stdout
    assert f"corrupt {w.facts['pairs_oid']} <- concept joy@1 (pairs)" in result.stdout


def test_store_gc_lists_by_default_and_deletes_only_unreferenced(populated_sqlite: World) -> None:
    w = populated_sqlite
    referenced = w.blob_files()
    store = ObjectStore(str(w.store))
    old = store.put(b"an orphan from an interrupted register")
    hour_ago = time.time() - 3600
    os.utime(w.blob_path(old), (hour_ago, hour_ago))
    fresh = store.put(b"an orphan whose register may still be running")

    listed = w.ok("store", "gc").stdout
    assert listed == f"{old}\n1 unreferenced blob(s): would delete (run with --yes)\n"
    assert w.ok("store", "gc", "--dry-run").stdout == listed
    report = w.json("store", "gc", "--grace", "0")
    assert set(report) == GC_KEYS
    assert sorted(report["unreferenced"]) == sorted([old, fresh])
    assert report["deleted"] is False
    assert w.blob_path(old).exists()
    assert w.blob_path(fresh).exists()

    assert w.ok("store", "gc", "--yes").stdout == f"{old}\n1 unreferenced blob(s): deleted\n"
    assert not w.blob_path(old).exists()
    assert w.blob_path(fresh).exists()  # younger than the default grace period

    report = w.json("store", "gc", "--yes", "--grace", "0")
    assert report == {
        "store": str(w.store),
        "unreferenced": [fresh],
        "deleted": True,
        "stale_temporary_files": 0,
    }
    assert w.blob_files() == referenced
    # Nothing left: said as such, on a dry run and with --yes; the JSON keeps its shape.
    assert (
        w.ok("store", "gc").stdout == "nothing to delete (no unreferenced blob older than 600 s)\n"
    )
    assert w.ok("store", "gc", "--yes", "--grace", "0").stdout == (
        "nothing to delete (no unreferenced blob older than 0 s)\n"
    )
    assert w.json("store", "gc") == {
        "store": str(w.store),
        "unreferenced": [],
        "deleted": False,
        "stale_temporary_files": 0,
    }
    assert w.json("store", "verify")["ok"] == 3
    assert w.json("store", "gc", "--grace", "0")["unreferenced"] == []
