"""Governance through the `Registry` facade, on a real SQLite file and a real PostgreSQL server:
aliases (compare-and-swap, history), promotion gated by policy evidence and approvals by
someone else, rejections, deprecation, and what the database itself refuses (direct SQL).

On PostgreSQL the people are real login roles (`tests/team.py`); on SQLite they are CRX_ACTOR
names on one file.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from crx.registry import Registry
from crx.registry.errors import (
    AliasConflict,
    AliasNotFound,
    CrxError,
    DatabaseRefused,
    DeprecatedObject,
    GovernedObject,
    InvalidInput,
    NotPermitted,
    PromotionRefused,
    ProtectedAlias,
)
from crx.schemas.governance import EvidenceRule, PolicySpec
from tests.registry_world import D_MODEL, N_LAYERS, _events
from tests.team import Team


def _vector(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((N_LAYERS, D_MODEL)).astype(np.float32)


@pytest.fixture
def world(registry: Registry, tiny: str, joy: str) -> dict[str, int]:
    """Three vectors of joy@1 on tiny (distinct estimators make distinct vectors)."""
    ids = {}
    for i, estimator in enumerate(("mean_diff", "pca", "probe")):
        record = registry.save_vector(
            joy, tiny, _vector(i), origin="extracted", estimator=estimator
        ).record
        ids[estimator] = record.id
    return ids


def _state(registry: Registry) -> tuple[object, ...]:
    return (
        [a.model_dump() for a in registry.list_aliases()],
        [e.model_dump() for e in _events(registry)],
        [a.model_dump() for a in registry.list_approvals()],
        [d.model_dump() for d in registry.list_deprecations()],
    )


def _history(registry: Registry, name: str | None = None) -> list[tuple[object, ...]]:
    return [
        (h.name, h.revision, h.action, h.old_vector_id, h.new_vector_id)
        for h in registry.alias_history("joy", "tiny", name)
    ]


# -- aliases ----------------------------------------------------------------------------------


def test_alias_moves_are_compare_and_swap_and_the_history_is_complete(
    registry: Registry, world: dict[str, int]
) -> None:
    a, b, c = world["mean_diff"], world["pca"], world["probe"]
    first = registry.set_alias("joy@1", "tiny", "staging", vector_id=a, reason="first cut")
    assert (first.vector_id, first.revision, first.protected) == (a, 1, False)
    assert (first.ref, first.concept_version_ref) == ("joy@staging", "joy@1")
    # the same target again is no move: no new revision, no history row
    assert registry.set_alias("joy@1", "tiny", "staging", vector_id=a).revision == 1
    moved = registry.set_alias("joy@1", "tiny", "staging", vector_id=b, expect=str(a))
    assert moved.revision == 2
    before = _state(registry)
    with pytest.raises(AliasConflict, match=f"it is now vector {b} .*revision 2"):
        registry.set_alias("joy@1", "tiny", "staging", vector_id=c, expect=str(a))
    with pytest.raises(AliasConflict, match="expected revision 1"):
        registry.set_alias("joy@1", "tiny", "staging", vector_id=c, expect_revision=1)
    with pytest.raises(AliasConflict, match="expected not set"):
        registry.set_alias("joy@1", "tiny", "staging", vector_id=c, expect="none")
    assert _state(registry) == before  # refused moves changed nothing
    assert _history(registry) == [
        ("staging", 1, "set", None, a),
        ("staging", 2, "move", a, b),
    ]
    rows = registry.alias_history("joy", "tiny", "staging")
    assert rows[0].reason == "first cut"
    # "what was staging at the first move's time": the set, not the later move
    assert [r.revision for r in registry.alias_history("joy", "tiny", at=rows[0].at)] == [1]
    assert registry.alias_history("joy", "tiny", at=rows[0].at - timedelta(seconds=5)) == []
    # NAME@ALIAS resolves where a reference is accepted
    assert registry.get_concept("joy@staging").ref == "joy@1"
    assert registry.get_alias("joy@staging").vector_id == b
    deleted = registry.delete_alias("joy", "tiny", "staging", reason="done")
    assert deleted.vector_id == b
    with pytest.raises(AliasNotFound):
        registry.get_alias("joy@staging", "tiny")
    assert _history(registry)[-1] == ("staging", 3, "delete", b, None)
    assert registry.alias_history("joy", "tiny")[-1].reason == "done"
    assert [e.action for e in _events(registry)][-3:] == ["alias.set", "alias.set", "alias.delete"]


def test_protected_aliases_move_only_by_promotion(
    registry: Registry, world: dict[str, int]
) -> None:
    before = _state(registry)
    with pytest.raises(ProtectedAlias, match="crx promote joy@1 --model tiny --to prod"):
        registry.set_alias("joy@1", "tiny", "prod", vector_id=world["pca"])
    registry.put_policy(PolicySpec(name="gold-gate", alias="gold"))
    with pytest.raises(ProtectedAlias):
        registry.set_alias("joy@1", "tiny", "gold", vector_id=world["pca"])
    assert _state(registry)[0] == before[0]
    for bad in ("12", "a/b", "-x"):
        with pytest.raises(InvalidInput):
            registry.set_alias("joy@1", "tiny", bad, vector_id=world["pca"])


# -- promotion -------------------------------------------------------------------------------


def test_promotion_checks_evidence_and_approvals_by_someone_else(
    registry: Registry, world: dict[str, int], team: Team
) -> None:
    vector = world["mean_diff"]
    writer, approver, second = (
        team.person("writer"),
        team.person("approver"),
        team.person("approver"),
    )
    data, other_data = "a" * 64, "b" * 64
    rule = EvidenceRule(task="emotion", metric="token_accuracy", min=0.6, min_n=10, dataset=data)
    team.owner.put_policy(PolicySpec(name="joy-gate", concept="joy", evidence=[rule]))
    before = _state(registry)
    with pytest.raises(PromotionRefused) as refused:
        writer.promote("joy@1", "tiny", vector_id=vector)
    message = str(refused.value)
    assert "2 checks failed" in message
    assert f"no emotion evaluation of vector {vector} on tiny" in message
    assert f"approvals: 0 of 1 from someone other than {writer.name}" in message
    assert _state(registry) == before  # nothing changed, not even an audit event

    def evidence() -> str:
        report = writer.promote("joy@1", "tiny", vector_id=vector, check_only=True)
        assert (report.policy, report.promoted) == ("joy-gate", False)
        (check,) = [c for c in report.checks if c.check.startswith("evidence")]
        return ("pass: " if check.passed else "fail: ") + check.detail

    def record(value: float, dataset: str, n: int) -> None:
        writer.record_evaluation(
            "tiny", "emotion", {"token_accuracy": value}, vector_id=vector, dataset_oid=dataset,
            alpha=2.0, n=n,
        )  # fmt: skip

    # evidence on another dataset, or on too few examples, or too weak, does not count
    record(0.9, other_data, 50)
    assert evidence().startswith("fail: ")
    assert "on dataset aaaaaaaaaaaa" in evidence()
    record(0.9, data, 5)
    assert "with at least 10 examples" in evidence()
    writer.record_evaluation(
        "tiny", "emotion", {"token_accuracy": 0.95}, vector_id=vector, dataset_oid=data,
        alpha=0.0, n=50,
    )  # fmt: skip
    assert "with at least 10 examples" in evidence()  # α = 0 is the bare model: no evidence
    record(0.5, data, 50)
    assert evidence().startswith("fail: ")
    assert "best token_accuracy 0.500" in evidence()
    record(0.7, data, 50)
    assert evidence().startswith("pass: ")
    assert "0.700 at α 2 absolute" in evidence()  # the row records no normalize: absolute
    with pytest.raises(PromotionRefused, match="1 check failed: approvals"):
        writer.promote("joy@1", "tiny", vector_id=vector)
    # "current" data: crx ships none for joy (not an emotion), so it cannot pass
    current = rule.model_copy(update={"dataset": "current"})
    team.owner.put_policy(PolicySpec(name="joy-gate", concept="joy", evidence=[current]))
    assert "no current emotion dataset is known" in evidence()
    team.owner.put_policy(PolicySpec(name="joy-gate", concept="joy", evidence=[rule]))

    # an approver's own approval never counts for their own promotion
    approver.approve("joy@1", "tiny", vector_id=vector, reason="numbers hold")
    with pytest.raises(PromotionRefused, match=f"{approver.name}'s own approval does not count"):
        approver.promote("joy@1", "tiny", vector_id=vector)
    promoted = writer.promote("joy@1", "tiny", vector_id=vector, reason="passes joy-gate")
    assert promoted.promoted
    assert promoted.alias_record is not None
    assert promoted.alias_record.actor == writer.name
    assert registry.get_alias("joy@prod", "tiny").vector_id == vector
    last = registry.alias_history("joy", "tiny", "prod")[-1]
    assert (last.action, last.actor, last.reason) == ("promote", writer.name, "passes joy-gate")

    # a rejection blocks until that approver approves again
    other = world["pca"]
    writer.record_evaluation(
        "tiny", "emotion", {"token_accuracy": 0.8}, vector_id=other, dataset_oid=data, n=50
    )
    approver.approve("joy@1", "tiny", vector_id=other)
    second.reject("joy@1", "tiny", vector_id=other, reason="off-topic at high alpha")
    with pytest.raises(PromotionRefused, match="off-topic at high alpha"):
        writer.promote("joy@1", "tiny", vector_id=other)
    second.approve("joy@1", "tiny", vector_id=other)
    assert writer.promote("joy@1", "tiny", vector_id=other, expect=str(vector)).promoted
    decisions = [(a.vector_id, a.decision, a.actor) for a in registry.list_approvals()]
    assert decisions == [
        (vector, "approve", approver.name),
        (other, "approve", approver.name),
        (other, "reject", second.name),
        (other, "approve", second.name),
    ]


def test_an_approval_is_for_exact_content(
    registry: Registry, world: dict[str, int], team: Team
) -> None:
    writer, approver = team.person("writer"), team.person("approver")
    vector = world["probe"]
    approver.approve("joy@1", "tiny", vector_id=vector)
    # re-extracting into the same row changes its content: the approval no longer counts
    writer.save_vector(
        "joy@1", "tiny", _vector(9), origin="extracted", estimator="probe", replace=True
    )
    assert [a.current for a in registry.list_approvals()] == [False]
    with pytest.raises(PromotionRefused, match="approvals: 0 of 1"):
        writer.promote("joy@1", "tiny", vector_id=vector)
    approver.approve("joy@1", "tiny", vector_id=vector)
    assert writer.promote("joy@1", "tiny", vector_id=vector).promoted
    # and while prod points at it, its content cannot change (the database refuses)
    with pytest.raises(CrxError, match="protected alias"):
        writer.save_vector(
            "joy@1", "tiny", _vector(10), origin="extracted", estimator="probe", replace=True
        )


# -- deprecation ---------------------------------------------------------------------------


def test_deprecated_objects_are_never_aliased_approved_or_promoted(
    registry: Registry, world: dict[str, int], team: Team
) -> None:
    writer, approver = team.person("writer"), team.person("approver")
    vector = world["mean_diff"]
    record = writer.deprecate(f"vector:{vector}", reason="leaked test prompts")
    assert (record.object_kind, record.object_id, record.actor) == ("vector", vector, writer.name)
    with pytest.raises(DeprecatedObject, match="leaked test prompts"):
        writer.set_alias("joy@1", "tiny", "staging", vector_id=vector)
    with pytest.raises(DeprecatedObject):
        approver.approve("joy@1", "tiny", vector_id=vector)
    with pytest.raises(CrxError, match="already exists"):
        writer.deprecate(f"vector:{vector}", reason="again")
    # a concept version: every vector of it
    writer.deprecate("joy@1", reason="superseded")
    with pytest.raises(DeprecatedObject, match="superseded"):
        writer.set_alias("joy@1", "tiny", "staging", vector_id=world["pca"])
    # refs that name nothing are clear errors
    for ref in ("vector:999", "map:1", "model:nope", "vector:x"):
        with pytest.raises(CrxError):
            writer.deprecate(ref, reason="x")
    with pytest.raises(InvalidInput, match="needs a --reason"):
        writer.deprecate("model:tiny", reason=" ")
    assert [d.object_ref for d in registry.list_deprecations()] == [f"vector {vector}", "joy@1"]


def test_prune_keeps_governed_vectors(
    registry: Registry, world: dict[str, int], tmp_path: Path
) -> None:
    from crx.registry.declare import prune

    registry.set_alias("joy@1", "tiny", "staging", vector_id=world["pca"])
    before = _state(registry)
    with pytest.raises(GovernedObject, match="an alias points at vector"):
        registry.db.write(lambda s: prune.delete_concept(s, "joy"))
    assert _state(registry) == before


# -- what the database itself refuses ----------------------------------------------------------


def _sql(registry: Registry, statement: str) -> None:
    with registry.db.sql_engine.begin() as connection:
        connection.execute(sa.text(statement))


def test_history_audit_approvals_and_deprecations_are_append_only_even_by_sql(
    registry: Registry, world: dict[str, int], team: Team
) -> None:
    approver = team.person("approver")
    registry.set_alias("joy@1", "tiny", "staging", vector_id=world["pca"])
    approver.approve("joy@1", "tiny", vector_id=world["pca"])
    registry.deprecate(f"vector:{world['probe']}", reason="x")
    before = _state(registry)
    # even the owner (here: the superuser / the file's user) cannot rewrite the record
    for table in ("audit_events", "alias_history", "approvals", "deprecations"):
        for statement in (f"UPDATE {table} SET actor = 'someone'", f"DELETE FROM {table}"):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"):
                _sql(registry, statement)
    assert _state(registry) == before


def test_the_database_guards_protected_aliases_against_direct_sql(
    registry: Registry, world: dict[str, int], team: Team
) -> None:
    writer, approver = team.person("writer"), team.person("approver")
    good, other = world["mean_diff"], world["pca"]
    approver.approve("joy@1", "tiny", vector_id=good)
    writer.promote("joy@1", "tiny", vector_id=good)
    before = _state(registry)
    with pytest.raises(sa.exc.DBAPIError, match="protected alias"):
        _sql(registry, f"UPDATE aliases SET vector_id = {other} WHERE name = 'prod'")
    # and an alias may not point at a vector of another concept version or model
    with pytest.raises(sa.exc.DBAPIError, match="not a vector of that concept version"):
        _sql(registry, "UPDATE aliases SET concept_version_id = concept_version_id + 100")
    assert _state(registry) == before


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # roles are PostgreSQL's
def test_postgres_roles_are_enforced_by_the_database(
    registry: Registry, world: dict[str, int], team: Team
) -> None:
    assert team.postgres
    writer, reader = team.person("writer"), team.person("reader")
    vector = world["mean_diff"]
    with pytest.raises(DatabaseRefused, match="permission denied for table approvals"):
        writer.approve("joy@1", "tiny", vector_id=vector)
    with pytest.raises(DatabaseRefused, match="permission denied"):
        reader.set_alias("joy@1", "tiny", "staging", vector_id=vector)
    with pytest.raises(DatabaseRefused, match="permission denied for table policies"):
        writer.put_policy(PolicySpec(name="lax", approvals=1))
    with pytest.raises(NotPermitted, match="registry owner"):
        writer.gc_store(dry_run=False)
    # a writer cannot forge who acted: the database stamps its own role
    with writer.registry.db.sql_engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO audit_events (at, actor, action, object_kind, object_ref) "
                "VALUES (now(), 'someone-else', 'forged', 'x', 'x')"
            )
        )
    assert _events(registry)[-1].actor == writer.name
    for statement in ("UPDATE audit_events SET actor = 'x'", "DELETE FROM alias_history"):
        with (
            pytest.raises(sa.exc.DBAPIError, match="permission denied"),
            writer.registry.db.sql_engine.begin() as connection,
        ):
            connection.execute(sa.text(statement))
    # roles and users are idempotent
    assert registry.ensure_roles().created == []
    assert registry.add_user(writer.name, "writer").created == []
    # a wrong password does not get in
    url = writer.registry.db.sql_engine.url.set(password="wrong")
    with pytest.raises(CrxError, match="password authentication failed"):
        Registry(url.render_as_string(hide_password=False), registry.store.url).list_models()


def test_policy_and_promotion_inputs_are_checked(registry: Registry, world: dict[str, int]) -> None:
    with pytest.raises(InvalidInput, match="needs min, not_below_base"):
        registry.put_policy(
            PolicySpec(name="p", evidence=[EvidenceRule(task="emotion", metric="token_accuracy")])
        )
    with pytest.raises(InvalidInput, match="has 3 vectors on tiny"):
        registry.promote("joy@1", "tiny")
    with pytest.raises(CrxError, match="no vector '103'"):
        registry.promote("joy@1", "tiny", vector_id=103)


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # roles are PostgreSQL's
def test_a_read_only_role_reads_and_each_write_is_one_clear_refusal(
    registry: Registry, world: dict[str, int], team: Team, pairs_file: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from crx.cli.main import cli
    from tests.test_cli_errors import user_error

    reader = team.person("reader")
    url = reader.registry.db.sql_engine.url.render_as_string(hide_password=False)
    password = reader.registry.db.sql_engine.url.password

    def run(*args: str) -> object:
        return CliRunner().invoke(cli, ["--db", url, "--store", str(tmp_path / "store"), *args])

    listed = run("list", "vectors", "--json")
    assert listed.exit_code == 0, listed.output  # type: ignore[attr-defined]
    before = _state(registry)
    for args in (
        ["register", "concept", "calm", "--pairs", str(pairs_file)],
        ["alias", "set", "joy@1", "staging", "--model", "tiny", "--vector", str(world["pca"])],
        ["deprecate", "model:tiny", "--reason", "x"],
        ["store", "gc", "--yes", "--grace", "0"],
    ):
        line = user_error(run(*args))  # type: ignore[arg-type]
        assert "permission denied" in line or "registry owner" in line, line
        assert str(password) not in line
    assert _state(registry) == before


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # roles are PostgreSQL's
def test_a_reader_is_refused_before_any_blob_is_stored(
    registry: Registry, world: dict[str, int], team: Team, tmp_path: Path
) -> None:
    """A role that may not write is refused before its content reaches the store: a refused
    command leaves no unreferenced blob behind (found by benchmarks/hostile_campaign.py)."""
    reader = team.person("reader")
    pairs = tmp_path / "new-pairs.json"
    pairs.write_text('[{"positive": "a reader\'s own text", "negative": "not stored"}]')
    blobs = set(registry.store.iter_oids())
    with pytest.raises(DatabaseRefused, match="may not write to this registry"):
        reader.register_concept("readers-concept", pairs)
    with pytest.raises(DatabaseRefused, match="may not write to this registry"):
        reader.save_vector(
            "joy@1",
            "tiny",
            np.full((4, 32), 0.5, np.float32),
            origin="imported",
            estimator="readers",
        )
    assert set(registry.store.iter_oids()) == blobs
    # a writer still stores and records
    writer = team.person("writer")
    assert writer.register_concept("writers-concept", pairs).record.version == 1
