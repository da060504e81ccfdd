"""``crx serve``'s writes with API tokens, against a real server process on loopback.

Tokens are made with the CLI (``crx token create``), as the owner would; every write goes over
HTTP to a ``python -m crx serve`` process and is then read back through the facade: who the
approval and the audit log name, what the policy refused, what moved. PostgreSQL shows the
read-only and 401 paths and the refusal of writes by a server that is not connected as a
gateway (tests/test_serve_gateway.py serves them through one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from crx.cli.main import cli
from crx.registry import Registry
from crx.schemas.governance import EvidenceRule, PolicySpec
from tests.databases import postgres_url, sqlite_url
from tests.servers import PostgresServer
from tests.test_serve_api import _error, populate, server_env, start_server


def crx(db: str, store: str, *args: str) -> Any:
    result = CliRunner().invoke(
        cli, ["--db", db, "--store", store, *args], env={"CRX_ACTOR": "owner"}
    )
    assert result.exit_code == 0, result.output
    return result


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _world(folder: Path, db: str) -> tuple[Registry, str, dict[str, Any]]:
    store = str(folder / "store")
    reg = Registry(db, store)
    reg.init()
    facts = populate(reg, folder)
    # A second governed alias only the token users approve (populate's tester approved prod).
    reg.put_policy(
        PolicySpec(
            name="gold-gate",
            concept="joy",
            alias="gold",
            evidence=[EvidenceRule(task="emotion", metric="accuracy", min=0.7, dataset="any")],
        )
    )
    return reg, store, facts


def test_token_writes_over_http_on_sqlite(tmp_path: Path, sqlite_template: Path) -> None:
    db = sqlite_url(tmp_path, sqlite_template)
    reg, store, facts = _world(tmp_path, db)
    process, client, log = start_server(db, store, tmp_path, server_env(tmp_path / "home"))
    secrets: list[str] = []
    try:
        approve = {"ref": "joy@2", "model": "tiny", "alias": "gold", "reason": "checked"}
        # no token in the registry: read-only, and it says how to make one
        message = _error(client.post("/api/approvals", json=approve), 403, "ReadOnly")
        assert "crx token create" in message

        made = crx(db, store, "token", "create", "--user", "approver1")
        first = made.stdout.strip()
        assert first.startswith("crx_")
        assert len(first) > 40
        assert first not in made.stderr
        second = json.loads(
            crx(db, store, "token", "create", "--user", "approver2", "--json").stdout
        )
        other = second["secret"]
        secrets += [first, other]
        assert second["token"]["user"] == "approver2"
        listed = crx(db, store, "token", "list")
        listed_json = crx(db, store, "token", "list", "--json")
        for shown in (listed.output, listed_json.output):
            assert first not in shown
            assert other not in shown
        assert [t["user"] for t in json.loads(listed_json.stdout)] == ["approver1", "approver2"]
        assert reg.tokens_configured()

        # no token, a bad one: 401 with the challenge; nothing recorded
        before = reg.list_approvals(model="tiny")
        for headers in ({}, bearer("crx_not-a-real-token"), {"Authorization": f"Basic {first}"}):
            response = client.post("/api/approvals", json=approve, headers=headers)
            _error(response, 401, "Unauthenticated")
            assert response.headers["www-authenticate"] == "Bearer"
            assert first not in response.text
        # bad JSON, a body that is not the model: 400
        bad = client.post(
            "/api/approvals",
            content=b"{not json",
            headers={**bearer(first), "Content-Type": "application/json"},
        )
        _error(bad, 400, "InvalidInput")
        _error(
            client.post("/api/approvals", json={"ref": "joy@2"}, headers=bearer(first)),
            400,
            "InvalidInput",
        )
        assert reg.list_approvals(model="tiny") == before

        # approve as approver1: 201, the approval and the audit log name approver1
        response = client.post("/api/approvals", json=approve, headers=bearer(first))
        assert response.status_code == 201, response.text
        record = response.json()
        assert (record["actor"], record["label"], record["alias"]) == (
            "approver1",
            "approver1",
            "gold",
        )
        assert record["vector_id"] == facts["v2"]
        events = reg.audit(action="approval.").items
        assert (events[0].action, events[0].actor) == ("approval.approve", "approver1")
        assert [t.last_used_at is not None for t in reg.list_tokens()] == [True, False]

        # the approver's own token may not promote: 403 with the failing checks, nothing moved
        promote = {"ref": "joy@2", "model": "tiny", "to": "gold", "reason": "ship"}
        refused = client.post("/api/promotions", json=promote, headers=bearer(first))
        message = _error(refused, 403, "PromotionRefused")
        assert "approver1's own approval does not count" in message
        assert not [a for a in reg.list_aliases(model="tiny") if a.name == "gold"]
        # another token user may
        done = client.post("/api/promotions", json=promote, headers=bearer(other))
        assert done.status_code == 200, done.text
        assert done.json()["promoted"] is True
        gold = reg.get_alias("joy@gold", "tiny")
        assert (gold.vector_id, gold.actor) == (facts["v2"], "approver2")
        promoted = [
            e for e in reg.audit(object="joy@gold", model="tiny").items if e.actor == "approver2"
        ]
        assert promoted

        # a reject as approver2, recorded as approver2
        reject = {"ref": "joy@1", "model": "tiny", "alias": "gold", "reason": "too weak"}
        rejected = client.post("/api/rejections", json=reject, headers=bearer(other))
        assert rejected.status_code == 201, rejected.text
        assert (rejected.json()["decision"], rejected.json()["actor"]) == ("reject", "approver2")

        # alias moves: compare-and-swap conflict is a 409; the right expect moves it
        staging = reg.get_alias("joy@staging", "tiny")
        assert staging.vector_id == facts["v2"]
        move = {"ref": "joy@1", "model": "tiny", "alias": "staging", "expect": facts["v1"]}
        _error(client.post("/api/aliases", json=move, headers=bearer(first)), 409, "AliasConflict")
        assert reg.get_alias("joy@staging", "tiny").vector_id == facts["v2"]
        moved = client.post(
            "/api/aliases", json={**move, "expect": facts["v2"]}, headers=bearer(first)
        )
        assert moved.status_code == 200, moved.text
        after = reg.get_alias("joy@staging", "tiny")
        assert (after.vector_id, after.actor) == (facts["v1"], "approver1")
        # a protected alias does not move this way
        prod = {"ref": "joy@2", "model": "tiny", "alias": "gold"}
        _error(client.post("/api/aliases", json=prod, headers=bearer(first)), 403, "ProtectedAlias")

        # revoked: 401 from the next request on; the other token still works
        token_id = str(json.loads(listed_json.stdout)[0]["id"])
        crx(db, store, "token", "revoke", token_id)
        gone = client.post("/api/approvals", json=approve, headers=bearer(first))
        _error(gone, 401, "Unauthenticated")
        still = client.post("/api/approvals", json=approve, headers=bearer(other))
        assert still.status_code == 201, still.text
        # every token revoked: read-only again
        crx(db, store, "token", "revoke", str(json.loads(listed_json.stdout)[1]["id"]))
        _error(client.post("/api/approvals", json=approve, headers=bearer(other)), 403, "ReadOnly")
        # token changes are audited, by the owner
        made_events = reg.audit(action="token.").items
        assert sorted(e.action for e in made_events) == ["token.create"] * 2 + ["token.revoke"] * 2
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=15)
        reg.close()
    text = log.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in text
    assert secrets
    assert not any(s in text for s in secrets)


def test_postgres_is_read_only_then_refuses_writes(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    db = postgres_url(postgres_server)
    reg, store, _facts = _world(tmp_path, db)
    process, client, log = start_server(db, store, tmp_path, server_env(tmp_path / "home"))
    try:
        approve = {"ref": "joy@2", "model": "tiny", "alias": "gold"}
        _error(client.post("/api/approvals", json=approve), 403, "ReadOnly")
        secret = reg.create_token("approver1").secret  # the superuser is an owner
        response = client.post("/api/approvals", json=approve, headers=bearer("crx_wrong"))
        _error(response, 401, "Unauthenticated")
        assert response.headers["www-authenticate"] == "Bearer"
        _error(client.post("/api/approvals", json=approve), 401, "Unauthenticated")
        refused = client.post("/api/approvals", json=approve, headers=bearer(secret))
        message = _error(refused, 403, "WritesNotServed")
        # connected as the superuser, not a gateway: it says how to set one up
        assert "PostgreSQL" in message
        assert "crx db gateway" in message
        assert not [a for a in reg.list_approvals(model="tiny") if a.alias == "gold"]
        assert reg.list_tokens()[0].last_used_at is not None
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=15)
        reg.close()
    assert secret not in log.read_text(encoding="utf-8", errors="replace")
