"""`crx audit` (the audit trail filtered) and `crx lineage` (a vector's graph), on both
databases: each filter narrows to exactly the events it names, pages and dates behave, bad
input is one ``Error:`` line, and lineage walks native, transplanted and two-hop vectors with
their evaluations, approvals, aliases and deprecations, as a tree, JSON and a DOT digraph.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from crx.registry import Registry
from crx.registry.errors import AliasNotFound, InvalidInput, ModelNotFound
from crx.schemas.records import AuditEventRecord
from tests.cli_world import World
from tests.registry_world import _model_folder

CORPUS = "c0" * 32


@dataclass
class Chain:
    """honesty@1 extracted on a, transplanted a → b (map m1), then b → c (map m2)."""

    va: int
    vb: int
    vc: int
    m1: int
    m2: int
    pairs_oid: str


def build(reg: Registry, root: Path, pairs: Path) -> Chain:
    for name, d in (("a", 8), ("b", 6), ("c", 5)):
        reg.register_model(name, str(_model_folder(root, f"model-{name}", 4, d)))
    version = reg.register_concept("honesty", pairs).record
    ones = lambda d_t, d_s: np.ones((d_t, d_s), np.float32)  # noqa: E731
    va = reg.save_vector(version.ref, "a", np.ones((4, 8), np.float32), origin="extracted").record
    m1 = reg.save_map(
        "a", "b", 1, 2, ones(6, 8), None, solver="ridge", r2=0.8, corpus_oid=CORPUS, n_samples=50
    ).record
    vb = reg.save_vector(
        version.ref,
        "b",
        np.ones((4, 6), np.float32),
        origin="mapped",
        source_vector_id=va.id,
        map_ids=[m1.id],
        lineage_key=f"{va.id}:{m1.id}",
        layers=[2],
    ).record
    m2 = reg.save_map("b", "c", 2, 3, ones(5, 6), None, solver="ols", r2=0.5).record
    vc = reg.save_vector(
        version.ref,
        "c",
        np.ones((4, 5), np.float32),
        origin="mapped",
        source_vector_id=vb.id,
        map_ids=[m2.id],
        lineage_key=f"{vb.id}:{m2.id}",
        layers=[3],
    ).record
    reg.record_evaluation(
        "c", "emotion", {"acc": 0.7}, vector_id=vc.id, alpha=2.0, n=10, dataset_oid=CORPUS
    )
    reg.record_evaluation(
        "c", "emotion", {"acc": 0.9}, vector_id=vc.id, alpha=4.0, n=12, dataset_oid=CORPUS
    )
    reg.record_evaluation("c", "emotion", {"acc": 0.3}, n=12, dataset_oid=CORPUS)
    reg.set_alias(version.ref, "c", "staging", reason="try it")
    return Chain(va.id, vb.id, vc.id, m1.id, m2.id, version.pairs_oid)


@pytest.fixture
def chain(registry: Registry, tmp_path: Path, pairs_file: Path) -> Chain:
    return build(registry, tmp_path, pairs_file)


def ids(events: list[AuditEventRecord]) -> list[int]:
    return [e.id for e in events]


def everything(reg: Registry) -> list[AuditEventRecord]:
    """The whole trail, newest first (as `audit` lists it)."""
    return list(reversed(reg.audit_events(limit=None).items))


def is_postgres(reg: Registry) -> bool:
    return reg.db.sql_engine.dialect.name == "postgresql"


# -- audit: filters -------------------------------------------------------------------------


def test_each_object_reference_names_exactly_its_events(registry: Registry, chain: Chain) -> None:
    trail = everything(registry)

    def where(test: object) -> list[int]:
        return [e.id for e in trail if test(e)]  # type: ignore[operator]

    def about(kind: str, object_id: int) -> object:
        return lambda e: e.object_kind == kind and e.object_id == object_id

    def audit(ref: str, model: str | None = None) -> list[int]:
        return ids(registry.audit(object=ref, model=model, limit=0).items)

    vc_events = where(
        lambda e: (
            (e.object_kind == "vector" and e.object_id == chain.vc)
            or (e.action == "record" and e.object_ref.startswith(f"emotion of vector {chain.vc} "))
        )
    )
    assert len(vc_events) == 3  # registered, evaluated twice
    assert audit(f"vector:{chain.vc}") == vc_events
    assert audit(f"map:{chain.m1}") == where(about("map", chain.m1))
    assert len(audit(f"map:{chain.m1}")) == 1
    assert audit("model:b") == where(lambda e: e.object_kind == "model" and e.object_ref == "b")
    assert audit("honesty@1") == where(lambda e: e.object_kind == "concept_version")
    assert audit("honesty") == audit("honesty@1")  # the latest version
    # With a model, a concept version names its vector there.
    assert audit("honesty@1", "b") == where(about("vector", chain.vb))
    # An alias: its own moves and the events of the vector it points at.
    staging = where(lambda e: e.action == "alias.set")
    assert len(staging) == 1
    assert audit("honesty@staging", "c") == sorted([*staging, *vc_events], reverse=True)
    assert audit("honesty@staging") == audit("honesty@staging", "c")  # one model has it
    # A vector's id still finds its events after nothing else refers to it; a typo finds none.
    assert audit("vector:999999") == []


def test_model_actor_action_filters_combine(
    registry: Registry, chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    trail = everything(registry)
    model_ids = {m.name: m.id for m in registry.list_models().items}
    on_b = ids(registry.audit(model="b", limit=0).items)
    # Model b's own registration, the map into b, and the vector transplanted onto b.
    assert on_b == [
        e.id
        for e in trail
        if (e.object_kind, e.object_id)
        in {("model", model_ids["b"]), ("map", chain.m1), ("vector", chain.vb)}
    ]
    assert all(e.model_id == model_ids["b"] for e in registry.audit(model="b").items)
    # --model filters a vector:ID reference too (a vector of c is on no other model).
    assert ids(registry.audit(object=f"vector:{chain.vc}", model="b").items) == []

    registers = [e.id for e in trail if e.action == "register"]
    assert ids(registry.audit(action="register", limit=0).items) == registers
    assert ids(registry.audit(action="regist", limit=0).items) == []  # exact, not a prefix
    aliases = [e.id for e in trail if e.action.startswith("alias.")]
    assert ids(registry.audit(action="alias.", limit=0).items) == aliases
    assert ids(registry.audit(action="alias*", limit=0).items) == aliases
    assert ids(registry.audit(action="ALIAS.", limit=0).items) == []  # case counts
    assert ids(registry.audit(action="*", limit=0).items) == ids(trail)

    monkeypatch.setenv("CRX_ACTOR", "carol")
    registry.set_alias("honesty@1", "b", "canary")
    newest = registry.audit(limit=1).items[0]
    assert (newest.action, newest.label) == ("alias.set", "carol")
    by_tester = ids(registry.audit(actor="tester", limit=0).items)
    by_carol = ids(registry.audit(actor="carol", limit=0).items)
    if is_postgres(registry):
        # The database's role is the identity; CRX_ACTOR is only a label, and no filter.
        assert (by_tester, by_carol) == ([], [])
        assert ids(registry.audit(actor="postgres", limit=0).items) == [newest.id, *ids(trail)]
    else:
        assert (by_tester, by_carol) == (ids(trail), [newest.id])
    both = registry.audit(action="alias.set", model="b", limit=0).items
    assert ids(both) == [newest.id]


def test_pages_run_newest_first_and_join_up(registry: Registry, chain: Chain) -> None:
    trail = ids(everything(registry))
    seen: list[int] = []
    after = None
    while True:
        page = registry.audit(limit=4, after=after)
        assert len(page.items) <= 4
        seen += ids(page.items)
        if page.next_after is None:
            break
        assert page.next_after == page.items[-1].id
        after = page.next_after
    assert seen == trail
    assert len(trail) > 8
    assert ids(registry.audit(after=trail[2], limit=0).items) == trail[3:]
    assert ids(registry.audit(after=2**40, limit=0).items) == trail  # past every id
    assert registry.audit(after=0).items == []
    assert registry.audit(limit=0).next_after is None


def test_dates_bound_the_trail_inclusively(registry: Registry, chain: Chain) -> None:
    trail = everything(registry)
    middle = trail[len(trail) // 2].at

    def audit(**bounds: object) -> list[int]:
        return ids(registry.audit(limit=0, **bounds).items)  # type: ignore[arg-type]

    assert audit(since=middle) == [e.id for e in trail if e.at >= middle]
    assert audit(until=middle) == [e.id for e in trail if e.at <= middle]
    assert audit(since=middle, until=middle) == [e.id for e in trail if e.at == middle]
    # Naive = UTC; an offset is honoured; strings and datetimes agree.
    naive = middle.replace(tzinfo=None).isoformat()
    assert audit(since=naive) == audit(since=middle)
    shifted = middle.astimezone(UTC).replace(tzinfo=None) + timedelta(hours=2)
    assert audit(until=shifted.isoformat() + "+02:00") == audit(until=middle)
    # A date alone: since its start, until its end (the whole day).
    today = trail[0].at.date()
    first_day = trail[-1].at.date()
    assert audit(until=today.isoformat()) == ids(trail)
    assert audit(since=first_day.isoformat()) == ids(trail)
    assert audit(since=(today + timedelta(days=1)).isoformat()) == []
    assert audit(until=(first_day - timedelta(days=1)).isoformat()) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"since": "2026-13-01"}, InvalidInput, "--since takes an ISO 8601"),
        ({"until": "yesterday"}, InvalidInput, "--until takes an ISO 8601"),
        ({"object": "vector:abc"}, InvalidInput, "vector:ID needs a numeric id"),
        ({"object": "blob:1"}, InvalidInput, "unknown object reference"),
        ({"object": "honesty@prod", "model": "c"}, AliasNotFound, "honesty@prod on c"),
        ({"object": "model:nosuch"}, ModelNotFound, "nosuch"),
        ({"model": "nosuch"}, ModelNotFound, "nosuch"),
        ({"action": " "}, InvalidInput, "--action needs"),
        ({"limit": -1}, InvalidInput, "limit"),
    ],
)
def test_bad_audit_input_is_refused(
    registry: Registry, chain: Chain, kwargs: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=re.escape(match)):
        registry.audit(**kwargs)


# -- lineage --------------------------------------------------------------------------------


def keys(reg: Registry, ref: str, model: str | None = None) -> list[str]:
    return [n.key for n in reg.lineage(ref, model=model).nodes]


def test_lineage_of_a_native_vector(registry: Registry, chain: Chain) -> None:
    graph = registry.lineage("honesty@1", model="a")
    assert graph.root == f"vector:{chain.va}"
    assert graph.vector_id == chain.va
    nodes = {n.key: n for n in graph.nodes}
    assert list(nodes) == [
        f"vector:{chain.va}",
        "concept:honesty@1",
        f"pairs:{chain.pairs_oid}",
        "model:a",
    ]
    assert nodes[graph.root].inputs == ["concept:honesty@1", "model:a"]
    assert nodes[graph.root].details["origin"] == "extracted"
    assert nodes["concept:honesty@1"].inputs == [f"pairs:{chain.pairs_oid}"]
    assert nodes[f"pairs:{chain.pairs_oid}"].details["n_pairs"] == 2
    assert keys(registry, f"vector:{chain.va}") == list(nodes)
    assert registry.lineage(None, vector_id=chain.va) == graph


def test_lineage_of_a_transplanted_vector(registry: Registry, chain: Chain) -> None:
    graph = registry.lineage("honesty@1", model="b")
    nodes = {n.key: n for n in graph.nodes}
    assert nodes[graph.root].inputs == [f"vector:{chain.va}", f"map:{chain.m1}"]
    fitted = nodes[f"map:{chain.m1}"]
    assert fitted.inputs == ["model:a", "model:b", f"corpus:{CORPUS}"]
    assert {k: fitted.details[k] for k in ("solver", "corpus_oid", "source_layer")} == {
        "solver": "ridge",
        "corpus_oid": CORPUS,
        "source_layer": 1,
    }
    assert fitted.details["r2"] == pytest.approx(0.8)
    assert (fitted.details["target_layer"], fitted.details["n_samples"]) == (2, 50)
    assert "R² 0.8" in fitted.label
    assert set(nodes) == {
        f"vector:{chain.vb}",
        f"vector:{chain.va}",
        "concept:honesty@1",
        f"pairs:{chain.pairs_oid}",
        "model:a",
        f"map:{chain.m1}",
        "model:b",
        f"corpus:{CORPUS}",
    }


def test_lineage_of_a_two_hop_chain_with_evaluations_and_aliases(
    registry: Registry, chain: Chain
) -> None:
    registry.approve("honesty@1", "c", reason="looks right")
    registry.deprecate(f"map:{chain.m1}", reason='old "corpus" \\ v1')
    graph = registry.lineage("honesty@staging", model="c")
    nodes = {n.key: n for n in graph.nodes}
    assert graph.root == f"vector:{chain.vc}"
    assert nodes[graph.root].inputs == [f"vector:{chain.vb}", f"map:{chain.m2}"]
    assert nodes[f"vector:{chain.vb}"].inputs == [f"vector:{chain.va}", f"map:{chain.m1}"]
    assert nodes[f"vector:{chain.va}"].inputs == ["concept:honesty@1", "model:a"]
    (evaluation,) = [n for n in graph.nodes if n.kind == "evaluation"]
    assert evaluation.inputs == [graph.root]
    assert {k: evaluation.details[k] for k in ("task", "metric", "n", "dataset_oid")} == {
        "task": "emotion",
        "metric": "acc",
        "n": 12,
        "dataset_oid": CORPUS,
    }
    assert evaluation.details["best"] == pytest.approx(0.9)
    assert evaluation.details["alpha"] == pytest.approx(4.0)
    assert evaluation.details["base"] == pytest.approx(0.3)
    assert evaluation.details["evaluations"] == 2
    (approval,) = [n for n in graph.nodes if n.kind == "approval"]
    assert (approval.details["decision"], approval.details["alias"]) == ("approve", "prod")
    assert approval.details["reason"] == "looks right"
    (alias,) = [n for n in graph.nodes if n.kind == "alias"]
    assert alias.key == "alias:honesty@staging:c"
    assert (alias.details["revision"], alias.details["reason"]) == (1, "try it")
    (gone,) = [n for n in graph.nodes if n.kind == "deprecation"]
    assert gone.inputs == [f"map:{chain.m1}"]
    assert nodes[f"map:{chain.m1}"].details["deprecated"] == 'old "corpus" \\ v1'


def test_approve_then_promote_by_another_shows_who_did_what(
    sqlite_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite the actor is CRX_ACTOR: one person approves, another promotes."""
    w = sqlite_world
    with w.registry() as reg:
        chain = build(reg, w.tmp, w.pairs)
        monkeypatch.setenv("CRX_ACTOR", "alice")
        reg.approve("honesty@1", "c")
        monkeypatch.setenv("CRX_ACTOR", "bob")
        reg.promote("honesty@1", "c", reason="ship it")
        graph = reg.lineage("honesty@prod", model="c")
        moved = reg.audit(object="honesty@prod", model="c", action="alias.", limit=1).items[0]
        # The lead's view of the same question agrees: the change in force, and who made it.
        (then,) = reg.alias_history("honesty", "c", "prod", at=moved.at)
        assert (then.action, then.actor, then.new_vector_id) == ("promote", "bob", chain.vc)
        assert reg.alias_history("honesty", "c", "prod", at=moved.at - timedelta(days=1)) == []
        everyone = reg.alias_history("honesty", "c", at=moved.at)
        assert [(h.name, h.action) for h in everyone] == [("staging", "set"), ("prod", "promote")]
        assert len(reg.alias_history("honesty", "c")) == 2
    by_kind = {n.kind + ":" + str(n.details.get("alias")): n for n in graph.nodes}
    assert by_kind["approval:prod"].details["actor"] == "alice"
    prod = by_kind["alias:honesty@prod"]
    assert (prod.details["actor"], prod.details["action"]) == ("bob", "promote")
    assert (moved.action, moved.actor, moved.reason) == ("alias.promote", "bob", "ship it")
    # "What was prod on that day, and who moved it": the first alias row up to the day.
    day = moved.at.date().isoformat()
    out = w.ok("audit", "--object", "honesty@prod", "--model", "c", "--until", day).stdout
    rows = out.splitlines()
    assert rows[0].split()[:7] == ["ID", "AT", "ACTOR", "ACTION", "OBJECT", "REF", "REASON"]
    first = rows[1].split()
    assert (first[0], first[3], first[4], first[5]) == (
        str(moved.id),
        "bob",
        "alias.promote",
        "alias",
    )
    assert rows[1].rstrip().endswith("ship it")
    assert any(" alice " in r and "approval.approve" in r for r in rows[2:])
    assert f"vector {chain.vc}" in w.ok("lineage", "honesty@prod", "--model", "c").stdout
    # Before the promotion existed there is nothing to find.
    before = (moved.at - timedelta(days=1)).date().isoformat()
    early = w.json("audit", "--object", "honesty@prod", "--model", "c", "--until", before)
    assert early == {"items": [], "next_after": None}


