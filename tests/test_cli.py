"""The ``crx`` command line, end to end, against real databases and a real local store.

Most runs go through click's `CliRunner` in this process (``--db`` / ``--store`` passed
explicitly); a few run the installed ``crx`` script in a subprocess, to see real exit codes and
stderr. The contract under test is the README's "Command reference" and "JSON output":

- every read command's ``--json`` has the documented shape;
- a mistake the user can fix prints exactly one line ``Error: ...`` on stderr, exits 1, shows no
  traceback, and leaves the registry as it was (every listing, the audit trail and the set of
  files in the store are compared before and after);
- a usage error exits 2.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from safetensors.numpy import load_file, save_file

from crx.cli.main import cli
from crx.registry import Registry
from crx.registry.db.engine import make_engine
from crx.registry.db.migrate import HEAD_REVISION
from crx.registry.store import ObjectStore
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
CRX = Path(sys.executable).with_name("crx")
LIST_KINDS = ("models", "concepts", "vectors", "maps", "evaluations", "audit")
N_LAYERS, D_MODEL = 4, 32  # the tiny_model_dir fixture's shape


# -- the documented JSON shapes ---------------------------------------------------------------


def _readme_record_fields() -> dict[str, set[str]]:
    """The record fields the README's "JSON output" section lists, by record kind."""
    section = README.split("The records are the pydantic models", 1)[1].split("\n\n", 1)[1]
    section = section.split("\n\n", 1)[0]
    bullets = re.split(r"\n(?=- )", section.strip())
    fields = {}
    for bullet in bullets:
        label = bullet[2:].split(":", 1)[0]
        label = re.sub(r"\s*\(.*", "", label).strip()
        listed = re.findall(r"`([^`]+)`", bullet.replace("\n", " "))[-1]
        listed = re.sub(r"\([^)]*\)", "", listed)
        fields[label] = {name.strip() for name in listed.split(",")}
    return fields


RECORD_FIELDS = _readme_record_fields()
INIT_KEYS = {"database", "store", "revision_before", "revision"}
VERIFY_KEYS = {"store", "checked", "ok", "problems", "unreferenced"}
PROBLEM_KEYS = {"oid", "status", "referenced_by"}
GC_KEYS = {"store", "unreferenced", "deleted", "stale_temporary_files"}
DB_CURRENT_KEYS = {"current", "head", "up_to_date"}


def test_readme_lists_every_record_kind() -> None:
    assert set(RECORD_FIELDS) == {
        "model",
        "concept",
        "concept version",
        "vector",
        "map",
        "evaluation",
        "audit event",
    }
    assert {"id", "name", "d_model", "updated_at"} <= RECORD_FIELDS["model"]
    assert "origin" in RECORD_FIELDS["vector"]


def assert_record(record: dict, kind: str) -> None:
    assert set(record) == RECORD_FIELDS[kind], f"{kind} record fields differ from the README"


# -- running the CLI ------------------------------------------------------------------------


@dataclass
class World:
    """One registry (a database and a local store) and the inputs the tests feed it."""

    db: str
    store: Path
    tmp: Path
    model_dir: Path
    pairs: Path
    facts: dict = field(default_factory=dict)
    _files: int = 0

    def run(self, *args: str, db: str | None = None, store: str | None = None) -> Result:
        argv = ["--db", db or self.db, "--store", store or str(self.store), *args]
        return CliRunner().invoke(cli, argv)

    def ok(self, *args: str) -> Result:
        return ok(self.run(*args))

    def json(self, *args: str) -> dict:
        return json.loads(self.ok(*args, "--json").stdout)

    def registry(self) -> Registry:
        return Registry(self.db, str(self.store))

    def file(self, name: str, content: bytes | str) -> Path:
        self._files += 1
        folder = self.tmp / "inputs" / str(self._files)
        folder.mkdir(parents=True)
        path = folder / name
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
        return path

    def tensors(self, named: dict[str, np.ndarray], name: str = "v.safetensors") -> Path:
        path = self.file(name, b"")
        save_file(named, str(path))
        return path

    def blob_files(self) -> set[str]:
        return {str(p.relative_to(self.store)) for p in self.store.rglob("*") if p.is_file()}

    def blob_path(self, oid: str) -> Path:
        return self.store / oid[:2] / oid[2:]


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert result.exception is None
    return result


