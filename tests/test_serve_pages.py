"""``crx serve``'s HTML catalogue, against a real server process on loopback.

Each backend (SQLite, PostgreSQL) gets one registry (`tests.web_world.catalogue`) and one
``python -m crx serve`` process; each page must show what the facade returns for it, name the
registry with its credentials redacted and link its objects; the images are real PNG / SVG
drawn from the data; unknown objects are HTML 404 pages. The page forms (approve, reject,
promote) are checked on SQLite, with tokens made by the CLI, and on PostgreSQL, where writes
over HTTP are refused.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pytest

from crx.cli.cmd_plan import route_text
from crx.registry import Registry
from crx.schemas.governance import EvidenceRule, PolicySpec
from tests.databases import postgres_url, sqlite_url
from tests.servers import SUPERUSER_PASSWORD, PostgresServer
from tests.test_serve_api import Served, served_backend, server_env, start_server
from tests.test_serve_writes import crx
from tests.web_world import ALPHAS, catalogue

HTML = "text/html; charset=utf-8"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> Iterator[Served]:
    yield from served_backend(request, tmp_path_factory, sqlite_template, "pages", catalogue)


def page(site: Served, path: str, status: int = 200, **params: Any) -> str:
    """The page's HTML, after checking its status, type and the registry it names."""
    response = site.client.get(path, params=params or None)
    assert response.status_code == status, (path, response.text[:2000])
    assert response.headers["content-type"] == HTML
    text = response.text
    assert "Traceback" not in text
    assert SUPERUSER_PASSWORD not in text
    shown = re.search(r'id="registry-database">([^<]*)<', text)
    assert shown is not None, path
    assert unescape(shown.group(1)) == site.reg.db.display_url
    assert unescape(re.search(r'id="registry-store">([^<]*)<', text).group(1)) == site.store  # type: ignore[union-attr]
    return text


def element(text: str, element_id: str) -> str:
    """The HTML of the element with ``element_id`` up to its closing tag (tables, lists)."""
    match = re.search(rf'<(\w+)[^>]* id="{re.escape(element_id)}"', text)
    assert match is not None, element_id
    tag = match.group(1)
    end = text.index(f"</{tag}>", match.end())
    return text[match.start() : end]


def rows(table: str) -> list[list[str]]:
    """The text of each cell of each data row (header rows left out)."""
    found = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, flags=re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)
        if cells:
            found.append([unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in cells])
    return found


def links(text: str) -> set[str]:
    return {unescape(h) for h in re.findall(r'href="([^"]+)"', text)}


# -- every page shows the facade's data -----------------------------------------------------


def test_models_page(site: Served) -> None:
    reg = site.reg
    for path in ("/", "/models"):
        text = page(site, path)
        listed = re.findall(r'<tr id="model-([^"]+)"', text)
        assert listed == [m.name for m in reg.list_models().items]
    by_name = {m.name: m for m in reg.list_models().items}
    table = rows(element(text, "models"))
    for cells in table:
        name = cells[0].removesuffix(" json").strip()
        m = by_name[name]
        assert cells[1:6] == [
            m.architecture or "-",
            m.model_type or "-",
            str(m.n_layers),
            str(m.d_model),
            str(m.vocab_size or "-"),
        ]
    tiny, tiny_b, tiny_c = table
    assert tiny[8] == "calm (v1), joy (v1, v2)"
    assert tiny[9] == "joy@staging → " + str(site.facts["v2"])
    assert tiny_b[8] == "joy (v2)"
    assert (tiny_c[8], tiny_c[9], tiny_c[10]) == ("-", "-", "-")
    assert {"/models/tiny-b", "/concepts/joy/on/tiny-b", "/api/models/tiny"} <= links(text)
    # the nav: every page, the docs and the spec
    assert {"/models", "/concepts", "/maps", "/audit", "/docs", "/openapi.json"} <= links(text)