# -- the command line -----------------------------------------------------------------------


def _dot_tokens(text: str) -> list[str]:
    """DOT tokens: quoted strings (unescaped, marked with a leading quote), ids, punctuation."""
    tokens, i = [], 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif c == '"':
            j, out = i + 1, []
            while text[j] != '"':
                if text[j] == "\\":
                    nxt = text[j + 1]
                    out.append({"n": "\n"}.get(nxt, nxt))
                    j += 2
                else:
                    out.append(text[j])
                    j += 1
            tokens.append('"' + "".join(out))
            i = j + 1
        elif text.startswith("->", i):
            tokens.append("->")
            i += 2
        elif c in "{}[]=;,":
            tokens.append(c)
            i += 1
        else:
            match = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i:])
            assert match, f"unexpected DOT text at {text[i : i + 20]!r}"
            tokens.append(match.group())
            i += match.end()
    return tokens


def parse_dot(text: str) -> tuple[dict[str, dict[str, str]], list[tuple[str, str]]]:
    """(node id → attributes, edges) of a ``digraph``; fails on anything malformed."""
    tokens = _dot_tokens(text)
    assert tokens[:3] == ["digraph", "lineage", "{"]
    assert tokens[-1] == "}"
    body, nodes, edges = tokens[3:-1], {}, []
    statements: list[list[str]] = [[]]
    depth = 0
    for token in body:
        depth += {"[": 1, "]": -1}.get(token, 0)
        if token == ";" and depth == 0:
            statements.append([])
        else:
            statements[-1].append(token)
    assert statements[-1] == []
    for st in statements[:-1]:
        if st[0] in ("node", "rankdir"):
            continue
        if len(st) == 3 and st[1] == "->":
            assert st[0].startswith('"')
            assert st[2].startswith('"')
            edges.append((st[0][1:], st[2][1:]))
            continue
        assert st[0].startswith('"'), st
        assert (st[1], st[-1]) == ("[", "]"), st
        attrs = {}
        for item in " ".join(st[2:-1]).split(" , "):
            name, eq, value = item.split(" ", 2)
            assert eq == "="
            attrs[name] = value.removeprefix('"')
        assert st[0][1:] not in nodes
        nodes[st[0][1:]] = attrs
    return nodes, edges