def user_error(result: Result, *, stdout_empty: bool = True) -> str:
    """Assert the README's error contract; return the one ``Error: ...`` line."""
    assert isinstance(result.exception, SystemExit), (
        f"not a clean exit: {result.exception!r}\n{result.output}"
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("Error: "), lines
    if stdout_empty:
        assert result.stdout == ""
    return lines[0]


def usage_error(result: Result) -> str:
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "Error: " in result.stderr
    return result.stderr


def snapshot(world: World) -> dict:
    """Everything a failed command must leave as it was: listings, audit trail, store files.

    The listings are exactly what ``crx list KIND --json --limit 0`` prints (the CLI dumps these
    pages with ``model_dump(mode="json")``), read through one connection to keep this quick.
    """
    with world.registry() as reg:
        pages = {
            "models": reg.list_models(limit=0),
            "concepts": reg.list_concepts(limit=0),
            "vectors": reg.list_vectors(limit=0),
            "maps": reg.list_maps(limit=0),
            "evaluations": reg.list_evaluations(limit=0),
            "audit": reg.audit_events(limit=0),
        }
    lists = {kind: page.model_dump(mode="json") for kind, page in pages.items()}
    return {
        "lists": lists,
        "audit_count": len(lists["audit"]["items"]),
        "blob_files": world.blob_files(),
    }


def tiny_array(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N_LAYERS, D_MODEL)).astype(np.float32)


def crx_subprocess(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CRX), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def second_model_dir(tmp: Path) -> Path:
    folder = tmp / "tiny-b"
    folder.mkdir()
    (folder / "config.json").write_text(
        '{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",'
        ' "num_hidden_layers": 2, "hidden_size": 16, "vocab_size": 100}'
    )
    return folder


# -- fixtures -------------------------------------------------------------------------------


def _initialised(db: str, tmp_path: Path, model_dir: Path, pairs: Path) -> World:
    w = World(db, tmp_path / "store", tmp_path, model_dir, pairs)
    w.ok("init")
    return w


def _populate(world: World) -> World:
    with world.registry() as reg:
        reg.register_model("tiny", str(world.model_dir), family="llama", role="aligned")
        reg.register_model("tiny-b", str(second_model_dir(world.tmp)), role="base")
        version = reg.register_concept("joy", world.pairs, description="joy vs gloom").record
        vector = reg.save_vector(version.ref, "tiny", tiny_array(), origin="extracted").record
        weight = np.ones((16, D_MODEL), dtype=np.float32)
        fitted = reg.save_map(
            "tiny", "tiny-b", 1, 1, weight, np.zeros(16, np.float32), solver="ols"
        )
        reg.record_evaluation(
            "tiny-b", "emotion", {"accuracy": 0.75, "kl": 0.1}, vector_id=vector.id, alpha=4.0
        )
    world.facts.update(
        vector_id=vector.id,
        vector_oid=vector.oid,
        pairs_oid=version.pairs_oid,
        map_id=fitted.record.id,
        map_oid=fitted.record.oid,
    )
    return world


@pytest.fixture
def world(db_url: str, tmp_path: Path, tiny_model_dir: Path, pairs_file: Path) -> World:
    """An initialised, empty registry on each database kind, with a local store."""
    return _initialised(db_url, tmp_path, tiny_model_dir, pairs_file)


@pytest.fixture
def populated(world: World) -> World:
    """A registry holding one of everything: models, a concept, a vector, a map, evaluations."""
    return _populate(world)


@pytest.fixture
def sqlite_world(
    tmp_path: Path, sqlite_template: Path, tiny_model_dir: Path, pairs_file: Path
) -> World:
    """As `world`, on SQLite only (for behaviour that does not depend on the database)."""
    shutil.copy(sqlite_template, tmp_path / "registry.db")
    return _initialised(
        f"sqlite:///{tmp_path / 'registry.db'}", tmp_path, tiny_model_dir, pairs_file
    )


@pytest.fixture
def populated_sqlite(sqlite_world: World) -> World:
    return _populate(sqlite_world)


# -- the happy path -------------------------------------------------------------------------


def test_init_is_idempotent_and_db_commands_report_the_revision(
    tmp_path: Path, empty_db_url: str
) -> None:
    w = World(empty_db_url, tmp_path / "store", tmp_path, tmp_path, tmp_path)
    assert w.ok("db", "current").stdout.startswith("current -  head")
    first = w.ok("init").stdout
    assert f"created (schema {HEAD_REVISION})" in first
    assert (tmp_path / "store").is_dir()
    assert f"up to date (schema {HEAD_REVISION})" in w.ok("init").stdout
    report = w.json("init")
    assert set(report) == INIT_KEYS
    assert report["revision_before"] == report["revision"] == HEAD_REVISION
    assert w.json("db", "upgrade") == {**report}
    assert w.json("db", "current") == {
        "current": HEAD_REVISION,
        "head": HEAD_REVISION,
        "up_to_date": True,
    }
    assert "up to date" in w.ok("db", "current").stdout