def test_models_page_reads_its_summary_in_bulk_and_cuts_long_lists(
    site: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The list reads every model's concepts and aliases in two queries (`concepts_on`,
    `list_aliases(models=...)`), the same as one model at a time; past ``SHOWN_PER_MODEL``
    it shows the first ones and links the model's page for the rest."""
    from fastapi.testclient import TestClient

    from crx.cli.web import pages
    from crx.cli.web.app import create_app

    reg = site.reg
    names = [m.name for m in reg.list_models().items]
    summary = reg.concepts_on([*names, "no-such-model"])
    for name in names:
        one_by_one: dict[str, set[int]] = {}
        for v in reg.list_vectors(model=name, limit=None).items:
            one_by_one.setdefault(v.concept, set()).add(v.concept_version)
        assert summary[name] == {c: sorted(vs) for c, vs in sorted(one_by_one.items())}
    assert summary["no-such-model"] == {}
    assert reg.list_aliases(models=["tiny", "tiny-b"]) == [
        a for a in reg.list_aliases() if a.model in ("tiny", "tiny-b")
    ]
    assert reg.list_aliases(models=["tiny"]) == reg.list_aliases(model="tiny")
    assert reg.list_aliases(models=[]) == []

    monkeypatch.setattr(pages, "SHOWN_PER_MODEL", 1)
    with TestClient(create_app(reg)) as client:
        text = client.get("/models").text
    tiny = rows(element(text, "models"))[0]
    assert tiny[8] == "calm (v1) and 1 more"
    assert '<a class="more" href="/models/tiny">and 1 more</a>' in text
    # the model's own page still lists them all
    assert "joy@staging" in page(site, "/models/tiny")


def test_model_page(site: Served) -> None:
    reg, f = site.reg, site.facts
    text = page(site, "/models/tiny")
    facts = dict(re.findall(r"<tr><th>(\w+)</th><td>([^<]*)</td>", element(text, "facts")))
    model = reg.get_model("tiny")
    assert facts["path"] == model.path
    assert (facts["n_layers"], facts["d_model"]) == (str(model.n_layers), str(model.d_model))
    vector_ids = [int(r[0]) for r in rows(element(text, "vectors"))]
    assert vector_ids == [v.id for v in reg.list_vectors(model="tiny").items]
    assert f"/lineage?vector={f['v2']}" in links(text)
    assert {"/maps?source=tiny&target=tiny-b", "/maps?source=tiny&target=tiny-c"} <= links(text)


def test_concepts_and_concept_pages(site: Served) -> None:
    reg = site.reg
    text = page(site, "/concepts")
    names = [r[0].removesuffix(" json").strip() for r in rows(element(text, "concepts"))]
    assert names == [c.name for c in reg.list_concepts().items]
    text = page(site, "/concepts/joy")
    for version in reg.concept_versions("joy"):
        section = element(text, f"version-{version.version}")
        assert f"<h3>{version.ref} " in section
        assert unescape(version.template) in unescape(section)
        pairs = rows(element(section, "pairs") if 'id="pairs"' in section else section)
        preview = [p for p in pairs if p[0].isdigit()]
        expected = reg.load_pairs(version)[:5]
        assert [(p[1], p[2]) for p in preview] == [(e.positive, e.negative) for e in expected]
        assert f"{version.n_pairs} (" in section
    by_model = rows(element(text, "by-model"))
    assert [r[0] for r in by_model] == ["joy on tiny", "joy on tiny-b"]
    on_b = {v.id for v in reg.list_vectors(concept="joy", model="tiny-b").items}
    assert {int(i) for i in re.findall(r"(\d+) \(v2", by_model[1][1])} == on_b