def test_lineage_dot_is_a_well_formed_digraph(world: World) -> None:
    with world.registry() as reg:
        chain = build(reg, world.tmp, world.pairs)
        reg.deprecate(f"map:{chain.m1}", reason='old "corpus" \\ v1')
        graph = reg.lineage("honesty@1", model="c")
    text = world.ok("lineage", "honesty@1", "--model", "c", "--dot").stdout
    nodes, edges = parse_dot(text)
    assert list(nodes) == [n.key for n in graph.nodes]
    assert edges == [(i, n.key) for n in graph.nodes for i in n.inputs]
    assert all(a in nodes and b in nodes for a, b in edges)
    assert nodes[graph.root]["style"] == "bold"
    assert {k: v["label"] for k, v in nodes.items()} == {n.key: n.label for n in graph.nodes}
    (gone,) = [k for k in nodes if k.startswith("deprecation:")]
    assert nodes[gone]["label"].endswith('old "corpus" \\ v1')  # escaped, and read back
    assert nodes[f"map:{chain.m1}"]["color"] == "red"
    # JSON is the record; the text tree names every hop.
    assert world.json("lineage", "honesty@1", "--model", "c") == graph.model_dump(mode="json")
    tree = world.ok("lineage", "honesty@1", "--model", "c").stdout
    for needle in (
        f"vector {chain.vc}: honesty@1 on c (mapped)",
        f"<- vector {chain.vb}: honesty@1 on b (mapped)",
        f"<- vector {chain.va}: honesty@1 on a (extracted)",
        f"<- map {chain.m1}: a L1 -> b L2 (ridge, R² 0.8)",
        "<- contrast pairs",
        "* evaluation: emotion/acc: best 0.9 at α 4",
        "* alias: alias honesty@staging on c",
        "* deprecation: deprecated by",
        "(see above)",
    ):
        assert needle in tree, needle


