"""Several real processes against one registry, and processes killed mid-write.

Workers are separate Python interpreters (``python -c``) on the same SQLite file or PostgreSQL
database and the same store folder. They start together: each one opens the registry, prints
``ready`` and waits for ``go`` on stdin, so the registrations really overlap.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from crx.registry import Registry
from crx.registry.pairs import ContrastPair
from crx.registry.store import BlobStatus
from tests.databases import postgres_url, sqlite_url

N_WORKERS = 4
PER_WORKER = 4

WORKER = """
import json, sys
from crx.registry import Registry
from crx.registry.pairs import ContrastPair

db, store, worker, per_worker = sys.argv[1:5]
registry = Registry(db, store)
registry.list_concepts(limit=1)  # connect and check the schema before the start line


def register(concept, tag):
    pairs = [ContrastPair(f"{tag} kind {i}", f"{tag} cruel {i}") for i in range(3)]
    result = registry.register_concept(concept, pairs)
    line = dict(tag=tag, version=result.record.version, created=result.created)
    print(json.dumps(line), flush=True)


print("ready", flush=True)
assert sys.stdin.readline().strip() == "go"
for i in range(int(per_worker)):  # phase 1: different content, same concept
    register("race", f"w{worker}-c{i}")
print("phase done", flush=True)
assert sys.stdin.readline().strip() == "go"
register("same", "shared")  # phase 2: identical content, a concept nobody registered yet
registry.close()
"""

KILLABLE = """
import sys
import numpy as np
from crx.registry import Registry
from crx.registry.pairs import ContrastPair

db, store, seed = sys.argv[1:4]
registry = Registry(db, store)
registry.list_concepts(limit=1)
rng = np.random.default_rng(int(seed))
print("ready", flush=True)
i = 0
while True:
    text = "x" * 2000
    pairs = [ContrastPair(f"{seed}-{i}-{j} {text}", f"{seed}-{i}-{j} no {text}") for j in range(50)]
    version = registry.register_concept("killed", pairs).record
    array = rng.standard_normal((16, 4096)).astype(np.float32)
    registry.save_vector(version.ref, "big", array, origin="extracted")
    print("wrote", flush=True)
    i += 1