def test_concept_on_target_page(site: Served) -> None:
    reg, f = site.reg, site.facts
    text = page(site, "/concepts/joy/on/tiny-b")
    plan = reg.plan("tiny-b", ["joy"])
    [item] = plan.concepts
    assert item.chosen is not None
    assert item.chosen.vector_id == f["mapped"]  # the better evaluated route wins
    routes = rows(element(text, "routes"))
    assert [r[1].split(" · ")[0] for r in routes] == [route_text(r) for r in item.candidates]
    assert routes[0][0] == "chosen"
    assert unescape(element(text, "plan-why")).endswith(item.why)
    for vector in reg.list_vectors(concept="joy", model="tiny-b").items:
        section = element(text, f"vector-{vector.id}")
        assert f'src="/plots/alpha.png?vector={vector.id}"' in section
        table = rows(element(section, f"evaluations-{vector.id}"))
        expected = reg.list_evaluations(model="tiny-b", vector_id=vector.id).items
        assert [int(r[0]) for r in table] == [e.id for e in expected]
        assert [r[3] for r in table] == [f"{e.alpha:.4g} × norm" for e in expected]
        assert {float(r[3].split()[0]) for r in table} == set(ALPHAS)
        report = reg.promote("joy@2", "tiny-b", vector_id=vector.id, check_only=True)
        shown = re.findall(r'<span class="(ok|fail)">\w+</span> ([^<]*)</li>', section)
        assert [(s == "ok", unescape(d).strip()) for s, d in shown] == [
            (c.passed, c.detail) for c in report.checks
        ]
        assert f"/lineage?vector={vector.id}" in links(section)
        assert f"/api/vectors/{vector.id}" in links(section)
    # no token exists here: no forms, and the page says why
    assert '<form class="action"' not in text
    assert "crx token create" in text
    policies = rows(element(text, "policies"))
    assert policies[0][:2] == ["prod", "joy-gate"]
    base = rows(element(text, "base"))
    bare = [e for e in reg.list_evaluations(model="tiny-b").items if e.vector_id is None]
    assert [int(r[0]) for r in base] == [e.id for e in bare]
    # aliases, history and approvals on tiny, as the facade lists them
    text = page(site, "/concepts/joy/on/tiny")
    history = rows(element(text, "alias-history"))
    assert [(r[2], r[4], r[5]) for r in history] == [
        (str(h.revision), str(h.old_vector_id or "-"), str(h.new_vector_id))
        for h in reg.alias_history("joy", "tiny")
    ]
    approvals = rows(element(text, "approvals"))
    assert [int(r[0]) for r in approvals] == [
        a.id for a in reg.list_approvals(model="tiny", concept="joy")
    ]
    assert [r[0] for r in rows(element(text, "aliases"))] == ["joy@staging"]


def test_plots_are_images_of_the_data(site: Served) -> None:
    f = site.facts
    get = site.client.get
    images = {}
    for vector in (f["native"], f["mapped"]):
        response = get("/plots/alpha.png", params={"vector": vector})
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        assert response.content.startswith(PNG_MAGIC)
        images[vector] = response.content
        svg = get("/plots/alpha.svg", params={"vector": vector})
        assert svg.headers["content-type"] == "image/svg+xml"
        root = ET.fromstring(svg.content)
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        # matplotlib writes text as glyph paths; the title and legend are in the comments
        assert f"vector {vector}: joy@2 on tiny-b" in svg.text
        assert "emotion/token_accuracy" in svg.text
        assert "base (no vector)" in svg.text
    assert images[f["native"]] != images[f["mapped"]]
    heat = {}
    for target in ("tiny-b", "tiny-c"):
        response = get("/plots/maps.png", params={"source": "tiny", "target": target})
        assert response.status_code == 200
        assert response.content.startswith(PNG_MAGIC)
        heat[target] = response.content
    assert heat["tiny-b"] != heat["tiny-c"]
    svg = get("/plots/maps.svg", params={"source": "tiny", "target": "tiny-c"}).text
    # The figure of `crx show maps --plot`: the newest fit's recipe in the title.
    newest = max(site.reg.list_maps(source="tiny", target="tiny-c").items, key=lambda m: m.id)
    assert f"tiny → tiny-c: {newest.solver} maps" in svg