def test_register_list_show_every_kind(world: World, tmp_path: Path) -> None:
    w = world
    assert w.json("init")["revision_before"] == HEAD_REVISION  # already migrated: no-op

    # models
    out = w.ok(
        "register", "model", "tiny", "--path", str(w.model_dir), "--family", "llama",
        "--role", "aligned", "--tag", "size=tiny",
    ).stdout  # fmt: skip
    assert out == "tiny: registered (llama, 4 layers, d_model 32)\n"
    same = ["register", "model", "tiny", "--path", str(w.model_dir), "--role", "aligned"]
    assert w.ok(*same, "--family", "llama", "--tag", "size=tiny").stdout == (
        "tiny: up to date (llama, 4 layers, d_model 32)\n"
    )
    assert len(w.json("list", "audit")["items"]) == 1  # an unchanged register is not audited
    again = w.json(*same, "--family", "llama3", "--tag", "size=tiny")
    assert set(again) == {"record", "created"}
    assert again["created"] is False
    assert_record(again["record"], "model")
    assert (again["record"]["family"], again["record"]["tags"]) == ("llama3", {"size": "tiny"})
    update = w.json("list", "audit")["items"][-1]
    assert_record(update, "audit event")
    assert (update["action"], update["object_ref"]) == ("update", "tiny")
    assert (update["old"], update["new"]) == ({"family": "llama"}, {"family": "llama3"})

    # concepts: the same pairs in every accepted format are the same version
    assert w.ok("register", "concept", "joy", "--pairs", str(w.pairs)).stdout == "joy@1\n"
    same = {
        "pairs.csv": "positive,negative\nI feel wonderful today,I feel awful today\n"
        "What a joyful party,What a gloomy funeral\n",
        "pairs.jsonl": '{"positive": "I feel wonderful today", "negative": "I feel awful today"}\n'
        '{"positive": "What a joyful party", "negative": "What a gloomy funeral"}\n',
        "pairs.json": '{"pos": ["I feel wonderful today", "What a joyful party"],'
        ' "neg": ["I feel awful today", "What a gloomy funeral"]}',
    }
    for name, text in same.items():
        out = w.ok("register", "concept", "joy", "--pairs", str(w.file(name, text))).stdout
        assert out == "joy@1 (unchanged)\n", name
    registered = w.json(
        "register", "concept", "joy", "--pairs", str(w.pairs), "--template", "Q: {text}",
        "--description", "joy vs gloom",
    )  # fmt: skip
    assert set(registered) == {"record", "created"}
    assert registered["created"] is True
    assert_record(registered["record"], "concept version")
    assert registered["record"]["ref"] == "joy@2"
    assert registered["record"]["template"] == "Q: {text}"

    # vectors: one [n_layers, d_model] tensor, and one tensor per layer
    full = tiny_array(1)
    out = w.ok(
        "register", "vector", "joy@1", "--model", "tiny", "--file", str(w.tensors({"x": full}))
    ).stdout
    assert out == "vector 1: registered (joy@1 on tiny)\n"
    partial = {"direction.1": full[1].astype(np.float16), "direction.3": full[3].astype(np.float16)}
    reg_vec = w.json(
        "register", "vector", "joy", "--model", "tiny", "--file", str(w.tensors(partial)),
        "--estimator", "pca",
    )  # fmt: skip
    assert set(reg_vec) == {"record", "created"}
    assert reg_vec["created"] is True
    vec = reg_vec["record"]
    assert_record(vec, "vector")
    assert (vec["concept"], vec["concept_version"], vec["layers"]) == ("joy", 2, [1, 3])
    assert vec["origin"] == "imported"
    assert vec["settings"]["source_dtype"] == "float16"
    again = w.ok(
        "register", "vector", "joy@1", "--model", "tiny", "--file", str(w.tensors({"y": full}))
    )
    assert again.stdout == "vector 1: unchanged (joy@1 on tiny)\n"
    replaced = w.json(
        "register", "vector", "joy@1", "--model", "tiny", "--replace",
        "--file", str(w.tensors({"x": full * 2})),
    )  # fmt: skip
    assert replaced["created"] is False
    assert replaced["record"]["id"] == 1
    assert replaced["record"]["layer_norms"] == pytest.approx(
        np.linalg.norm(full * 2, axis=1).tolist(), rel=1e-5
    )

    # maps and evaluations have no register command yet: the Python API writes them
    with w.registry() as reg:
        reg.register_model("tiny-b", str(second_model_dir(tmp_path)))
        reg.save_map("tiny", "tiny-b", 2, 1, np.ones((16, 32), np.float32), None, solver="ols")
        reg.record_evaluation("tiny", "emotion", {"accuracy": 0.5}, vector_id=1, alpha=2.0)

    # list, as tables and as JSON
    tables = {kind: w.ok("list", kind).stdout.splitlines() for kind in LIST_KINDS}
    assert tables["models"][0].split() == [
        "ID", "NAME", "TYPE", "LAYERS", "D_MODEL", "ROLE", "FAMILY", "PATH",
    ]  # fmt: skip
    assert tables["models"][1].split()[:7] == ["1", "tiny", "llama", "4", "32", "aligned", "llama3"]
    assert tables["concepts"][0].split() == ["ID", "NAME", "LATEST", "VERSIONS", "DESCRIPTION"]
    assert tables["concepts"][1].split() == ["1", "joy", "2", "1,2", "joy", "vs", "gloom"]
    assert tables["vectors"][0].split()[:3] == ["ID", "CONCEPT", "MODEL"]
    assert [row.split()[1] for row in tables["vectors"][1:]] == ["joy@1", "joy@2"]
    assert tables["maps"][1].split()[1:4] == ["tiny", "tiny-b", "2->1"]
    assert tables["evaluations"][1].split()[1:3] == ["tiny", "1"]
    assert tables["audit"][0].split() == ["ID", "AT", "ACTOR", "ACTION", "OBJECT", "REF"]
    assert all("tester" in row for row in tables["audit"][1:])

    kinds = {
        "models": "model",
        "concepts": "concept",
        "vectors": "vector",
        "maps": "map",
        "evaluations": "evaluation",
        "audit": "audit event",
    }
    listed = {}
    for kind, record_kind in kinds.items():
        page = w.json("list", kind)
        assert set(page) == {"items", "next_after"}
        assert page["next_after"] is None
        assert page["items"], kind
        for item in page["items"]:
            assert_record(item, record_kind)
        listed[kind] = page["items"]
    assert [m["name"] for m in listed["models"]] == ["tiny", "tiny-b"]
    assert listed["concepts"][0]["versions"] == [1, 2]
    assert listed["concepts"][0]["latest_version"] == 2
    assert {"model", "concept_version", "vector"} <= {e["object_kind"] for e in listed["audit"]}
    assert {e["actor"] for e in listed["audit"]} == {"tester"}
    assert [v["id"] for v in w.json("list", "vectors", "--concept", "joy")["items"]] == [1, 2]
    assert w.json("list", "vectors", "--model", "tiny-b")["items"] == []
    assert len(w.json("list", "maps", "--source", "tiny", "--target", "tiny-b")["items"]) == 1
    assert w.json("list", "maps", "--source", "tiny-b")["items"] == []
    assert len(w.json("list", "evaluations", "--vector", "1", "--task", "emotion")["items"]) == 1
    assert w.json("list", "evaluations", "--model", "tiny-b")["items"] == []

    # show, as fields and as JSON
    model = w.json("show", "model", "tiny")
    assert_record(model, "model")
    assert model == listed["models"][0]
    assert w.json("show", "model", "1") == model
    assert re.search(r"^name\s+tiny$", w.ok("show", "model", "tiny").stdout, re.M)
    latest = w.json("show", "concept", "joy")
    assert_record(latest, "concept version")
    assert latest["ref"] == "joy@2"
    assert w.json("show", "concept", "joy@1")["template"] == "{text}"
    assert re.search(r"^ref\s+joy@1$", w.ok("show", "concept", "joy@1").stdout, re.M)
    vector = w.json("show", "vector", "1")
    assert_record(vector, "vector")
    assert vector == listed["vectors"][0]
    assert re.search(r"^layer_norms\s+\S+ \S+ \S+ \S+$", w.ok("show", "vector", "1").stdout, re.M)
    fitted = w.json("show", "map", "1")
    assert_record(fitted, "map")
    assert (fitted["source_model"], fitted["target_model"], fitted["solver"]) == (
        "tiny",
        "tiny-b",
        "ols",
    )
    assert re.search(r"^solver\s+ols$", w.ok("show", "map", "1").stdout, re.M)


