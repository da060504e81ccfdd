"""The catalogue end to end in headless Chromium (Debian's ``chromium``, driven by Playwright
with the system browser as its executable; Playwright's own browsers are never downloaded).

A registry shaped like the demo's (`tests.web_world.catalogue`: joy natively on ``tiny-b`` and
transplanted into it, evaluated at several α) is served by a real ``python -m crx serve``; the
browser opens the concept on its target, sees each plot image load and the evaluation tables,
keeps a screenshot (in the test's folder, and under ``$CRX_TEST_ARTIFACTS`` when set), follows
a lineage link, fails to approve without a valid token (the error page) and approves with one
(the approval appears). Outside CI a missing chromium is a skip with the reason; in CI
(``CI`` set) a failure, as for the database servers.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crx.registry import Registry
from tests.databases import sqlite_url
from tests.test_serve_api import server_env, start_server
from tests.test_serve_writes import crx
from tests.web_world import catalogue

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI must run the browser tests; .ci/run installs chromium)")
    pytest.skip(reason)


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        _unavailable(f"no {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def _keep(shot: Path) -> None:
    folder = os.environ.get("CRX_TEST_ARTIFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(folder) / shot.name)


def test_concept_page_in_chromium(browser: Any, tmp_path: Path, sqlite_template: Path) -> None:
    db = sqlite_url(tmp_path, sqlite_template)
    store = str(tmp_path / "store")
    reg = Registry(db, store)
    reg.init()
    facts = catalogue(reg, tmp_path)
    secret = crx(db, store, "token", "create", "--user", "approver1").stdout.strip()
    process, client, log = start_server(db, store, tmp_path, server_env(tmp_path / "home"))
    base = str(client.base_url).rstrip("/")
    mapped, native = facts["mapped"], facts["native"]
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/concepts/joy/on/tiny-b")
        page.wait_for_load_state("networkidle")
        assert page.title() == "joy on tiny-b · crx"
        # every α plot loaded as an image
        plots = page.locator("img.plot")
        assert plots.count() == 2
        for i in range(plots.count()):
            loaded = plots.nth(i).evaluate("img => img.complete && img.naturalWidth")
            assert loaded > 0, plots.nth(i).get_attribute("src")
        # the evaluation tables: one row per recorded evaluation
        for vector in (mapped, native):
            table = page.locator(f"#evaluations-{vector} tr")
            recorded = reg.list_evaluations(model="tiny-b", vector_id=vector).items
            assert table.count() - 1 == len(recorded) == 8
        assert page.locator("#routes tr.chosen").inner_text().find(f"vector {mapped}") >= 0
        shot = tmp_path / "concept_on_target.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes().startswith(b"\x89PNG")
        _keep(shot)

        # a lineage link: the graph and the list of the transplanted vector
        page.click(f"#vector-{mapped} a.lineage")
        page.wait_for_load_state()
        assert page.url == f"{base}/lineage?vector={mapped}"
        assert page.locator("#lineage-graph g.node").count() == len(
            reg.lineage(None, vector_id=mapped).nodes
        )
        assert page.locator(f'[id="node-vector:{facts["v2"]}"]').count() == 1
        page.go_back()

        form = page.locator(f'#vector-{mapped} form[action="/actions/approve"]')
        # a wrong token: the 401 error page, nothing recorded
        form.locator('input[name="reason"]').fill("checked the curve")
        form.locator('input[name="token"]').fill("crx_not-a-token")
        form.locator('button[type="submit"]').click()
        page.wait_for_load_state()
        assert "401" in page.locator("#error").inner_text()
        assert "unknown or revoked" in page.locator("#error-message").inner_text()
        # no token at all (the field's `required` taken away): refused too
        page.go_back()
        page.reload()
        form = page.locator(f'#vector-{mapped} form[action="/actions/approve"]')
        form.locator('input[name="token"]').evaluate("input => input.removeAttribute('required')")
        form.locator('button[type="submit"]').click()
        page.wait_for_load_state()
        assert "needs your API token" in page.locator("#error-message").inner_text()
        assert not reg.list_approvals(model="tiny-b")

        # with the token: approved as approver1, back on the page, which shows it
        page.goto(f"{base}/concepts/joy/on/tiny-b")
        form = page.locator(f'#vector-{mapped} form[action="/actions/approve"]')
        form.locator('input[name="reason"]').fill("checked the curve")
        form.locator('input[name="token"]').fill(secret)
        form.locator('button[type="submit"]').click()
        page.wait_for_load_state()
        assert page.url.startswith(f"{base}/concepts/joy/on/tiny-b?done=approve")
        assert f"approved vector {mapped}" in page.locator("#done").inner_text()
        row = page.locator("#approvals tr", has_text="approver1")
        assert row.count() == 1
        assert "checked the curve" in row.inner_text()
        assert secret not in page.content()
        [approval] = reg.list_approvals(model="tiny-b")
        assert (approval.actor, approval.vector_id) == ("approver1", mapped)
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=15)
        reg.close()
    text = log.read_text(encoding="utf-8", errors="replace")
    assert secret not in text
    assert "Traceback" not in text