def test_maps_page(site: Served) -> None:
    reg = site.reg
    text = page(site, "/maps")
    assert {"/maps?source=tiny&target=tiny-b", "/maps?source=tiny&target=tiny-c"} <= links(text)
    text = page(site, "/maps", source="tiny", target="tiny-c")
    maps = reg.list_maps(source="tiny", target="tiny-c").items
    fits = reg.map_fits(maps)
    assert sum(len(fit) for fit in fits) == len(maps)
    # One heat-map per fit, newest first, each drawn from one of its maps.
    sources = re.findall(
        r'src="/plots/maps.png\?source=tiny&amp;target=tiny-c&amp;map=(\d+)"', text
    )
    assert [int(x) for x in sources] == [fit[0].id for fit in fits]
    for fit in fits:
        svg = site.client.get(
            "/plots/maps.svg", params={"source": "tiny", "target": "tiny-c", "map": fit[0].id}
        ).text
        assert f"tiny → tiny-c: {fit[0].solver} maps" in svg
    assert (
        site.client.get(
            "/plots/maps.png", params={"source": "tiny", "target": "tiny-c", "map": 10**6}
        ).status_code
        == 400
    )
    table = rows(element(text, "maps"))
    assert [int(r[0]) for r in table] == [m.id for m in reversed(maps)]
    assert [r[1] for r in table] == [f"{m.source_layer} → {m.target_layer}" for m in reversed(maps)]
    page(site, "/maps", 404, source="tiny", target="nope")


def test_lineage_page(site: Served) -> None:
    reg, f = site.reg, site.facts
    text = page(site, "/lineage", vector=f["mapped"])
    lineage = reg.lineage(None, vector_id=f["mapped"])
    listed = re.findall(r'<li id="node-([^"]+)">', text)
    assert listed == [n.key for n in lineage.nodes]
    graph = element(text, "lineage-graph")
    assert sorted(re.findall(r'<g class="node" data-key="([^"]+)">', graph)) == sorted(listed)
    edges = sum(len([i for i in n.inputs if i in listed]) for n in lineage.nodes)
    assert graph.count("<line ") == edges > 0
    for node in lineage.nodes:
        assert unescape(node.label) in unescape(text)
    assert {f"/lineage?vector={f['v2']}", "/models/tiny", "/concepts/joy"} <= links(text)
    assert f"/maps?source=tiny&target=tiny-b#map-{f['map']}" in links(text)
    assert page(site, "/lineage", ref="joy@staging", model="tiny").count('<li id="node-') > 1
    page(site, "/lineage", 400)
    page(site, "/lineage", 404, vector=999999)


def test_audit_page_filters_and_pages(site: Served) -> None:
    reg = site.reg
    text = page(site, "/audit")
    assert [int(r[0]) for r in rows(element(text, "audit"))] == [
        e.id for e in reg.audit(limit=50).items
    ]
    actor = reg.audit().items[0].actor  # on PostgreSQL the database role
    text = page(site, "/audit", action="alias.", actor=actor)
    shown = [int(r[0]) for r in rows(element(text, "audit"))]
    assert shown == [e.id for e in reg.audit(action="alias.", actor=actor).items]
    assert shown
    # keyset paging: the "older" link carries the filters and after=
    seen: list[int] = []
    path = "/audit?since=2000-01-01&limit=4"
    while path:
        text = page(site, path)
        seen += [int(r[0]) for r in rows(element(text, "audit"))]
        older = re.search(r'id="older" href="([^"]+)"', text)
        path = unescape(older.group(1)) if older else ""
        if path:
            assert "since=2000-01-01" in path
            assert "limit=4" in path
            assert "after=" in path
    assert seen == [e.id for e in reg.audit(limit=None).items]
    text = page(site, "/audit", 400, since="someday")
    assert "since" in text


