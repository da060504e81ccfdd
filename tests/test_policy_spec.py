"""Policies as spec files (``kind: policy``): located parse errors, ``crx diff`` / ``crx apply``
(create, field-level update, unchanged, prune, saved diffs), ``crx policy show`` / ``crx policy
for``, and on PostgreSQL that only the owner's role may change policies.

Everything runs on a real SQLite file and a real PostgreSQL server (the ``world`` fixtures are
parametrized over both), through the CLI where a user would.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from crx.registry import Registry
from crx.registry.db.connection import make_engine
from crx.registry.declare import load_specs
from crx.registry.declare.reconcile import diff
from crx.registry.errors import DatabaseRefused, SpecError
from crx.schemas.governance import EvidenceRule, PolicySpec
from crx.schemas.spec import EvidenceRuleSpec, PolicyDocument
from tests.cli_world import World, _initialised, ok
from tests.databases import postgres_url
from tests.servers import PostgresServer
from tests.test_cli_errors import snapshot, user_error

GATE = """\
kind: policy
name: gate
concept: joy
model: tiny-b
description: joy needs evidence on tiny-b
evidence:
  - {task: emotion, metric: accuracy, min: 0.7, min_n: 20}
  - {task: emotion, metric: kl, not_below_base: true, dataset: any}