"""


def _start(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_ready(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    line = process.stdout.readline()
    if line.strip() != "ready":
        _, err = process.communicate(timeout=30)
        raise AssertionError(f"worker did not start: {line!r}\n{err}")


def _release(workers: list[subprocess.Popen[str]]) -> None:
    for worker in workers:  # all at once
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()


def _lines_until(worker: subprocess.Popen[str], marker: str) -> list[dict]:
    assert worker.stdout is not None
    lines = []
    for line in worker.stdout:
        if line.strip() == marker:
            return lines
        lines.append(json.loads(line))
    _, err = worker.communicate(timeout=30)
    raise AssertionError(f"worker stopped before {marker!r}: {err}")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def concurrent_run(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_template: Path,
) -> dict:
    """Run N_WORKERS processes through both phases once per database kind."""
    tmp_path = tmp_path_factory.mktemp("concurrent")
    if request.param == "sqlite":
        db_url = sqlite_url(tmp_path, sqlite_template)
    else:
        db_url = postgres_url(request.getfixturevalue("postgres_server"))
    store = str(tmp_path / "store")
    with Registry(db_url, store) as registry:
        registry.init()
    env = {**os.environ, "CRX_ACTOR": "worker", "CRX_HOME": str(tmp_path / "home")}
    workers = [
        _start(WORKER, db_url, store, str(n), str(PER_WORKER), env=env) for n in range(N_WORKERS)
    ]
    try:
        for worker in workers:
            _wait_ready(worker)
        _release(workers)
        distinct = [_lines_until(worker, "phase done") for worker in workers]
        _release(workers)
        outputs = [worker.communicate(timeout=120) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    same = []
    for worker, (out, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
        assert "Traceback" not in err, err
        assert "Error" not in err, err
        same.append([json.loads(line) for line in out.splitlines()])
    return {"db_url": db_url, "store": store, "distinct": distinct, "same": same}


def test_concurrent_distinct_content_gets_distinct_versions(concurrent_run: dict) -> None:
    results = concurrent_run["distinct"]
    lines = [line for worker in results for line in worker]
    assert all(len(worker) == PER_WORKER for worker in results)
    versions = sorted(line["version"] for line in lines)
    total = N_WORKERS * PER_WORKER
    assert versions == list(range(1, total + 1)), versions
    assert all(line["created"] for line in lines)
    with Registry(concurrent_run["db_url"], concurrent_run["store"]) as registry:
        stored = registry.concept_versions("race")
        assert [v.version for v in stored] == list(range(1, total + 1))
        by_version = {line["version"]: line["tag"] for line in lines}
        for version in stored:  # each number holds the content its worker was told it got
            tag = by_version[version.version]
            assert registry.load_pairs(version.ref)[0] == ContrastPair(
                f"{tag} kind 0", f"{tag} cruel 0"
            )
        events = registry.audit_events(limit=None).items
        race_events = [e.object_ref for e in events if e.object_ref.startswith("race@")]
        assert sorted(race_events) == sorted(f"race@{v}" for v in versions)
        assert registry.verify_store().problems == []


def test_concurrent_identical_content_gets_one_version(concurrent_run: dict) -> None:
    lines = [line for worker in concurrent_run["same"] for line in worker]
    assert len(lines) == N_WORKERS
    assert {line["version"] for line in lines} == {1}
    assert sum(line["created"] for line in lines) == 1
    with Registry(concurrent_run["db_url"], concurrent_run["store"]) as registry:
        assert [v.ref for v in registry.concept_versions("same")] == ["same@1"]
        assert [c.name for c in registry.list_concepts().items] == ["race", "same"]
        events = registry.audit_events(limit=None).items
        same_events = [(e.action, e.object_ref) for e in events if "same" in e.object_ref]
        assert same_events == [("register", "same@1")]


def test_kill_during_writes_leaves_a_consistent_registry(db_url: str, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    model_dir = tmp_path / "big-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(
        json.dumps({"model_type": "llama", "num_hidden_layers": 16, "hidden_size": 4096})
    )
    with Registry(db_url, store) as registry:
        registry.init()
        registry.register_model("big", str(model_dir))

    chooser = random.Random()
    delays = []
    for round_number in range(4):
        worker = _start(KILLABLE, db_url, store, str(round_number))
        _wait_ready(worker)
        # One whole write first, so the kill lands mid-write even on a loaded machine (where a
        # fixed delay could end before the first commit, and the test would prove nothing).
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "wrote", worker.communicate(timeout=30)
        delay = chooser.uniform(0.05, 0.5)
        delays.append(round(delay, 3))
        time.sleep(delay)
        os.kill(worker.pid, signal.SIGKILL)
        worker.communicate(timeout=30)
        assert worker.returncode == -signal.SIGKILL, f"worker died on its own: {delays}"

        with Registry(db_url, store) as registry:
            report = registry.verify_store()
            assert report.problems == [], (delays, report.problems)
            # No half-written blob is ever visible under its final name.
            for oid in registry.store.iter_oids():
                assert registry.store.status(oid) is BlobStatus.OK, (delays, oid)
            vectors = registry.list_vectors(limit=None).items
            for vector in vectors:
                assert registry.load_vector(vector.id).shape == (16, 4096)

    with Registry(db_url, store) as registry:
        versions = [v.version for v in registry.concept_versions("killed")]
        assert versions, f"the worker never committed anything (delays {delays})"
        assert versions == list(range(1, len(versions) + 1)), versions  # no holes
        # Registration still works after the kills, and the new version comes next.
        fresh = registry.register_concept("killed", [ContrastPair("after", "kills")]).record
        assert fresh.version == len(versions) + 1
        array = np.ones((16, 4096), dtype=np.float32)
        vector = registry.save_vector(fresh.ref, "big", array, origin="extracted").record
        np.testing.assert_array_equal(registry.load_vector(vector.id), array)
        assert registry.verify_store().problems == []