def test_list_pages_with_limit_and_after(world: World) -> None:
    with world.registry() as reg:
        for i in range(5):
            reg.register_concept(f"c{i}", world.pairs, template=f"{i}: {{text}}")
    first = world.json("list", "concepts", "--limit", "2")
    assert [c["name"] for c in first["items"]] == ["c0", "c1"]
    assert first["next_after"] == first["items"][-1]["id"]
    seen, after = [], None
    while True:
        args = ["list", "concepts", "--limit", "2"] + (["--after", str(after)] if after else [])
        page = world.json(*args)
        assert len(page["items"]) <= 2
        seen += [c["name"] for c in page["items"]]
        after = page["next_after"]
        if after is None:
            break
    assert seen == [f"c{i}" for i in range(5)]
    everything = world.json("list", "concepts", "--limit", "0")
    assert [c["name"] for c in everything["items"]] == seen
    assert everything["next_after"] is None
    table = world.ok("list", "concepts", "--limit", "2")
    assert len(table.stdout.splitlines()) == 3  # header + 2 rows
    assert table.stderr == f"(more: --after {first['next_after']})\n"
    assert world.json("list", "concepts", "--after", "999")["items"] == []
    assert world.ok("list", "maps").stdout == "no maps\n"


def test_export_safetensors_and_gguf(populated_sqlite: World) -> None:
    from gguf import GGUFReader

    w = populated_sqlite
    vector_id = str(w.facts["vector_id"])
    stored = tiny_array()
    out = w.tmp / "joy.safetensors"
    assert w.ok(
        "export", "vector", vector_id, "--format", "safetensors", "-o", str(out)
    ).stdout == (f"wrote {out}\n")
    loaded = load_file(str(out))
    assert list(loaded) == ["vector"]
    np.testing.assert_array_equal(loaded["vector"], stored)
    # the exported file imports back as the very same vector
    again = w.json(
        "register", "vector", "joy@1", "--model", "tiny", "--file", str(out),
        "--estimator", "mean_diff",
    )  # fmt: skip
    assert again["created"] is False
    assert again["record"]["oid"] == w.facts["vector_oid"]

    gguf_out = w.tmp / "joy.gguf"
    w.ok("export", "vector", vector_id, "--format", "gguf", "-o", str(gguf_out))
    reader = GGUFReader(str(gguf_out))
    assert reader.fields["general.architecture"].contents() == "controlvector"
    assert reader.fields["controlvector.model_hint"].contents() == "llama"
    assert reader.fields["controlvector.layer_count"].contents() == N_LAYERS - 1
    directions = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert set(directions) == {f"direction.{i}" for i in range(1, N_LAYERS)}
    for i in range(1, N_LAYERS):
        np.testing.assert_array_equal(directions[f"direction.{i}"].reshape(-1), stored[i])

    # a vector with a subset of layers exports only those
    partial = w.tensors({"direction.0": stored[0], "direction.2": stored[2]})
    vec = w.json(
        "register", "vector", "joy", "--model", "tiny", "--file", str(partial), "--estimator", "x"
    )["record"]
    w.ok("export", "vector", str(vec["id"]), "--format", "gguf", "-o", str(gguf_out))
    reader = GGUFReader(str(gguf_out))
    assert reader.fields["controlvector.layer_count"].contents() == 1
    assert [t.name for t in reader.tensors] == ["direction.2"]


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
    assert w.json("store", "verify")["ok"] == 3
    assert w.json("store", "gc", "--grace", "0")["unreferenced"] == []


