"""Store integrity: gc never loses a referenced blob, verify sees every blob, links and FIFOs.

The race is made deterministic: a writer in another process puts its blob (which is already in
the store, old and unreferenced, as a killed register or a prune leaves it), then waits; gc runs
and deletes that blob; then the writer commits. Before the blob lease, the committed row pointed
at nothing; now the writer finds the blob gone inside its transaction and puts it back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crx import Registry
from crx.registry.pairs import canonical_bytes, parse_pairs_file
from crx.registry.store import sha256_hex

WRITER = """
import sys, time
from pathlib import Path
from crx import Registry

db, store, pairs, marker, go = sys.argv[1:6]
reg = Registry(db, store)
real_put = reg.store.put
paused = []

def put_then_wait(data):
    oid = real_put(data)
    if not paused:  # the first put: the pairs blob, before the write transaction
        paused.append(oid)
        # Written under another name, then renamed: the test never reads a half-written marker.
        Path(marker + ".tmp").write_text(oid)
        Path(marker + ".tmp").rename(marker)
        deadline = time.monotonic() + 60
        while not Path(go).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    return oid

reg.store.put = put_then_wait
print(reg.register_concept("joy", pairs).record.ref)
"""


@pytest.fixture
def local(tmp_path: Path, sqlite_template: Path) -> Iterator[tuple[Registry, Path]]:
    """A registry on a SQLite file with a local store, and the store's folder."""
    import shutil

    shutil.copy(sqlite_template, tmp_path / "r.db")
    store = tmp_path / "store"
    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}", str(store))
    reg.init()
    yield reg, store
    reg.close()


def _age(store: Path, oid: str, seconds: float) -> None:
    path = store / oid[:2] / oid[2:]
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


def test_a_register_committing_inside_gcs_window_keeps_its_blob(
    db_url: str, tmp_path: Path, pairs_file: Path
) -> None:
    store = tmp_path / "store"
    reg = Registry(db_url, str(store))
    reg.init()
    # The pairs blob is already there, unreferenced and older than the grace period.
    data = canonical_bytes(parse_pairs_file(pairs_file))
    oid = reg.store.put(data)
    _age(store, oid, 3600)
    marker, go = tmp_path / "put-done", tmp_path / "go"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, db_url, str(store), str(pairs_file), str(marker), str(go)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline and writer.poll() is None:
            time.sleep(0.02)
        assert marker.read_text() == oid  # the writer's put found the old blob and kept it
        report = reg.gc_store(dry_run=False, grace_seconds=60)
        assert report.unreferenced == [oid]  # gc did delete it, inside the writer's window
        assert not (store / oid[:2] / oid[2:]).exists()
        gc_events = [e for e in reg.audit_events(limit=0).items if e.action == "gc"]
        assert [(e.object_kind, e.old) for e in gc_events] == [("blob", {"oids": [oid]})]
        go.write_text("go")
        out, err = writer.communicate(timeout=120)
    finally:
        go.write_text("go")
        writer.kill() if writer.poll() is None else None
    assert writer.returncode == 0, err
    assert out.strip() == "joy@1"
    verify = reg.verify_store()
    assert verify.problems == []
    assert reg.get_concept("joy").pairs_oid == oid
    assert reg.load_pairs("joy") == parse_pairs_file(pairs_file)
    reg.close()


def test_gc_spares_a_blob_referenced_by_then(db_url: str, tmp_path: Path, pairs_file: Path) -> None:
    """Candidates are re-checked inside gc's transaction: a row committed after gc listed them
    keeps its blob."""
    store = tmp_path / "store"
    reg = Registry(db_url, str(store))
    reg.init()
    oid = reg.store.put(canonical_bytes(parse_pairs_file(pairs_file)))
    _age(store, oid, 3600)
    assert reg.gc_store(dry_run=True, grace_seconds=60).unreferenced == [oid]
    reg.register_concept("joy", pairs_file)
    _age(store, oid, 3600)  # a put of existing content may refresh nothing: still old
    report = reg.gc_store(dry_run=False, grace_seconds=60)
    assert report.unreferenced == []
    assert reg.verify_store().problems == []
    reg.close()