def test_search_by_name(site: Served) -> None:
    text = page(site, "/search", q="TIN")
    found = re.findall(r'<li><a href="/models/([^"]+)">', element(text, "found-models"))
    assert found == ["tiny", "tiny-b", "tiny-c"]
    assert "no concept name holds" in element(text, "found-concepts")
    text = page(site, "/search", q="o")
    assert re.findall(r'href="/concepts/([^"]+)"', element(text, "found-concepts")) == ["joy"]
    assert site.reg.list_concepts(name_contains="A").items[0].name == "calm"
    text = page(site, "/search", q="%")  # a literal percent sign matches nothing
    assert "no model name holds" in text


def test_unknown_objects_and_routes_are_html_404_pages(site: Served) -> None:
    for path, words in (
        ("/models/nope", "no model 'nope'"),
        ("/concepts/nope", "nope"),
        ("/concepts/joy/on/nope", "no model 'nope'"),
        ("/concepts/nope/on/tiny", "nope"),
        ("/no/such/page", "no route /no/such/page"),
        ("/plots/alpha.png?vector=999999", "999999"),
    ):
        text = page(site, path, 404)
        assert words in unescape(element(text, "error-message")), path
    page(site, "/plots/alpha.gif", 400, vector=site.facts["v2"])
    # under /api it stays the JSON error
    api = site.client.get("/api/models/nope")
    assert (api.status_code, api.headers["content-type"]) == (404, "application/json")
    # other methods on pages: an HTML 405 page
    response = site.client.post("/models")
    assert (response.status_code, response.headers["content-type"]) == (405, HTML)


# -- the forms ------------------------------------------------------------------------------


def _form_client(base: str) -> tuple[httpx.Client, str]:
    """A client holding the page's CSRF cookie, and the value the forms carry."""
    client = httpx.Client(base_url=base, timeout=30, follow_redirects=True)
    text = client.get("/concepts/joy/on/tiny-b").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', text)
    assert csrf is not None
    assert client.cookies.get("crx_csrf") == csrf.group(1)
    return client, csrf.group(1)


