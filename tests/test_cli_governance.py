"""The governance commands as people and scripts see them: text output, ``--json`` records
(fields as in `crx.schemas.governance`), and identities (on SQLite: ``CRX_ACTOR``).

Runs on a SQLite registry holding one of everything (`tests.cli_world`); what depends on the
database (roles, what PostgreSQL refuses) is in tests/test_governance.py and
tests/test_walkthrough.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from crx.schemas.governance import AliasHistoryRecord, AliasRecord, ApprovalRecord
from tests.cli_world import World, tiny_array
from tests.test_cli_errors import usage_error, user_error


def _second_vector(w: World) -> int:
    with w.registry() as reg:
        return reg.save_vector(
            "joy@1", "tiny", tiny_array() * 2 + np.float32(1), origin="extracted", estimator="pca"
        ).record.id


def test_alias_commands(populated_sqlite: World, monkeypatch: pytest.MonkeyPatch) -> None:
    w = populated_sqlite
    first, second = w.facts["vector_id"], _second_vector(w)
    monkeypatch.setenv("CRX_ACTOR", "ana")
    out = w.ok("alias", "set", "joy@1", "staging", "--model", "tiny", "--vector", str(first))
    assert out.stdout == f"joy@staging on tiny -> vector {first} (joy@1), revision 1\n"
    moved = w.json(
        "alias", "set", "joy@1", "staging", "--model", "tiny", "--vector", str(second),
        "--expect", str(first), "--reason", "pca reads better",
    )  # fmt: skip
    assert set(moved) == set(AliasRecord.model_fields)
    assert (moved["vector_id"], moved["revision"], moved["actor"]) == (second, 2, "ana")
    stale = w.run(
        "alias", "set", "joy@1", "staging", "--model", "tiny", "--vector", str(first),
        "--expect", str(first),
    )  # fmt: skip
    assert f"it is now vector {second} (version 1, revision 2, move by ana" in user_error(stale)

    shown = w.ok("alias", "show", "joy@staging").stdout.splitlines()
    assert shown[0] == f"joy@staging on tiny -> vector {second} (joy@1), revision 2"
    assert shown[1].startswith("  move by ana at ")
    assert shown[1].endswith(": pca reads better")
    listed = w.ok("alias", "list", "--model", "tiny").stdout.splitlines()
    assert listed[0].split()[:5] == ["ALIAS", "MODEL", "VECTOR", "VERSION", "REV"]
    assert listed[1].split()[:5] == ["joy@staging", "tiny", str(second), "joy@1", "2"]
    assert w.json("alias", "list", "--model", "tiny-b") == []

    history = w.json("alias", "history", "joy", "--model", "tiny")
    assert [set(h) for h in history] == [set(AliasHistoryRecord.model_fields)] * 2
    assert [(h["revision"], h["action"], h["new_vector_id"]) for h in history] == [
        (1, "set", first),
        (2, "move", second),
    ]
    at_first = w.json("alias", "history", "joy", "--model", "tiny", "--at", history[0]["at"])
    assert [h["revision"] for h in at_first] == [1]
    assert w.ok("alias", "history", "joy", "--model", "tiny", "--at", "2000-01-01").stdout == (
        "no alias in force then\n"
    )
    usage_error(w.run("alias", "history", "joy", "--model", "tiny", "--at", "yesterday"))
    page = w.run("alias", "history", "joy", "--model", "tiny", "--limit", "1")
    assert len(page.stdout.splitlines()) == 2  # the header and one row
    assert page.stderr == f"(more: --after {history[0]['id']})\n"
    rest = w.json("alias", "history", "joy", "--model", "tiny", "--after", str(history[0]["id"]))
    assert [h["revision"] for h in rest] == [2]

    deleted = w.ok("alias", "delete", "joy@staging", "--model", "tiny", "--reason", "done")
    assert deleted.stdout == f"deleted joy@staging on tiny (was vector {second})\n"
    rows = w.ok("alias", "history", "joy", "--model", "tiny").stdout.splitlines()
    assert rows[-1].split()[3:9] == ["joy@staging", "3", "delete", f"{second}", "(v1)", "-"]


def test_approve_promote_deprecate_commands(
    populated_sqlite: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = populated_sqlite
    vector = w.facts["vector_id"]
    monkeypatch.setenv("CRX_ACTOR", "writer")
    check = w.ok("promote", "joy@1", "--model", "tiny", "--check").stdout.splitlines()
    assert check == [
        f"joy@1 (vector {vector}) on tiny -> prod, policy crx's default (one approval):",
        "  ok   not deprecated",
        "  FAIL approvals: 0 of 1 from someone other than writer",
    ]
    monkeypatch.setenv("CRX_ACTOR", "boss")
    approved = w.ok("approve", "joy@1", "--model", "tiny", "--reason", "fine")
    assert approved.stdout.startswith(f"approved vector {vector} (joy@1 on tiny, oid ")
    assert approved.stdout.endswith(") for prod as boss\n")
    listed = w.json("approvals", "list", "--model", "tiny")
    assert [set(a) for a in listed] == [set(ApprovalRecord.model_fields)]
    assert (listed[0]["decision"], listed[0]["current"], listed[0]["actor"]) == (
        "approve",
        True,
        "boss",
    )
    monkeypatch.setenv("CRX_ACTOR", "writer")
    report = w.json("promote", "joy@1", "--model", "tiny", "--reason", "ship it")
    assert report["promoted"] is True
    assert report["alias_record"]["ref"] == "joy@prod"
    assert [c["passed"] for c in report["checks"]] == [True, True]
    assert w.json("show", "concept", "joy@prod")["ref"] == "joy@1"

    # a standing rejection, then deprecation: both stop the next promotion
    second = _second_vector(w)
    monkeypatch.setenv("CRX_ACTOR", "boss")
    rejected = w.ok("reject", "joy@1", "--model", "tiny", "--vector", str(second), "--reason", "no")
    assert rejected.stdout.startswith(f"rejected vector {second} ")
    monkeypatch.setenv("CRX_ACTOR", "writer")
    refused = user_error(w.run("promote", "joy@1", "--model", "tiny", "--vector", str(second)))
    assert "rejected for prod by boss (no)" in refused
    dep = w.ok("deprecate", f"vector:{second}", "--reason", "r")
    assert dep.stdout == f"deprecated vector {second}: r\n"
    table = w.ok("deprecations", "list").stdout.splitlines()
    assert table[1].split()[:3] == ["1", "vector", str(second)]
    assert w.json("deprecations", "list")[0]["object_id"] == second