approvals: 2
"""

GATE_SPEC = PolicySpec(
    name="gate",
    concept="joy",
    model="tiny-b",
    description="joy needs evidence on tiny-b",
    evidence=[
        EvidenceRule(task="emotion", metric="accuracy", min=0.7, min_n=20),
        EvidenceRule(task="emotion", metric="kl", not_below_base=True, dataset="any"),
    ],
    approvals=2,
)


def write(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return path


def events(w: World, prefix: str = "policy.") -> list:
    with w.registry() as reg:
        return [e for e in reg.audit_events(limit=0).items if e.action.startswith(prefix)]


def policies(w: World) -> list[PolicySpec]:
    with w.registry() as reg:
        return [r.spec for r in reg.list_policies()]


# -- the document ----------------------------------------------------------------------------


def test_the_document_has_exactly_the_fields_of_policy_spec() -> None:
    # PolicyDocument is PolicySpec's strict twin: a field added to one must reach the other.
    assert set(PolicyDocument.model_fields) - {"kind", "version"} == set(PolicySpec.model_fields)
    assert set(EvidenceRuleSpec.model_fields) == set(EvidenceRule.model_fields)
    for name, field in PolicySpec.model_fields.items():
        assert PolicyDocument.model_fields[name].get_default(call_default_factory=True) == (
            field.get_default(call_default_factory=True)
        ), name


def test_a_policy_file_loads_as_policy_spec(tmp_path: Path) -> None:
    loaded = load_specs(write(tmp_path / "gate.yaml", GATE))
    assert loaded.catalog.policies == [GATE_SPEC]
    assert loaded.locations == {"policy:gate": f"{tmp_path / 'gate.yaml'}:2"}
    assert (loaded.catalog.models, loaded.catalog.concepts) == ([], [])
    # Defaults: every concept and model, alias prod, one approval, no evidence; null = empty.
    minimal = write(tmp_path / "m.yaml", "kind: policy\nname: any\ndescription:\nevidence:\n")
    assert load_specs(minimal).catalog.policies == [PolicySpec(name="any")]
    # JSON is YAML: a .json file named directly is read the same.
    as_json = write(
        tmp_path / "gate.json", json.dumps({"kind": "policy", **GATE_SPEC.model_dump()})
    )
    assert load_specs(as_json).catalog.policies == [GATE_SPEC]


BAD = {
    "unknown key": (
        "kind: policy\nname: g\napprovls: 2\n",
        r"3: unknown key 'approvls' \(did you mean 'approvals'\?\)$",
    ),
    "unknown rule key": (
        "kind: policy\nname: g\nevidence:\n  - {task: t, metric: m, min: 1, mn_n: 3}\n",
        r"4: evidence\[0\]: unknown key 'mn_n' \(did you mean 'min_n'\?\)$",
    ),
    "approvals as a string": (
        "kind: policy\nname: g\napprovals: '2'\n",
        r"3: approvals: must be an integer, not '2'$",
    ),
    "approvals true": (
        "kind: policy\nname: g\napprovals: true\n",
        r"3: approvals: must be an integer, not True$",
    ),
    "zero approvals": (
        "kind: policy\nname: g\napprovals: 0\n",
        r"3: approvals: must be greater than or equal to 1, not 0$",
    ),
    "101 approvals": (
        "kind: policy\nname: g\napprovals: 101\n",
        r"3: approvals: must be less than or equal to 100",
    ),
    "a rule asking nothing": (
        "kind: policy\nname: g\nevidence:\n  - task: emotion\n    metric: accuracy\n",
        r"4: evidence\[0\]: the rule for emotion accuracy asks nothing: give min, not_below_base",
    ),
    "a rule without metric": (
        "kind: policy\nname: g\nevidence:\n  - {task: emotion, min: 1}\n",
        r"4: evidence\[0\]: missing key 'metric'$",
    ),
    "min as a string": (
        "kind: policy\nname: g\nevidence:\n  - {task: t, metric: m, min: '0.8'}\n",
        r"4: evidence\[0\]\.min: must be a number, not '0.8'$",
    ),
    "min infinite": (
        "kind: policy\nname: g\nevidence:\n  - {task: t, metric: m, min: .inf}\n",
        r"4: evidence\[0\]\.min: must be a finite number, not inf$",
    ),
    "min_n zero": (
        "kind: policy\nname: g\nevidence:\n  - {task: t, metric: m, min: 1, min_n: 0}\n",
        r"4: evidence\[0\]\.min_n: must be greater than or equal to 1",
    ),
    "not_below_base yes": (
        "kind: policy\nname: g\nevidence:\n  - {task: t, metric: m, not_below_base: 'yes'}\n",
        r"4: evidence\[0\]\.not_below_base: must be true or false, not 'yes'$",
    ),
    "a mistyped dataset": (
        "kind: policy\nname: g\nevidence:\n  - {task: t, metric: m, min: 1, dataset: curent}\n",
        r"4: evidence\[0\]\.dataset: must be current, any or a dataset oid",
    ),
    "an empty task": (
        "kind: policy\nname: g\nevidence:\n  - {task: ' ', metric: m, min: 1}\n",
        r"4: evidence\[0\]\.task: must not be empty$",
    ),
    "a task of 101 characters": (
        "kind: policy\nname: g\nevidence:\n  - {task: " + "t" * 101 + ", metric: m, min: 1}\n",
        r"4: evidence\[0\]\.task: it is longer than 100 characters$",
    ),
    "evidence not a list": (
        "kind: policy\nname: g\nevidence: {task: t}\n",
        r"3: evidence: must be a list",
    ),
    "a bad policy name": (
        "kind: policy\nname: a/b\n",
        r"2: name: invalid policy name 'a/b': it contains a path separator$",
    ),
    "a bad alias": (
        "kind: policy\nname: g\nalias: ' prod'\n",
        r"3: alias: invalid alias name ' prod': it starts or ends with whitespace$",
    ),
    "a concept reference": (
        "kind: policy\nname: g\nconcept: joy@2\n",
        r"3: concept: invalid concept name 'joy@2'",
    ),
    "a bad model name": (
        "kind: policy\nname: g\nmodel: ../m\n",
        r"3: model: invalid model name '../m'",
    ),
    "no name": ("kind: policy\nconcept: joy\n", r"1: missing key 'name'$"),
    "another kind": ("kind: polcy\nname: g\n", r"1: kind: must be policy, not 'polcy'$"),
    "version 2": ("kind: policy\nversion: 2\nname: g\n", r"2: version: must be 1, not 2$"),
    "a description with a NUL": (
        'kind: policy\nname: g\ndescription: "a\\0b"\n',
        r"3: description: it contains a NUL character$",
    ),
    "sections in a policy": (
        "kind: policy\nname: g\nmodels: []\n",
        r"3: unknown key 'models' \(did you mean 'model'\?\)$",
    ),
}


@pytest.mark.parametrize(("content", "expected"), BAD.values(), ids=BAD.keys())
def test_a_bad_policy_document_is_located(tmp_path: Path, content: str, expected: str) -> None:
    spec_file = write(tmp_path / "policy.yaml", content)
    with pytest.raises(SpecError, match="^" + re.escape(f"{spec_file}:") + expected) as info:
        load_specs(spec_file)
    assert "\n" not in str(info.value)
    assert info.value.file == str(spec_file)


def test_a_policy_declared_twice_names_both_files(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", "kind: policy\nname: gate\n")
    b = write(tmp_path / "b.yaml", "kind: policy\n\nname: gate\napprovals: 2\n")
    expected = f"{b}:3: name: policy:gate is already declared at {a}:2"
    with pytest.raises(SpecError, match="^" + re.escape(expected) + "$"):
        load_specs(tmp_path)


def test_two_policies_of_one_scope_are_refused(sqlite_world: World) -> None:
    specs = sqlite_world.tmp / "specs"
    a = write(specs / "a.yaml", "kind: policy\nname: first\nconcept: joy\n")
    write(specs / "b.yaml", "kind: policy\nname: second\nconcept: joy\napprovals: 3\n")
    line = user_error(sqlite_world.run("diff", str(specs)))
    assert line == (
        f"Error: {specs / 'b.yaml'}:2: policy second has the same scope as policy first "
        f"(declared at {a}:2): governs prod for concept joy on every model twice, and only one "
        "would ever apply"
    )
    assert policies(sqlite_world) == []


# -- diff and apply --------------------------------------------------------------------------


def test_diff_apply_update_and_prune_a_policy(world: World) -> None:
    w = world  # SQLite and PostgreSQL
    specs = w.tmp / "specs"
    gate = write(specs / "gate.yaml", GATE)
    # Nothing of what it governs exists yet: said, not refused.
    shown = w.ok("diff", str(specs)).output
    assert shown.splitlines()[0] == (
        "+ create    policy:gate  (governs prod for concept joy on model tiny-b; concept 'joy' is "
        "neither in the specs nor registered; model 'tiny-b' is neither in the specs nor "
        "registered)"
    )
    assert "1 to create, 0 to update, 0 unchanged, 0 not in the specs; 0 compute steps" in shown
    [change] = w.json("diff", str(specs))["changes"]
    assert (change["kind"], change["action"], change["where"]) == ("policy", "create", f"{gate}:2")

    applied = w.ok("apply", str(specs)).output
    assert "applied: 1 rows written in one transaction" in applied
    assert policies(w) == [GATE_SPEC]
    [created] = events(w)
    assert (created.action, created.object_ref, created.old) == ("policy.create", "gate", None)
    assert created.new == GATE_SPEC.model_dump(mode="json")

    # Idempotent: the same specs change nothing, and say so.
    assert "nothing to do: the registry matches the specs" in w.ok("apply", str(specs)).output
    [same] = w.json("diff", str(specs))["changes"]
    assert same["action"] == "unchanged"
    assert len(events(w, "")) == 1

    # An update lists each field that changes, evidence rules by position.
    write(
        gate,
        GATE.replace("min: 0.7", "min: 0.8")
        .replace("  - {task: emotion, metric: kl, not_below_base: true, dataset: any}\n", "")
        .replace("approvals: 2", "approvals: 1")
        .replace("model: tiny-b\n", ""),
    )
    shown = w.ok("diff", str(specs)).output.splitlines()
    assert shown[0].startswith("~ update    policy:gate  (governs prod for concept joy on every")
    assert shown[1:5] == [
        "      model: 'tiny-b' -> None",
        "      approvals: 2 -> 1",
        "      evidence[0].min: 0.7 -> 0.8",
        "      evidence[1]: {'task': 'emotion', 'metric': 'kl', 'not_below_base': True, "
        "'dataset': 'any'} -> None",
    ]
    assert "0 to create, 1 to update, 0 unchanged" in shown[5]
    w.ok("apply", str(specs))
    updated = GATE_SPEC.model_copy(
        update={
            "model": None,
            "approvals": 1,
            "evidence": [EvidenceRule(task="emotion", metric="accuracy", min=0.8, min_n=20)],
        }
    )
    assert policies(w) == [updated]
    last = events(w)[-1]
    assert last.action == "policy.update"
    assert (last.old, last.new) == (
        GATE_SPEC.model_dump(mode="json"),
        updated.model_dump(mode="json"),
    )

    # Out of the specs: shown as a removal, kept until --prune.
    gate.unlink()
    write(specs / "catalog.yaml", "")
    [removal] = w.json("diff", str(specs))["changes"]
    assert (removal["key"], removal["action"]) == ("policy:gate", "remove")
    assert removal["note"] == (
        "not in the specs; kept unless --prune; governs prod for concept joy on every model"
    )
    assert "nothing to do" in w.ok("apply", str(specs)).output
    assert policies(w) == [updated]
    pruned = w.ok("apply", str(specs), "--prune").output
    assert "- remove    policy:gate" in pruned
    assert "applied: 1 rows written in one transaction" in pruned
    assert policies(w) == []
    deleted = events(w)[-1]
    assert (deleted.action, deleted.old) == ("policy.delete", updated.model_dump(mode="json"))


def test_policies_apply_with_the_catalogue_and_a_json_document(world: World) -> None:
    w = world  # SQLite and PostgreSQL
    specs = w.tmp / "specs"
    write(
        specs / "catalog.yaml",
        f"models:\n  - name: tiny-b\n    path: {w.model_dir}\nconcepts:\n"
        f"  - name: joy\n    pairs: {w.pairs}\n",
    )
    write(specs / "gate.yaml", GATE)
    changes = {c.key: c for c in diff(w.registry().catalog, load_specs(specs)).changes}
    assert [(k, c.action) for k, c in changes.items()] == [
        ("model:tiny-b", "create"),
        ("concept:joy", "create"),
        ("policy:gate", "create"),
    ]
    # What it governs is declared beside it: no warning.
    assert changes["policy:gate"].note == "governs prod for concept joy on model tiny-b"
    report = w.json("apply", str(specs))
    assert (report["applied"], report["rows_written"]) == (True, 3)
    assert policies(w) == [GATE_SPEC]
    # One transaction: the model, the concept and the policy share it (consecutive events).
    assert [e.action for e in events(w, "")] == ["register", "register", "policy.create"]
    # A policy written as JSON applies the same (it is a spec file, not a saved diff).
    other = w.file(
        "staging.json", json.dumps({"kind": "policy", "name": "staging", "alias": "staging"})
    )
    assert "applied: 1 rows written" in w.ok("apply", str(other)).output
    assert [p.name for p in policies(w)] == ["gate", "staging"]


def test_a_policy_of_an_older_same_scope_is_noted(world: World) -> None:
    w = world  # SQLite and PostgreSQL
    with w.registry() as reg:
        reg.put_policy(PolicySpec(name="old-gate", concept="joy", model="tiny-b"))
    specs = w.tmp / "specs"
    write(specs / "gate.yaml", GATE)
    changes = {c["key"]: c for c in w.json("diff", str(specs))["changes"]}
    assert (
        "policy old-gate has the same scope and governs until pruned"
        in (changes["policy:gate"]["note"])
    )
    assert changes["policy:old-gate"]["action"] == "remove"
    w.ok("apply", str(specs), "--prune")
    assert policies(w) == [GATE_SPEC]


def test_a_saved_diff_is_refused_when_a_policy_changed_meanwhile(world: World) -> None:
    w = world  # SQLite and PostgreSQL
    specs = w.tmp / "specs"
    gate = write(specs / "gate.yaml", GATE)
    saved = w.tmp / "diff.json"
    w.ok("diff", str(specs), "-o", str(saved))
    # Someone writes the same policy in between, differently: the saved diff is refused.
    with w.registry() as reg:
        reg.put_policy(GATE_SPEC.model_copy(update={"approvals": 5}))
    before = snapshot(w)
    line = user_error(w.run("apply", str(saved)))
    assert line.startswith("Error: the registry changed since this diff was made")
    assert snapshot(w) == before
    assert [p.approvals for p in policies(w)] == [5]
    # A fresh saved diff applies...
    w.ok("diff", str(specs), "-o", str(saved), "--force")
    assert "applied: 1 rows written" in w.ok("apply", str(saved)).output
    assert policies(w) == [GATE_SPEC]
    # ...and one whose policy changed under it without any audit event (straight SQL, as a
    # table owner could) is refused too: the field changes are part of what was saved.
    write(gate, GATE.replace("approvals: 2", "approvals: 3"))
    w.ok("diff", str(specs), "-o", str(saved), "--force")
    engine = make_engine(w.db)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE policies SET rules = :r"), {"r": '{"approvals": 4, "evidence": []}'}
        )
    engine.dispose()
    line = user_error(w.run("apply", str(saved)))
    assert line == "Error: the diff is no longer what was saved: run `crx diff -o` again"
    assert [p.approvals for p in policies(w)] == [4]


# -- crx policy show / for -------------------------------------------------------------------


def _policies_folder(w: World) -> Path:
    specs = w.tmp / "policies"
    write(specs / "any.yaml", "kind: policy\nname: any-concept\n")
    write(specs / "joy.yaml", "kind: policy\nname: joy-anywhere\nconcept: joy\napprovals: 2\n")
    write(specs / "gate.yaml", GATE.replace("approvals: 2", "approvals: 3"))
    write(
        specs / "staging.yaml",
        "kind: policy\nname: joy-staging\nconcept: joy\nalias: staging\nevidence:\n"
        "  - {task: emotion, metric: accuracy, min: 0.5}\n",
    )
    return specs


def test_policy_show(populated: World) -> None:
    w = populated  # SQLite and PostgreSQL
    assert w.ok("policy", "show").output == (
        "no policies: promotion to prod needs one approval, by someone other than the one who "
        "promotes (declare one in a spec file with kind: policy, then `crx apply`)\n"
    )
    assert w.json("policy", "show") == []
    w.ok("apply", str(_policies_folder(w)))
    shown = w.ok("policy", "show").output
    blocks = shown.split("\n\n")
    assert [b.split()[0] for b in blocks] == ["any-concept", "gate", "joy-anywhere", "joy-staging"]
    assert re.match(
        r"gate  \(set by \S+, \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\)$", blocks[1].split("\n")[0]
    )
    assert blocks[1].split("\n")[1:] == [
        "  scope:     concept joy on model tiny-b",
        "  alias:     prod",
        "  about:     joy needs evidence on tiny-b",
        "  evidence:",
        "    - emotion accuracy ≥ 0.7, n ≥ 20, dataset current",
        "    - emotion kl not below the bare model, dataset any",
        "  approvals: 3 approvals (distinct approvers, none of them the one who promotes)",
    ]
    assert blocks[0].split("\n")[1:] == [
        "  scope:     every concept on every model",
        "  alias:     prod",
        "  evidence:  none asked",
        "  approvals: 1 approval (distinct approvers, none of them the one who promotes)",
    ]
    one = w.json("policy", "show", "gate")
    assert PolicySpec.model_validate(one["spec"]) == GATE_SPEC.model_copy(update={"approvals": 3})
    assert set(one) == {"id", "spec", "actor", "at"}
    assert [r["spec"]["name"] for r in w.json("policy", "show")] == [
        "any-concept",
        "gate",
        "joy-anywhere",
        "joy-staging",
    ]
    assert user_error(w.run("policy", "show", "nope")) == (
        "Error: no policy 'nope' (see `crx policy show`)"
    )


def test_policy_for_finds_the_most_specific(populated: World) -> None:
    w = populated  # SQLite and PostgreSQL
    # No policy at all: crx's default.
    assert w.ok("policy", "for", "joy", "--model", "tiny-b").output == (
        "promoting joy on tiny-b to prod: no policy matches; crx's default: one approval, by "
        "someone other than the one who promotes\n"
    )
    default = w.json("policy", "for", "joy", "--model", "tiny-b")
    assert default == {
        "concept": "joy",
        "model": "tiny-b",
        "alias": "prod",
        "protected": True,
        "policy": None,
        "evidence": [],
        "approvals": 1,
    }
    w.ok("apply", str(_policies_folder(w)))
    # Concept and model, then concept, then any; NAME@V names the concept.
    head = w.ok("policy", "for", "joy@1", "--model", "tiny-b").output.splitlines()
    assert head[0] == "promoting joy on tiny-b to prod: policy gate (concept joy on model tiny-b)"
    assert "    - emotion accuracy ≥ 0.7, n ≥ 20, dataset current" in head
    found = w.json("policy", "for", "joy", "--model", "tiny-b")
    assert (found["policy"]["spec"]["name"], found["approvals"]) == ("gate", 3)
    assert found["evidence"] == GATE_SPEC.model_dump(mode="json")["evidence"]
    assert w.json("policy", "for", "joy", "--model", "tiny")["policy"]["spec"]["name"] == (
        "joy-anywhere"
    )
    staging = w.json("policy", "for", "joy", "--model", "tiny", "--alias", "staging")
    assert (staging["policy"]["spec"]["name"], staging["approvals"]) == ("joy-staging", 1)
    # An alias no policy names and that is not prod is not protected.
    canary = w.ok("policy", "for", "joy", "--model", "tiny", "--alias", "canary").output
    assert "canary is not a protected alias" in canary
    assert (
        w.json("policy", "for", "joy", "--model", "tiny", "--alias", "canary")["protected"] is False
    )
    # It answers for what exists: a typo is an error, not crx's default.
    assert "no model 'tiny-c'" in user_error(w.run("policy", "for", "joy", "--model", "tiny-c"))
    assert "no concept 'joyy'" in user_error(w.run("policy", "for", "joyy", "--model", "tiny"))


# -- PostgreSQL: policies are the owner's ----------------------------------------------------


def test_only_the_owner_applies_policies_on_postgres(
    postgres_server: PostgresServer, tmp_path: Path, tiny_model_dir: Path, pairs_file: Path
) -> None:
    db = postgres_url(postgres_server)
    database = db.rsplit("/", 1)[1]
    w = _initialised(db, tmp_path, tiny_model_dir, pairs_file)
    writer, owner = f"w_{uuid.uuid4().hex[:12]}", f"o_{uuid.uuid4().hex[:12]}"
    with w.registry() as reg:  # the superuser
        reg.ensure_roles()
        reg.add_user(writer, "writer", "writer-pw")
        reg.add_user(owner, "owner", "owner-pw")
    as_writer = postgres_server.url(database, user=writer, password="writer-pw")
    as_owner = postgres_server.url(database, user=owner, password="owner-pw")
    specs = tmp_path / "specs"
    write(specs / "models.yaml", f"models:\n  - name: tiny\n    path: {tiny_model_dir}\n")
    write(specs / "gate.yaml", GATE)

    # The writer may diff, not apply: refused before any work, nothing written (not the model).
    assert "+ create    policy:gate" in w.ok("diff", str(specs)).output
    before = snapshot(w)
    line = user_error(w.run("apply", str(specs), db=as_writer))
    assert line == (
        f"Error: {writer} may not change policies (create policy:gate): policies are the "
        "registry owner's work (crx_owner)"
    )
    assert snapshot(w) == before
    assert policies(w) == []
    # The database itself refuses the writer's policy, whatever the client.
    with Registry(as_writer, str(w.store)) as reg, pytest.raises(DatabaseRefused):
        reg.put_policy(GATE_SPEC)
    assert policies(w) == []

    # The owner applies; the database stamps who did.
    assert "applied: 2 rows written" in ok(w.run("apply", str(specs), db=as_owner)).output
    with w.registry() as reg:
        [record] = reg.list_policies()
    assert (record.spec, record.actor) == (GATE_SPEC, owner)
    assert [e.actor for e in events(w)] == [owner]

    # A writer's apply that leaves the policy as it is goes through.
    write(specs / "more.yaml", f"concepts:\n  - name: joy\n    pairs: {pairs_file}\n")
    assert "applied: 1 rows written" in ok(w.run("apply", str(specs), db=as_writer)).output
    # Changing it, or pruning it, is still the owner's.
    write(specs / "gate.yaml", GATE.replace("approvals: 2", "approvals: 1"))
    assert "may not change policies (update policy:gate)" in user_error(
        w.run("apply", str(specs), db=as_writer)
    )
    (specs / "gate.yaml").unlink()
    assert "may not change policies (remove policy:gate)" in user_error(
        w.run("apply", str(specs), "--prune", db=as_writer)
    )
    assert policies(w) == [GATE_SPEC]


def test_the_readme_example_is_a_valid_policy(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("#### Promotion policies") :]
    example = section[section.index("```yaml\n") + 8 : section.index("```\n", 8)]
    [spec] = load_specs(write(tmp_path / "prod-gate.yaml", example)).catalog.policies
    assert (spec.name, spec.concept, spec.model, spec.approvals) == (
        "prod-gate",
        "sadness",
        "gemma3-270m",
        2,
    )
    assert [(r.metric, r.min, r.not_below_base) for r in spec.evidence] == [
        ("token_accuracy", 0.8, False),
        ("logit_accuracy", None, True),
    ]
