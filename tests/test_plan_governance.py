"""`crx plan` under governance: aliases decide the route, deprecated objects are never chosen.

Real registries on SQLite and PostgreSQL, with the hand-built models and maps of
``tests/test_resolve.py``. ``prod`` moves only by promotion, which needs an approval by someone
other than the mover: on SQLite two ``CRX_ACTOR`` values, on PostgreSQL two database roles
(the superuser promotes, a login role made with ``add_user`` approves).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from crx.cli.main import cli
from crx.registry import Registry
from crx.registry.errors import AliasNotFound, DeprecatedObject, InvalidInput
from crx.registry.resolve.execute import read_plan
from crx.schemas.plan import ConceptPlan, TransplantPlan
from tests.test_resolve import SHAPES, _model_dir, add_map, vector_of


@dataclass
class Governed:
    """A registry, and how to promote on it (who approves, who moves)."""

    reg: Registry
    monkeypatch: pytest.MonkeyPatch
    approver: Registry | None  # PostgreSQL: a registry connected as an approver role
    mover: str  # how the plan names who moved an alias

    def promote(self, ref: str, model: str, vector_id: int) -> None:
        if self.approver is None:  # SQLite: the actor is CRX_ACTOR
            self.monkeypatch.setenv("CRX_ACTOR", "approver")
            self.reg.approve(ref, model, vector_id=vector_id)
            self.monkeypatch.setenv("CRX_ACTOR", "promoter")
        else:
            self.approver.approve(ref, model, vector_id=vector_id)
        self.reg.promote(ref, model, vector_id=vector_id, reason="shipped")


@pytest.fixture
def gov(
    registry: Registry,
    tmp_path: Path,
    pairs_file: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Governed]:
    """The models of test_resolve (src, src2, mid, tgt) and ``honesty`` on src and src2."""
    for name, (layers, d) in SHAPES.items():
        role = "aligned" if name.startswith("src") else "base"
        registry.register_model(name, str(_model_dir(tmp_path, name, layers, d)), role=role)
    registry.register_concept("honesty", pairs_file)
    rng = np.random.default_rng(0)
    for name in ("src", "src2"):
        layers, d = SHAPES[name]
        registry.save_vector(
            "honesty", name, rng.normal(size=(layers, d)).astype(np.float32), origin="extracted"
        )
    monkeypatch.setenv("CRX_ACTOR", "promoter")
    url = registry.location.database_url
    if not url.startswith("postgresql"):
        yield Governed(registry, monkeypatch, None, "promoter")
        return
    server = request.getfixturevalue("postgres_server")
    registry.ensure_roles()
    user, password = f"approver_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    registry.add_user(user, "approver", password)
    database = make_url(url).database
    approver = Registry(server.url(database, user=user, password=password), str(tmp_path / "store"))
    yield Governed(registry, monkeypatch, approver, "postgres (promoter)")
    approver.close()


def _native(reg: Registry, concept: str = "honesty", value: float = 1.0) -> int:
    array = np.full((4, 5), value, dtype=np.float32)
    return reg.save_vector(concept, "tgt", array, origin="extracted").record.id


def _evaluate(reg: Registry, vector_id: int, accuracy: float) -> None:
    reg.record_evaluation(
        "tgt", "emotion", {"token_accuracy": accuracy}, vector_id=vector_id, layers=[3], alpha=0.1
    )


def _one(plan: TransplantPlan, concept: str) -> ConceptPlan:
    return next(c for c in plan.concepts if c.concept == concept)


# -- aliases ----------------------------------------------------------------------------------


def test_the_prod_alias_decides_the_route_and_the_plan_says_so(gov: Governed) -> None:
    reg = gov.reg
    add_map(reg, "src", "tgt", 2, 3, r2=0.9)
    native = _native(reg)
    mapped = reg.transplant("honesty", "src", "tgt").record.id
    _evaluate(reg, mapped, 0.9)
    _evaluate(reg, native, 0.2)
    ranked = reg.plan("tgt", ["honesty"]).concepts[0]
    assert ranked.chosen is not None
    assert ranked.chosen.vector_id == mapped
    assert ranked.alias is None

    gov.promote("honesty@1", "tgt", native)
    for plan in (reg.plan("tgt", ["honesty"]), reg.plan("tgt")):
        item = _one(plan, "honesty@1")
        assert item.status == "ready"
        assert item.chosen is not None
        assert (item.chosen.kind, item.chosen.vector_id) == ("native", native)
        assert item.candidates[0] == item.chosen
        assert [r.vector_id for r in item.candidates[1:]] == [mapped]
        assert item.alias is not None
        assert (item.alias.name, item.alias.vector_id, item.alias.revision) == ("prod", native, 1)
        assert (item.alias.concept_version, item.alias.action) == (1, "promote")
        moved = item.alias.moved_at
        assert item.why == (
            f"prod alias: vector {native} (honesty@1, revision 1, moved by {gov.mover} at "
            f"{moved:%Y-%m-%d %H:%M} UTC)"
        )
        assert any(
            r.startswith("without the alias the ranking would choose the transplanted route")
            for r in item.reasons
        )
    # The field is in the JSON document and survives a round trip.
    document = json.loads(plan.model_dump_json())
    assert document["schema_version"] == 1
    assert document["concepts"][0]["alias"]["vector_id"] == native
    assert document["concepts"][0]["alias"]["name"] == "prod"
    assert read_plan(document) == plan
    # Executing it registers nothing new: the alias's vector exists.
    assert [(d.status, d.vector_id) for d in reg.execute_plan(plan)] == [("existing", native)]


def test_prod_concepts_are_planned_by_default_and_an_asked_version_as_asked(
    gov: Governed, pairs_file: Path
) -> None:
    reg = gov.reg
    add_map(reg, "src", "tgt", 2, 3, r2=0.9)
    native = _native(reg)
    gov.promote("honesty@1", "tgt", native)
    # honesty@2 is newer and has a vector, but prod names honesty@1.
    reg.register_concept("honesty", pairs_file, template="Q: {text}")
    reg.save_vector("honesty", "src", np.ones((4, 8), np.float32), origin="extracted")
    # fairness is marked for use; honesty is not, but has prod on tgt: both are planned.
    reg.register_concept("fairness", pairs_file, template="F: {text}")
    reg.save_vector("fairness", "src", np.ones((4, 8), np.float32), origin="extracted")
    reg.mark_for_use("fairness")
    default = reg.plan("tgt")
    assert [c.concept for c in default.concepts] == ["fairness@1", "honesty@1"]
    assert _one(default, "honesty@1").alias is not None
    assert _one(default, "fairness@1").alias is None

    by_name = reg.plan("tgt", ["honesty"]).concepts[0]
    assert (by_name.concept, by_name.chosen.vector_id) == ("honesty@1", native)  # type: ignore[union-attr]
    asked = reg.plan("tgt", ["honesty@2"]).concepts[0]
    assert asked.concept == "honesty@2"
    assert asked.alias is None
    assert asked.chosen is not None
    assert asked.chosen.kind == "direct"
    assert any(
        r.startswith(f"prod alias: vector {native} (honesty@1, revision 1, moved by")
        and r.endswith("; honesty@2 is planned as asked")
        for r in asked.reasons
    )
    same = reg.plan("tgt", ["honesty@1"]).concepts[0]
    assert same.alias is not None
    assert same.chosen.vector_id == native
    # Another target has no alias: ranking as before, no alias reason.
    elsewhere = reg.plan("mid", ["honesty"]).concepts[0]
    assert elsewhere.alias is None
    assert not any("alias" in r for r in elsewhere.reasons)


def test_plan_from_another_alias(gov: Governed, pairs_file: Path) -> None:
    reg = gov.reg
    add_map(reg, "src", "tgt", 2, 3, r2=0.9)
    native = _native(reg)
    mapped = reg.transplant("honesty", "src", "tgt").record.id
    gov.promote("honesty@1", "tgt", native)
    staged = reg.set_alias("honesty@1", "tgt", "staging", vector_id=mapped, reason="try it")
    reg.register_concept("fairness", pairs_file, template="F: {text}")
    reg.save_vector("fairness", "src", np.ones((4, 8), np.float32), origin="extracted")

    plan = reg.plan("tgt", ["honesty", "fairness"], alias="staging")
    honesty, fairness = plan.concepts
    assert honesty.chosen is not None
    assert (honesty.chosen.kind, honesty.chosen.vector_id) == ("transplanted", mapped)
    assert honesty.alias is not None
    assert (honesty.alias.name, honesty.alias.revision) == ("staging", staged.revision)
    assert honesty.why.startswith(f"staging alias: vector {mapped} (honesty@1, revision 1,")
    assert fairness.alias is None
    assert fairness.chosen is not None
    assert fairness.chosen.kind == "direct"
    assert "no staging alias of fairness on tgt: routes are ranked" in fairness.reasons
    # The default set follows the alias asked for; NAME@ALIAS names one alias per concept.
    assert [c.concept for c in reg.plan("tgt", alias="staging").concepts] == [
        "fairness@1",
        "honesty@1",
    ]
    pinned = reg.plan("tgt", ["honesty@staging", "fairness"]).concepts
    assert pinned[0].alias is not None
    assert pinned[0].alias.name == "staging"
    assert pinned[0].chosen.vector_id == mapped  # type: ignore[union-attr]
    assert pinned[1].alias is None
    assert not any("alias" in r for r in pinned[1].reasons)  # prod is the default: no note
    with pytest.raises(AliasNotFound, match="no alias honesty@canary on tgt"):
        reg.plan("tgt", ["honesty@canary"])
    with pytest.raises(InvalidInput, match="not a version"):
        reg.plan("tgt", ["honesty"], alias="12")
    with pytest.raises(InvalidInput, match="'@' separates"):
        reg.plan("tgt", ["honesty"], alias="a@b")


# -- deprecations -----------------------------------------------------------------------------


def test_deprecated_vectors_maps_and_models_are_never_chosen(gov: Governed) -> None:
    reg = gov.reg
    good, _, _ = add_map(reg, "src", "tgt", 2, 3, r2=0.9)
    other, _, _ = add_map(reg, "src2", "tgt", 1, 3, r2=0.5)
    mapped = reg.transplant("honesty", "src", "tgt").record.id
    _evaluate(reg, mapped, 0.9)
    assert reg.plan("tgt", ["honesty"]).concepts[0].chosen.vector_id == mapped  # type: ignore[union-attr]

    reg.deprecate(f"map:{good}", reason="fitted on leaked data")
    item = reg.plan("tgt", ["honesty"]).concepts[0]
    assert item.chosen is not None
    assert (item.chosen.kind, item.chosen.source_model) == ("direct", "src2")
    assert [h.map_id for h in item.chosen.hops] == [other]
    assert all(good not in [h.map_id for h in r.hops] for r in item.candidates)
    assert (
        f"vector {mapped} was mapped through map {good}, which is deprecated "
        "(fitted on leaked data)" in item.reasons
    )
    assert (
        f"map {good} is deprecated (fitted on leaked data): routes through it are not used"
        in item.reasons
    )

    src2_vector = vector_of(reg, "src2")
    reg.deprecate(f"vector:{src2_vector}", reason="bad pairs")
    planned = reg.plan("tgt", ["honesty"])
    item = planned.concepts[0]
    assert item.chosen is None
    assert item.status == "needs-steps"
    assert f"vector {src2_vector} is deprecated (bad pairs)" in item.reasons
    # The steps name a source that is still in use (the fit is the plan's step).
    assert [s.command for s in planned.steps] == ["crx fit --source src --target tgt"]
    assert item.steps[0].command == "crx transplant honesty@1 --source src --target tgt"

    reg.deprecate("model:src", reason="withdrawn")
    item = reg.plan("tgt", ["honesty"]).concepts[0]
    assert f"vector {vector_of(reg, 'src')} is on model src, which is deprecated (withdrawn)" in (
        item.reasons
    )
    assert item.chosen is None
    # A deprecated target: nothing is planned into it.
    reg.deprecate("model:tgt", reason="retired")
    into = reg.plan("tgt", ["honesty"]).concepts[0]
    assert (into.status, into.chosen) == ("no-route", None)
    assert into.why == "model tgt is deprecated (retired): nothing is planned into it"


def test_a_chain_through_a_deprecated_model_is_not_used(gov: Governed) -> None:
    reg = gov.reg
    add_map(reg, "src", "mid", 0, 1, r2=0.95)
    through, _, _ = add_map(reg, "mid", "tgt", 1, 3, r2=0.95)
    add_map(reg, "src2", "tgt", 1, 3, r2=0.5)
    assert reg.plan("tgt", ["honesty"]).concepts[0].chosen.kind == "multi-hop"  # type: ignore[union-attr]
    reg.deprecate("model:mid", reason="gone")
    item = reg.plan("tgt", ["honesty"]).concepts[0]
    assert item.chosen is not None
    assert (item.chosen.kind, item.chosen.source_model) == ("direct", "src2")
    assert (
        f"map {through} leaves model mid, which is deprecated (gone): routes through it are not "
        "used" in item.reasons
    )


def test_deprecated_concept_versions(gov: Governed, pairs_file: Path) -> None:
    reg = gov.reg
    add_map(reg, "src", "tgt", 2, 3, r2=0.9)
    reg.register_concept("honesty", pairs_file, template="Q: {text}")
    reg.save_vector("honesty", "src", np.ones((4, 8), np.float32), origin="extracted")
    assert [c.concept for c in reg.plan("tgt").concepts] == ["honesty@2"]
    reg.deprecate("honesty@2", reason="leading template")
    # The default set and a bare NAME skip it: the newest version still in use is planned.
    assert [c.concept for c in reg.plan("tgt").concepts] == ["honesty@1"]
    assert reg.plan("tgt", ["honesty"]).concepts[0].concept == "honesty@1"
    asked = reg.plan("tgt", ["honesty@2"]).concepts[0]
    assert (asked.concept, asked.status, asked.chosen) == ("honesty@2", "no-route", None)
    assert asked.why == "honesty@2 is deprecated (leading template)"
    # A marked version that is deprecated is skipped too.
    reg.mark_for_use("honesty@1")
    reg.deprecate("honesty@1", reason="superseded")
    assert reg.plan("tgt").concepts == []


def test_an_alias_to_a_vector_deprecated_after_it_moved_is_not_used(gov: Governed) -> None:
    reg = gov.reg
    add_map(reg, "src", "tgt", 2, 3, r2=0.9)
    native = _native(reg)
    gov.promote("honesty@1", "tgt", native)
    reg.deprecate(f"vector:{native}", reason="drifted")
    for plan in (reg.plan("tgt", ["honesty"]), reg.plan("tgt")):
        item = _one(plan, "honesty@1")
        assert item.alias is None
        assert item.chosen is not None
        assert item.chosen.kind == "direct"
        assert any(
            r.startswith(f"prod alias: vector {native} (honesty@1, revision 1, moved by ")
            and r.endswith(f"is not used: vector {native} is deprecated (drifted)")
            for r in item.reasons
        )
        assert f"vector {native} is deprecated (drifted)" in item.reasons
    with pytest.raises(AliasNotFound):
        reg.plan("tgt", ["honesty@staging"])


def test_transplant_plan_refuses_what_was_deprecated_since_planning(gov: Governed) -> None:
    reg = gov.reg
    m1, _, _ = add_map(reg, "src", "mid", 0, 1, r2=0.9, seed=1)
    m2, _, _ = add_map(reg, "mid", "tgt", 1, 3, r2=0.9, seed=2)
    plan = reg.plan("tgt", ["honesty"])
    assert [h.map_id for h in plan.concepts[0].chosen.hops] == [m1, m2]  # type: ignore[union-attr]
    before = len(reg.list_vectors(limit=0).items)
    reg.deprecate(f"map:{m2}", reason="refit pending")
    message = (
        f"map {m2} is deprecated (refit pending): it cannot be used by the plan's route for "
        "honesty@1 (deprecated after the plan was made: run `crx plan` again)"
    )
    with pytest.raises(DeprecatedObject) as refused:
        reg.execute_plan(plan)
    assert str(refused.value) == message
    assert len(reg.list_vectors(limit=0).items) == before
    # A ready route whose vector was deprecated since is refused the same way.
    native = _native(reg)
    ready = reg.plan("tgt", ["honesty"])
    assert ready.concepts[0].chosen.vector_id == native  # type: ignore[union-attr]
    reg.deprecate(f"vector:{native}", reason="drifted")
    with pytest.raises(DeprecatedObject, match=f"vector {native} is deprecated \\(drifted\\)"):
        reg.execute_plan(ready)
    # So is a plan of a concept version deprecated since.
    fresh = reg.plan("tgt", ["honesty"])
    assert fresh.concepts[0].chosen is None  # no route left: the map and vector are out
    reg.deprecate("honesty@1", reason="retired")
    with pytest.raises(DeprecatedObject, match="honesty@1 is deprecated \\(retired\\)"):
        reg.execute_plan(ready)


# -- the CLI ------------------------------------------------------------------------------------


def test_cli_plan_alias_report_and_json(gov: Governed) -> None:
    reg = gov.reg
    add_map(reg, "src", "tgt", 2, 3, r2=0.9)
    native = _native(reg)
    reg.set_alias("honesty@1", "tgt", "staging", vector_id=native)
    runner = CliRunner()
    base = ["--db", reg.location.database_url, "--store", reg.location.store_url]
    shown = runner.invoke(cli, [*base, "plan", "--target", "tgt", "--alias", "staging"])
    assert shown.exit_code == 0, shown.output
    assert "honesty@1: ready" in shown.output
    assert f"alias: staging → vector {native} (revision 1)" in shown.output
    assert f"why: staging alias: vector {native} (honesty@1, revision 1, moved by" in shown.output
    document = json.loads(
        runner.invoke(
            cli, [*base, "plan", "--target", "tgt", "--alias", "staging", "--json"]
        ).output
    )
    assert document["concepts"][0]["alias"]["name"] == "staging"
    assert document["concepts"][0]["chosen"]["vector_id"] == native
    # Without --alias, prod decides, and there is none: ranked as before.
    ranked = json.loads(runner.invoke(cli, [*base, "plan", "--target", "tgt", "--json"]).output)
    assert ranked["concepts"][0]["alias"] is None
    bad = runner.invoke(cli, [*base, "plan", "--target", "tgt", "--alias", "7"])
    assert bad.exit_code == 1
    assert bad.output.startswith("Error: --alias takes an alias name, not a version")


def test_many_deprecated_maps_each_keep_their_own_reason(gov: Governed) -> None:
    """Past a few citations the planner reads a kind's reasons at once: each stays its own."""
    reg = gov.reg
    ids = [add_map(reg, "src", "tgt", ls, lt, r2=0.9)[0] for ls in range(4) for lt in range(4)]
    kept = ids.pop()
    for n, map_id in enumerate(ids):
        reg.deprecate(f"map:{map_id}", reason=f"drift {n}")
    item = reg.plan("tgt", ["honesty"]).concepts[0]
    assert item.chosen is not None
    assert [h.map_id for h in item.chosen.hops] == [kept]
    cited = sorted(r for r in item.reasons if r.startswith("map "))
    assert cited == sorted(
        f"map {m} is deprecated (drift {n}): routes through it are not used"
        for n, m in enumerate(ids)
    )