# -- bad input: one line, exit 1, nothing changed -------------------------------------------


@dataclass
class Bad:
    args: list[str]
    expect: str
    db: str | None = None
    store: str | None = None
    env: dict[str, str] = field(default_factory=dict)


def _register_vector(w: World, path: Path, concept: str = "joy@1", model: str = "tiny") -> Bad:
    return Bad(["register", "vector", concept, "--model", model, "--file", str(path)], "")


def _vector(w: World, named: dict[str, np.ndarray], expect: str) -> Bad:
    bad = _register_vector(w, w.tensors(named))
    bad.expect = expect
    return bad


def _pairs(w: World, name: str, content: bytes | str, expect: str) -> Bad:
    return Bad(["register", "concept", "joy", "--pairs", str(w.file(name, content))], expect)


def _closed_postgres() -> str:
    return f"postgresql://crx:s3cret@127.0.0.1:{free_port()}/crx"


def _good_vector(w: World) -> str:
    return str(w.tensors({"v": tiny_array(7)}))


def _nan() -> np.ndarray:
    array = tiny_array()
    array[2, 5] = np.nan
    return array


BAD_INPUT: dict[str, Callable[[World], Bad]] = {
    "unknown model (register vector)": lambda w: Bad(
        ["register", "vector", "joy@1", "--model", "nope", "--file", _good_vector(w)],
        "no model 'nope' in the registry",
    ),
    "unknown model (show)": lambda w: Bad(["show", "model", "nope"], "no model 'nope'"),
    "unknown concept (register vector)": lambda w: Bad(
        ["register", "vector", "sadness", "--model", "tiny", "--file", _good_vector(w)],
        "no concept 'sadness'",
    ),
    "unknown concept (show)": lambda w: Bad(["show", "concept", "sadness"], "no concept 'sadness'"),
    "unknown concept version (show)": lambda w: Bad(["show", "concept", "joy@9"], "'joy@9'"),
    "unknown concept version (register vector)": lambda w: Bad(
        ["register", "vector", "joy@9", "--model", "tiny", "--file", _good_vector(w)], "'joy@9'"
    ),
    "malformed concept version": lambda w: Bad(["show", "concept", "joy@x"], "invalid version"),
    "unknown vector (show)": lambda w: Bad(["show", "vector", "99"], "no vector '99'"),
    "unknown vector (export)": lambda w: Bad(
        ["export", "vector", "99", "-o", str(w.tmp / "out.safetensors")], "no vector '99'"
    ),
    "unknown map": lambda w: Bad(["show", "map", "99"], "no map '99'"),
    "malformed JSON pairs": lambda w: _pairs(
        w, "p.json", '[{"positive": "a", "negative": ', "invalid JSON"
    ),
    "malformed JSONL pairs": lambda w: _pairs(
        w, "p.jsonl", '{"positive": "a", "negative": "b"}\n{"positive": \n', "line 2"
    ),
    "pairs JSON of the wrong type": lambda w: _pairs(w, "p.json", '"text"', "expected a JSON"),
    "empty pairs list": lambda w: _pairs(w, "p.json", "[]", "holds no pairs"),
    "empty pairs file": lambda w: _pairs(w, "p.jsonl", "", "holds no pairs"),
    "pairs file does not exist": lambda w: Bad(
        ["register", "concept", "joy", "--pairs", str(w.tmp / "missing.json")],
        "No such file or directory",
    ),
    "pairs file is a directory": lambda w: Bad(
        ["register", "concept", "joy", "--pairs", str(w.tmp)], "directory"
    ),
    "pairs file not UTF-8": lambda w: _pairs(
        w, "p.json", b'[{"positive": "\xff\xfe", "negative": "x"}]', "not UTF-8"
    ),
    "CSV without the columns": lambda w: _pairs(
        w, "p.csv", "good,bad\nhappy,sad\n", "CSV needs columns positive,negative"
    ),
    "pair with empty negative": lambda w: _pairs(
        w,
        "p.json",
        '[{"positive": "a", "negative": "b"}, {"positive": "c", "negative": ""}]',
        "pair 2 has no negative text",
    ),
    "pos and neg of different lengths": lambda w: _pairs(
        w, "p.json", '{"pos": ["a", "b"], "neg": ["c"]}', "2 positives but 1 negatives"
    ),
    "template without {text}": lambda w: Bad(
        ["register", "concept", "joy", "--pairs", str(w.pairs), "--template", "no slot"],
        "{text}",
    ),
    "vector of the wrong shape": lambda w: _vector(
        w, {"v": np.ones((3, D_MODEL), np.float32)}, "shape [3, 32], expected [4, 32]"
    ),
    "vector of the wrong width": lambda w: _vector(
        w, {"direction.1": np.ones(D_MODEL + 1, np.float32)}, "shape [33], expected [32]"
    ),
    "vector layer out of range": lambda w: _vector(
        w, {"direction.9": np.ones(D_MODEL, np.float32)}, "layer 9 is out of range"
    ),
    "vector of int dtype": lambda w: _vector(
        w, {"v": np.ones((N_LAYERS, D_MODEL), np.int32)}, "floating-point"
    ),
    "vector with NaN": lambda w: _vector(w, {"v": _nan()}, "NaN"),
    "vector with inf": lambda w: _vector(
        w, {"v": np.full((N_LAYERS, D_MODEL), np.inf, np.float32)}, "infinite"
    ),
    "vector file not safetensors": lambda w: Bad(
        _register_vector(w, w.file("v.safetensors", b"GGUF this is not safetensors")).args,
        "not a valid safetensors file",
    ),
    "vector file does not exist": lambda w: Bad(
        _register_vector(w, w.tmp / "missing.safetensors").args, "cannot read"
    ),
    "vector file is a directory": lambda w: Bad(_register_vector(w, w.tmp).args, "directory"),
    "vector with different values, no --replace": lambda w: Bad(
        [*_register_vector(w, w.tensors({"v": tiny_array(3)})).args, "--estimator", "mean_diff"],
        "already exists; pass replace (CLI: --replace)",
    ),
    "model name with '/'": lambda w: Bad(
        ["register", "model", "org/tiny", "--path", str(w.model_dir)], "path separator"
    ),
    "concept name with '../'": lambda w: Bad(
        ["register", "concept", "../evil", "--pairs", str(w.pairs)], "path separator"
    ),
    "concept name with '..'": lambda w: Bad(
        ["register", "concept", "a..b", "--pairs", str(w.pairs)], "'..'"
    ),
    "concept name with a control character": lambda w: Bad(
        ["register", "concept", "joy\x1b[31m", "--pairs", str(w.pairs)], "control character"
    ),
    "model name with a newline": lambda w: Bad(
        ["register", "model", "tiny\nb", "--path", str(w.model_dir)], "control character"
    ),
    "model re-registered with another shape while in use": lambda w: Bad(
        ["register", "model", "tiny", "--path", str(w.tmp / "tiny-b")], "register the new one"
    ),
    "model folder does not exist": lambda w: Bad(
        ["register", "model", "ghost", "--path", str(w.tmp / "no-such-model")], "does not exist"
    ),
    "model folder without config": lambda w: Bad(
        ["register", "model", "ghost", "--path", str(w.tmp)], "no config.json"
    ),
    "export into a missing folder": lambda w: Bad(
        ["export", "vector", "1", "-o", str(w.tmp / "no" / "v.gguf")], "does not exist"
    ),
    "unreachable PostgreSQL (list)": lambda w: Bad(
        ["list", "models"], "cannot open the database", db=_closed_postgres()
    ),
    "unreachable PostgreSQL (register)": lambda w: Bad(
        ["register", "concept", "joy2", "--pairs", str(w.pairs)],
        "cannot open the database postgresql://crx:***@127.0.0.1",
        db=_closed_postgres(),
    ),
    "SQLite in a missing folder": lambda w: Bad(
        ["register", "concept", "joy2", "--pairs", str(w.pairs)],
        "does not exist",
        db=f"sqlite:///{w.tmp / 'no-such-folder' / 'registry.db'}",
    ),
    "unreachable bucket (register)": lambda w: Bad(
        ["register", "concept", "joy2", "--pairs", str(w.pairs)],
        "cannot use the store s3://crx-unreachable/store",
        store="s3://crx-unreachable/store",
        env=_closed_s3_env(),
    ),
    "unreachable bucket (verify)": lambda w: Bad(
        ["store", "verify"],
        "cannot use the store s3://crx-unreachable/store",
        store="s3://crx-unreachable/store",
        env=_closed_s3_env(),
    ),
    "float32 products with the SVD solver": lambda w: Bad(
        [
            "fit",
            "--source",
            "tiny",
            "--target",
            "tiny",
            "--solver",
            "lstsq-svd",
            "--precision",
            "float32",
        ],
        "precision float32 applies to the ridge solver only",
    ),
    "unreachable bucket (export)": lambda w: Bad(
        ["export", "vector", "1", "-o", str(w.tmp / "v.safetensors")],
        "cannot use the store s3://crx-unreachable/store",
        store="s3://crx-unreachable/store",
        env=_closed_s3_env(),
    ),
}


