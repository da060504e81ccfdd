"""``crx init``, ``db``, ``register``, ``list``, ``show`` and ``export``: the happy path, end to
end, against real databases and a real local store.

Every read command's ``--json`` has the shape the README's "JSON output" section documents (the
record fields are read from the README itself); tables, paging and the exported safetensors and
GGUF files are checked value by value.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from crx.registry.db.migrate import HEAD_REVISION
from tests.cli_world import N_LAYERS, World, second_model_dir, tiny_array

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
LIST_KINDS = ("models", "concepts", "vectors", "maps", "evaluations", "audit")


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
    assert set(again) == {"record", "created", "changes"}
    assert again["created"] is False
    assert again["changes"] == [{"field": "family", "old": "llama", "new": "llama3"}]
    assert_record(again["record"], "model")
    assert (again["record"]["family"], again["record"]["tags"]) == ("llama3", {"size": "tiny"})
    update = w.json("list", "audit")["items"][-1]
    assert_record(update, "audit event")
    assert (update["action"], update["object_ref"]) == ("update", "tiny")
    assert (update["old"], update["new"]) == ({"family": "llama"}, {"family": "llama3"})
    changed = w.ok(*same, "--family", "llama3", "--tag", "size=small", "--tag", "team=a").stdout
    assert changed == (
        "tiny: updated (llama, 4 layers, d_model 32): tags: size tiny → small, +team=a\n"
    )

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
    assert set(registered) == {"record", "created", "changes"}
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
    assert set(reg_vec) == {"record", "created", "changes"}
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
    # The actor is the database role on PostgreSQL (CRX_ACTOR only labels it), else CRX_ACTOR.
    actor = "postgres" if w.db.startswith("postgresql") else "tester"
    assert all(f" {actor} " in row for row in tables["audit"][1:])

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
    assert {e["actor"] for e in listed["audit"]} == {actor}
    assert {e["label"] for e in listed["audit"]} == {"tester"}
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
    assert fitted.pop("anchors") == []  # the map record plus its anchors (none: not anchored)
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
    ).stdout.startswith(
        f"wrote {out} (safetensors): vector {vector_id} (joy@1 on tiny), layers 0, 1, 2, 3 at "
        f"strength 1: the raw vector: no evaluation of vector {vector_id} is recorded\n"
    )
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
    # an existing file is replaced only with --force
    refused = w.run("export", "vector", str(vec["id"]), "--format", "gguf", "-o", str(gguf_out))
    assert refused.exit_code == 1
    assert "exists: pass --force to replace it" in refused.stderr
    w.ok("export", "vector", str(vec["id"]), "--format", "gguf", "-o", str(gguf_out), "--force")
    reader = GGUFReader(str(gguf_out))
    assert reader.fields["controlvector.layer_count"].contents() == 1
    assert [t.name for t in reader.tensors] == ["direction.2"]


# -- a concept from the emotion data that ships with crx ------------------------------------


def test_register_concept_from_a_shipped_emotion_is_the_demos_concept(world: World) -> None:
    from crx.registry.engine import emotion as task
    from crx.registry.workflows.demo import PAIR_CONSTRUCTION, register_emotions

    w = world
    assert w.ok("register", "concept", "sadness", "--emotion", "sadness").stdout == "sadness@1\n"
    again = w.ok("register", "concept", "sadness", "--emotion", "sadness").stdout
    assert again == "sadness@1 (unchanged)\n"
    shown = w.json("show", "concept", "sadness")
    assert shown["template"] == task.TEMPLATE
    assert shown["pair_construction"] == PAIR_CONSTRUCTION
    assert shown["description"] == "RepE sadness scenarios vs other emotions (training half)"
    # the pairs: every training scenario of sadness once as a positive, no held-out one anywhere
    scenarios = {e: task.split_scenarios(task.load_scenarios(e)) for e in task.EMOTIONS}
    reg = w.registry()
    try:
        pairs = reg.load_pairs("sadness@1")
        assert [p.positive for p in pairs] == scenarios["sadness"].train
        held_out = {s for split in scenarios.values() for s in split.test}
        assert not held_out & {text for p in pairs for text in (p.positive, p.negative)}
        assert {p.negative for p in pairs} <= {
            s for e, split in scenarios.items() if e != "sadness" for s in split.train
        }
        # the demo's own registration is this very version: no second one
        assert register_emotions(reg.catalog, ["sadness"]) == {"sadness": "sadness@1"}
        # the Python API: another name, a description of one's own, marked for use
        made = reg.register_emotion("grief", "sadness", description="mine", use=True).record
        assert (made.ref, made.description, made.pairs_oid) == (
            "grief@1",
            "mine",
            shown["pairs_oid"],
        )
    finally:
        reg.close()
    assert [c["name"] for c in w.json("list", "concepts")["items"]] == ["sadness", "grief"]


def test_the_emotion_options_help_names_every_shipped_emotion() -> None:
    from crx.cli.main import cli
    from crx.registry.engine.emotion import EMOTIONS

    command = cli.commands["register"].commands["concept"]  # type: ignore[attr-defined]
    (option,) = [p for p in command.params if p.name == "emotion"]
    listed = re.findall(r"[a-z]+", option.help.split("(", 1)[1].split(")", 1)[0])
    assert [word for word in listed if word != "or"] == list(EMOTIONS)