def test_page_forms_approve_and_promote_with_a_token(tmp_path: Path, sqlite_template: Path) -> None:
    db = sqlite_url(tmp_path, sqlite_template)
    store = str(tmp_path / "store")
    reg = Registry(db, store)
    reg.init()
    facts = catalogue(reg, tmp_path)
    # prod on tiny-b: the recorded token accuracy on any dataset, and one approval
    rule = EvidenceRule(task="emotion", metric="token_accuracy", min=0.5, dataset="any")
    reg.put_policy(PolicySpec(name="joy-b-gate", concept="joy", model="tiny-b", evidence=[rule]))
    approver = crx(db, store, "token", "create", "--user", "approver1").stdout.strip()
    promoter = crx(db, store, "token", "create", "--user", "promoter1").stdout.strip()
    process, api_client, log = start_server(db, store, tmp_path, server_env(tmp_path / "home"))
    base = str(api_client.base_url)
    client, csrf = _form_client(base)
    origin = {"Origin": base.rstrip("/")}
    form = {
        "csrf": csrf,
        "ref": "joy@2",
        "model": "tiny-b",
        "vector_id": str(facts["mapped"]),
        "alias": "prod",
        "reason": "looks right",
        "token": approver,
    }
    try:
        text = client.get("/concepts/joy/on/tiny-b").text
        assert approver not in text
        assert text.count('<form class="action"') == 3 * 2  # three forms per vector
        before = reg.list_approvals(model="tiny-b")

        def refused(data: dict[str, str], status: int, headers: dict[str, str] = origin) -> str:
            response = client.post("/actions/approve", data=data, headers=headers)
            assert (response.status_code, response.headers["content-type"]) == (status, HTML)
            assert approver not in response.text
            return unescape(element(response.text, "error-message"))

        assert "API token" in refused({**form, "token": ""}, 401)
        assert "unknown or revoked" in refused({**form, "token": "crx_wrong"}, 401)
        assert "CSRF" in refused({**form, "csrf": "x" * 43}, 403)
        assert "CSRF" in refused({k: v for k, v in form.items() if k != "csrf"}, 403)
        assert "this server" in refused(form, 403, {"Origin": "http://evil.example"})
        assert "this server" in refused(form, 403, {})
        # a cookie the browser does not hold (another site's form) fails the double submit
        stranger = httpx.Client(base_url=base, timeout=30)
        response = stranger.post("/actions/approve", data=form, headers=origin)
        assert response.status_code == 403
        stranger.close()
        assert reg.list_approvals(model="tiny-b") == before

        # the form with a valid token: the API's approval, as approver1; 303 back to the page
        done = client.post("/actions/approve", data=form, headers=origin, follow_redirects=False)
        assert done.status_code == 303, done.text
        location = done.headers["location"]
        assert location == (
            f"/concepts/joy/on/tiny-b?done=approve&vector={facts['mapped']}"
            f"#vector-{facts['mapped']}"
        )
        [approval] = [a for a in reg.list_approvals(model="tiny-b") if a not in before]
        assert (approval.actor, approval.vector_id, approval.reason) == (
            "approver1",
            facts["mapped"],
            "looks right",
        )
        shown = client.get(location).text
        assert "Done: approved vector" in element(shown, "done")
        assert "approver1" in element(shown, "approvals")
        # the approver may not promote on their own approval: the policy refuses, a 403 page
        promote = {**form, "to": "prod", "reason": "ship"}
        del promote["alias"]
        response = client.post("/actions/promote", data=promote, headers=origin)
        assert response.status_code == 403
        assert "approver1's own approval does not count" in unescape(response.text)
        # another token's user may, as the CLI's policy says (evidence + one approval)
        response = client.post(
            "/actions/promote", data={**promote, "token": promoter}, headers=origin
        )
        assert response.status_code == 200, response.text  # followed the 303
        prod = reg.get_alias("joy@prod", "tiny-b")
        assert (prod.vector_id, prod.actor) == (facts["mapped"], "promoter1")
        aliases = rows(element(response.text, "aliases"))
        assert ["joy@prod", str(facts["mapped"])] in [r[:2] for r in aliases]
        assert "Done: promoted" in response.text
        # a rejection needs a reason (400 page), then is recorded
        reject = {**form, "reason": ""}
        response = client.post("/actions/reject", data=reject, headers=origin)
        assert response.status_code == 400
        response = client.post(
            "/actions/reject", data={**form, "reason": "too weak"}, headers=origin
        )
        assert response.status_code == 200
        assert reg.list_approvals(model="tiny-b")[-1].decision == "reject"
    finally:
        client.close()
        api_client.close()
        process.terminate()
        process.wait(timeout=15)
        reg.close()
    text = log.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in text
    assert approver not in text
    assert promoter not in text


def test_page_forms_on_postgres_are_refused(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    db = postgres_url(postgres_server)
    store = str(tmp_path / "store")
    reg = Registry(db, store)
    reg.init()
    facts = catalogue(reg, tmp_path)
    secret = reg.create_token("approver1").secret
    process, api_client, log = start_server(db, store, tmp_path, server_env(tmp_path / "home"))
    base = str(api_client.base_url)
    client, csrf = _form_client(base)
    try:
        form = {
            "csrf": csrf,
            "ref": "joy@2",
            "model": "tiny-b",
            "vector_id": str(facts["mapped"]),
            "alias": "prod",
            "token": secret,
        }
        response = client.post("/actions/approve", data=form, headers={"Origin": base.rstrip("/")})
        assert (response.status_code, response.headers["content-type"]) == (403, HTML)
        assert "PostgreSQL" in response.text
        assert secret not in response.text
        assert not reg.list_approvals(model="tiny-b")
    finally:
        client.close()
        api_client.close()
        process.terminate()
        process.wait(timeout=15)
        reg.close()
    assert secret not in log.read_text(encoding="utf-8", errors="replace")