def _closed_s3_env() -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        # botocore and s3fs retry a refused connection for ~15-50 s by default
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_RETRY_MODE": "standard",
    }


# Cases that read or write catalogue rows run on both databases; the rest fail on the input
# alone, before any row is read, and run on SQLite.
DB_CASES = {
    "unknown model (register vector)",
    "unknown model (show)",
    "unknown concept (register vector)",
    "unknown concept (show)",
    "unknown concept version (show)",
    "unknown concept version (register vector)",
    "unknown vector (export)",
    "unknown map",
    "vector with different values, no --replace",
    "model re-registered with another shape while in use",
    "export into a missing folder",
}


def _check_bad_input(world: World, case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = BAD_INPUT[case](world)
    monkeypatch.delenv("CRX_S3_ENDPOINT_URL", raising=False)
    before = snapshot(world)
    for key, value in bad.env.items():
        monkeypatch.setenv(key, value)
    line = user_error(world.run(*bad.args, db=bad.db, store=bad.store))
    assert bad.expect in line
    assert "s3cret" not in line
    assert snapshot(world) == before


@pytest.mark.parametrize("case", [case for case in BAD_INPUT if case not in DB_CASES])
def test_bad_input_is_one_error_line_and_changes_nothing(
    populated_sqlite: World, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _check_bad_input(populated_sqlite, case, monkeypatch)


@pytest.mark.parametrize("case", sorted(DB_CASES))
def test_bad_input_on_each_database(
    populated: World, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _check_bad_input(populated, case, monkeypatch)


def test_out_of_date_database_is_refused_until_upgraded(populated: World) -> None:
    w = populated
    before = snapshot(w)
    engine = make_engine(w.db)

    def set_revision(revision: str) -> None:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"UPDATE alembic_version SET version_num = '{revision}'")

    set_revision("0000")
    try:
        for args in (
            ["list", "models"],
            ["show", "model", "tiny"],
            ["register", "concept", "joy2", "--pairs", str(w.pairs)],
            ["register", "model", "tiny2", "--path", str(w.model_dir)],
            ["export", "vector", "1", "-o", str(w.tmp / "v.safetensors")],
            ["store", "verify"],
            ["store", "gc", "--yes", "--grace", "0"],
        ):
            line = user_error(w.run(*args))
            assert "schema revision 0000" in line, args
            assert "back up the database, then run `crx db upgrade`" in line, args
        assert w.json("db", "current") == {
            "current": "0000",
            "head": HEAD_REVISION,
            "up_to_date": False,
        }
        assert "run `crx db upgrade`" in w.ok("db", "current").stdout
        assert not (w.tmp / "v.safetensors").exists()
    finally:
        set_revision(HEAD_REVISION)
        engine.dispose()
    assert snapshot(w) == before


def test_corrupt_or_missing_blob_fails_loads_naming_the_oid(populated_sqlite: World) -> None:
    w = populated_sqlite
    oid, vector_id = w.facts["vector_oid"], str(w.facts["vector_id"])
    path = w.blob_path(oid)
    path.chmod(0o644)
    path.write_bytes(b"not the bytes that were stored")
    before = snapshot(w)
    # the record is metadata: show still works
    assert w.json("show", "vector", vector_id)["oid"] == oid
    for fmt in ("safetensors", "gguf"):
        out = w.tmp / f"v.{fmt}"
        line = user_error(w.run("export", "vector", vector_id, "--format", fmt, "-o", str(out)))
        assert f"blob {oid} is corrupt" in line
        assert "crx store verify" in line
        assert not out.exists()
    map_blob = w.blob_path(w.facts["map_oid"])
    map_blob.chmod(0o644)
    map_blob.unlink()
    before = snapshot(w)
    path.unlink()
    line = user_error(w.run("export", "vector", vector_id, "-o", str(w.tmp / "v.safetensors")))
    assert f"blob {oid} is missing" in line
    gone = str(path.relative_to(w.store))
    assert snapshot(w) == {**before, "blob_files": before["blob_files"] - {gone}}


# -- usage errors exit 2 --------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["register", "concept", "joy"],  # missing --pairs
        ["register", "vector", "joy", "--file", "v.safetensors"],  # missing --model
        ["register", "model", "tiny", "--path", "x", "--role", "chief"],
        ["register", "model", "tiny", "--path", "x", "--tag", "novalue"],
        ["list", "modelz"],
        ["frobnicate"],
        ["show", "vector", "abc"],
        ["list", "models", "--limit", "-1"],
        ["export", "vector", "1", "--format", "onnx", "-o", "x"],
        ["export", "vector", "1"],  # missing -o
        ["store", "gc", "--grace", "-5"],
    ],
)
def test_usage_errors_exit_2(sqlite_world: World, args: list[str]) -> None:
    before = sqlite_world.blob_files()
    usage_error(sqlite_world.run(*args))
    assert sqlite_world.blob_files() == before