def test_audit_cli_lists_json_and_keeps_list_audit(world: World) -> None:
    with world.registry() as reg:
        chain = build(reg, world.tmp, world.pairs)
        trail = ids(everything(reg))
    page = world.json("audit", "--object", f"vector:{chain.vc}", "--limit", "2")
    assert [e["object_ref"] for e in page["items"]][-1].startswith("emotion of vector")
    assert page["next_after"] == page["items"][-1]["id"]
    rest = world.json("audit", "--object", f"vector:{chain.vc}", "--after", str(page["next_after"]))
    assert [e["action"] for e in rest["items"]] == ["register"]
    listed = world.json("list", "audit", "--limit", "0")
    assert [e["id"] for e in listed["items"]] == sorted(trail)
    shown = world.ok("audit", "--action", "alias.set").stdout
    assert "tester" in shown
    assert "try it" in shown
    assert "honesty@staging on c" in shown


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("audit", "--since", "2026-13-01"), "--since takes an ISO 8601"),
        (("audit", "--until", "noon"), "--until takes an ISO 8601"),
        (("audit", "--object", "map:x"), "map:ID needs a numeric id"),
        (("audit", "--object", "nosuch@1"), "no concept 'nosuch@1'"),
        (("audit", "--object", "honesty@prod", "--model", "c"), "no alias honesty@prod on c"),
        (("audit", "--model", "nosuch"), "no model 'nosuch'"),
        (("lineage",), "lineage needs a reference"),
        (("lineage", "honesty@1"), "has 3 vectors"),
        (("lineage", "honesty@1", "--model", "c", "--dot", "--json"), "pick one"),
        (("lineage", "honesty@1", "--model", "c", "--vector", "1"), "is not a vector of"),
        (("lineage", "vector:99999"), "no vector '99999'"),
    ],
)
def test_bad_input_is_one_error_line(world: World, args: tuple[str, ...], message: str) -> None:
    with world.registry() as reg:
        build(reg, world.tmp, world.pairs)
        before = reg.audit_events(limit=None).items
    result = world.run(*args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert message in lines[0]
    assert result.stdout == ""
    with world.registry() as reg:
        assert reg.audit_events(limit=None).items == before


def test_every_event_of_a_model_bound_object_carries_its_model(
    registry: Registry, chain: Chain
) -> None:
    """Events of vectors, maps, models, evaluations and aliases carry their (target) model."""
    models = {m.id: m.name for m in registry.list_models().items}
    for event in everything(registry):
        if event.object_kind in ("vector", "map", "model", "evaluation", "alias"):
            assert event.model_id in models, event
        if event.object_kind == "concept_version":
            assert event.model_id is None
    assert json.loads(registry.audit(limit=1).model_dump_json())["items"][0]["model_id"]
    assert datetime.now(UTC) > registry.audit(limit=1).items[0].at


def test_upgrading_to_0003_gives_earlier_events_their_model(
    db_url: str, tmp_path: Path, pairs_file: Path
) -> None:
    """Events from before the model column (revision 0002) get it from the rows on upgrade."""
    from alembic import command

    from crx.registry.db import migrate
    from crx.registry.db.connection import make_engine

    with Registry(db_url, str(tmp_path / "store")) as reg:
        chain = build(reg, tmp_path, pairs_file)
        written = {e.id: e.model_id for e in reg.audit_events(limit=None).items}
        kinds = {e.id: e.object_kind for e in reg.audit_events(limit=None).items}
    engine = make_engine(db_url)
    try:
        config = migrate._alembic_config(engine)
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0002")  # drops the column (and the alias tables)
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    with Registry(db_url, str(tmp_path / "store")) as reg:
        upgraded = {e.id: e.model_id for e in reg.audit_events(limit=None).items}
        by_model = ids(reg.audit(object=f"vector:{chain.vc}", model="c", limit=0).items)
    backfilled = ("vector", "map", "model", "evaluation")
    assert upgraded == {i: (m if kinds[i] in backfilled else None) for i, m in written.items()}
    assert sum(1 for i in upgraded if upgraded[i] is not None) >= 10
    assert len(by_model) == 3