def test_registering_the_same_content_repairs_a_corrupt_blob(
    local: tuple[Registry, Path], tmp_path: Path, pairs_file: Path
) -> None:
    reg, store = local
    oid = reg.register_concept("joy", pairs_file).record.pairs_oid
    blob = store / oid[:2] / oid[2:]
    blob.chmod(0o644)
    blob.write_bytes(b"flipped bits")
    assert [p.status for p in reg.verify_store().problems] == ["corrupt"]
    again = reg.register_concept("joy", pairs_file)
    assert not again.created
    assert reg.verify_store().problems == []
    assert sha256_hex(blob.read_bytes()) == oid
    reg.close()


def test_gc_never_follows_a_link_out_of_the_store(
    local: tuple[Registry, Path], tmp_path: Path, pairs_file: Path
) -> None:
    reg, store = local
    outside = tmp_path / "outside"
    outside.mkdir()
    victims = [outside / ("c" * 62), outside / ".tmp-keep-me"]
    for victim in victims:
        victim.write_text("not the store's")
    (store / "ab").symlink_to(outside, target_is_directory=True)  # a linked shard folder
    stray = store / "cd"
    stray.mkdir()
    (stray / ("e" * 62)).symlink_to(victims[0])  # a linked blob name
    unreferenced = reg.store.put(b"an unreferenced blob")
    _age(store, unreferenced, 3600)
    report = reg.gc_store(dry_run=False, grace_seconds=0)
    assert report.unreferenced == [unreferenced]
    assert all(v.read_text() == "not the store's" for v in victims)
    assert (stray / ("e" * 62)).is_symlink()
    assert json.loads(reg.verify_store().model_dump_json())["unreferenced"] == 0
    reg.close()


def test_verify_checks_optional_blobs_that_are_present(
    local: tuple[Registry, Path], pairs_file: Path, tiny_model_dir: Path
) -> None:
    reg, store = local
    reg.register_model("tiny", str(tiny_model_dir))
    dataset = reg.store.put(b"a held-out dataset")
    reg.record_evaluation("tiny", "emotion", {"token_accuracy": 0.5}, dataset_oid=dataset)
    assert reg.verify_store().checked == 1  # the dataset is checked though only optional
    blob = store / dataset[:2] / dataset[2:]
    blob.chmod(0o644)
    blob.write_bytes(b"edited")
    report = reg.verify_store()
    assert [(p.oid, p.status) for p in report.problems] == [(dataset, "corrupt")]
    assert report.problems[0].referenced_by[0].endswith("(dataset)")
    blob.unlink()
    assert reg.verify_store().problems == []  # an optional blob may be gone
    reg.close()


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_fifo_or_folder_in_a_blobs_place_is_that_blobs_problem(tmp_path: Path, kind: str) -> None:
    """No hang, no abort: verify names the blob, export is one Error line (run in a child so a
    regression that blocks on the FIFO fails on its timeout instead of hanging the suite)."""
    script = f"""
import os, sys, numpy as np
from pathlib import Path
from crx import Registry, CrxError
reg = Registry("sqlite:///{tmp_path}/r.db", "{tmp_path}/store")
reg.init()
folder = Path("{tmp_path}/model"); folder.mkdir()
(folder / "config.json").write_text('{{"architectures": ["LlamaForCausalLM"],'
    ' "model_type": "llama", "num_hidden_layers": 2, "hidden_size": 4, "vocab_size": 10}}')
reg.register_model("tiny", str(folder))
from crx.registry.pairs import ContrastPair
reg.register_concept("joy", [ContrastPair(positive="glad", negative="sad")])
vector = reg.save_vector("joy", "tiny", np.ones((2, 4), np.float32), origin="extracted").record
path = Path(reg.store.path(vector.oid))
path.chmod(0o644); path.unlink()
os.mkfifo(path) if "{kind}" == "fifo" else path.mkdir()
report = reg.verify_store()
print([(p.oid == vector.oid, p.status) for p in report.problems])
try:
    reg.load_vector(vector.id)
except CrxError as exc:
    print("error:", exc)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "[(True, 'corrupt')]"
    assert "is corrupt (it is not a regular file)" in lines[1]