# -- the real script, in a subprocess -------------------------------------------------------


def test_subprocess_exit_codes_and_stderr(pairs_file: Path) -> None:
    home = Path(os.environ["CRX_HOME"])
    done = crx_subprocess("init")  # the embedded default under CRX_HOME
    assert done.returncode == 0, done.stderr
    assert f"database sqlite:///{home / 'registry.db'}: created" in done.stdout

    bad = crx_subprocess("register", "concept", "../evil", "--pairs", str(pairs_file))
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert bad.stderr == "Error: invalid concept name '../evil': it contains a path separator\n"

    # the database URL from the environment, as a team sets it
    unreachable = crx_subprocess("list", "models", env={"CRX_DATABASE_URL": _closed_postgres()})
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("Error: cannot open the database postgresql://crx:***@")
    assert len(unreachable.stderr.splitlines()) == 1

    usage = crx_subprocess("list", "modelz")
    assert usage.returncode == 2
    assert "No such command 'modelz'" in usage.stderr
    assert "Traceback" not in usage.stderr

    missing = crx_subprocess("register", "concept", "joy")
    assert missing.returncode == 2
    assert "Missing option '--pairs'" in missing.stderr


def test_subprocess_store_verify_exits_1_on_a_corrupt_blob(populated_sqlite: World) -> None:
    w = populated_sqlite
    args = ("--db", w.db, "--store", str(w.store), "store", "verify")
    assert crx_subprocess(*args).returncode == 0
    oid = w.facts["vector_oid"]
    w.blob_path(oid).chmod(0o644)
    w.blob_path(oid).write_bytes(b"garbage")
    done = crx_subprocess(*args)
    assert done.returncode == 1
    assert f"corrupt {oid} <- vector {w.facts['vector_id']}" in done.stdout
    assert done.stderr == "Error: 1 blob(s) missing or corrupt\n"


@pytest.mark.parametrize("args", [["--help"], ["list", "models"]])
def test_light_commands_do_not_import_torch(args: list[str]) -> None:
    code = (
        "import sys; from click.testing import CliRunner; from cli.main import cli; "
        f"r = CliRunner().invoke(cli, {args!r}); "
        "assert r.exit_code == 0, r.output; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
