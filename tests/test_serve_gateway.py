"""``crx serve`` on PostgreSQL connected as a gateway: each token's user writes as their own role.

A real server process logs in as a gateway made with ``crx db gateway`` (NOINHERIT, no
privileges of its own, may act as every person); each request's transaction runs under ``SET
LOCAL ROLE`` of the token's user. What is checked is what the database itself records and
refuses, read back by SQL as the superuser: approvals and audit rows name the approvers, a
writer-only person's approval is refused by the GRANT, a protected alias needs approvals by
others than the mover, and a gateway connection that acts as nobody (or as a group) cannot
write at all, while a person's own ``SET ROLE`` still stamps that person.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from crx.cli.main import cli
from crx.registry import Registry
from crx.registry.errors import DatabaseRefused, InvalidInput, NotPermitted
from tests.databases import postgres_url, sqlite_url
from tests.servers import PostgresServer
from tests.test_serve_api import _error, server_env, start_server
from tests.test_serve_writes import _world, bearer


def _name(kind: str) -> str:
    # Roles belong to the whole cluster, which every test shares.
    return f"{kind}_{uuid.uuid4().hex[:8]}"


@dataclass
class Site:
    """A registry as its owner (the superuser), its people, and a gateway's URL."""

    server: PostgresServer
    owner: Registry
    store: str
    database: str
    facts: dict[str, Any]
    passwords: dict[str, str]
    gateway: str

    def url(self, user: str) -> str:
        return self.server.url(self.database, user=user, password=self.passwords[user])

    def person(self, user: str) -> Registry:
        return Registry(self.url(user), self.store)

    def raw(self, user: str) -> psycopg.Connection[Any]:
        """A plain driver connection as ``user``: no crx code sets any role on it."""
        return psycopg.connect(self.url(user).replace("+psycopg", ""), autocommit=True)

    def sql(self, statement: str, **params: Any) -> list[Any]:
        with self.owner.db.sql_engine.connect() as connection:
            return [tuple(r) for r in connection.execute(sa.text(statement), params)]


def _db(*args: str, stdin: str | None = None, url: str) -> Any:
    return CliRunner().invoke(cli, ["--db", url, "--store", "unused", "db", *args], input=stdin)


@pytest.fixture
def site(tmp_path: Path, postgres_server: PostgresServer) -> Iterator[Site]:
    db = postgres_url(postgres_server)
    owner, store, facts = _world(tmp_path, db)
    owner.ensure_roles()
    passwords: dict[str, str] = {}
    people = {"approver1": "approver", "approver2": "approver", "writer1": "writer"}
    names = {key: _name(key) for key in people}
    # approver1 exists before the gateway (`crx db gateway` grants it); the others come after
    # (`crx db user` grants them to every gateway).
    passwords[names["approver1"]] = f"pw-{uuid.uuid4().hex}"
    owner.add_user(names["approver1"], "approver", passwords[names["approver1"]])
    gateway = _name("gateway")
    passwords[gateway] = f"gw-{uuid.uuid4().hex}"
    made = _db(
        "gateway",
        gateway,
        "--password-stdin",
        stdin=passwords[gateway] + "\n",
        url=db,
    )
    assert made.exit_code == 0, made.output
    assert f"gateway {gateway}: created, member of crx_gateway" in made.output
    assert passwords[gateway] not in made.output
    for key in ("approver2", "writer1"):
        passwords[names[key]] = f"pw-{uuid.uuid4().hex}"
        owner.add_user(names[key], people[key], passwords[names[key]])
    database = str(owner.db.sql_engine.url.database)
    facts["names"] = names
    yield Site(postgres_server, owner, store, database, facts, passwords, gateway)
    owner.close()


def _actors(site: Site, table: str, where: str = "TRUE") -> list[str]:
    return [r[0] for r in site.sql(f"SELECT actor FROM {table} WHERE {where} ORDER BY id")]


def test_a_gateway_server_writes_as_each_tokens_user(site: Site, tmp_path: Path) -> None:
    names = site.facts["names"]
    a1, a2, w1 = names["approver1"], names["approver2"], names["writer1"]
    tokens = {user: site.owner.create_token(user).secret for user in (a1, a2, w1)}
    ghost = site.owner.create_token(_name("ghost")).secret  # a user with no database role
    process, client, log = start_server(
        site.url(site.gateway), site.store, tmp_path, server_env(tmp_path / "home")
    )
    try:
        # reading needs no token: the gateway reads as crx_reader
        models = client.get("/api/models")
        assert models.status_code == 200, models.text
        assert {m["name"] for m in models.json()["items"]} >= {"tiny", "tiny-b"}

        # approver1 approves joy@2 for gold: recorded as approver1 by the database
        approve = {"ref": "joy@2", "model": "tiny", "alias": "gold", "reason": "checked"}
        response = client.post("/api/approvals", json=approve, headers=bearer(tokens[a1]))
        assert response.status_code == 201, response.text
        assert response.json()["actor"] == a1
        # a writer-only person's approval is refused by the GRANT, as with the CLI
        refused = client.post("/api/approvals", json=approve, headers=bearer(tokens[w1]))
        assert "permission denied for table approvals" in _error(refused, 403, "DatabaseRefused")
        # a token whose user has no role is refused before anything runs
        nobody = client.post("/api/approvals", json=approve, headers=bearer(ghost))
        assert "no database role" in _error(nobody, 403, "NotPermitted")

        # approver1 may not promote on their own approval; approver2 may
        promote = {"ref": "joy@2", "model": "tiny", "to": "gold", "reason": "ship"}
        own = client.post("/api/promotions", json=promote, headers=bearer(tokens[a1]))
        assert f"{a1}'s own approval does not count" in _error(own, 403, "PromotionRefused")
        done = client.post("/api/promotions", json=promote, headers=bearer(tokens[a2]))
        assert done.status_code == 200, done.text
        assert done.json()["promoted"] is True

        # approver2 rejects joy@1 for gold; writer1 moves staging (an unprotected alias)
        reject = {"ref": "joy@1", "model": "tiny", "alias": "gold", "reason": "too weak"}
        rejected = client.post("/api/rejections", json=reject, headers=bearer(tokens[a2]))
        assert rejected.status_code == 201, rejected.text
        move = {"ref": "joy@1", "model": "tiny", "alias": "staging", "expect": site.facts["v2"]}
        moved = client.post("/api/aliases", json=move, headers=bearer(tokens[w1]))
        assert moved.status_code == 200, moved.text
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=15)
    text = log.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in text
    assert not any(secret in text for secret in (*tokens.values(), site.passwords[site.gateway]))

    # what the database recorded, read as the superuser
    gold = "alias = 'gold'"
    assert site.sql(f"SELECT actor, decision FROM approvals WHERE {gold} ORDER BY id") == [
        (a1, "approve"),
        (a2, "reject"),
    ]
    assert _actors(site, "audit_events", "action LIKE 'approval.%' AND actor <> 'postgres'") == [
        a1,
        a2,
    ]
    assert site.sql("SELECT actor, vector_id FROM aliases WHERE name = 'gold'") == [
        (a2, site.facts["v2"])
    ]
    assert _actors(site, "alias_history", "name = 'gold'") == [a2]
    assert _actors(site, "alias_history", "name = 'staging'")[-1] == w1
    assert _actors(site, "audit_events", "action = 'alias.promote'") == [a2]
    # nothing was ever recorded as the gateway or a group
    everyone = set(_actors(site, "audit_events")) | set(_actors(site, "approvals"))
    assert everyone <= {"postgres", a1, a2, w1}


def test_protected_moves_need_approvals_by_others_than_the_mover_in_the_database(
    site: Site,
) -> None:
    a1, a2 = site.facts["names"]["approver1"], site.facts["names"]["approver2"]
    v2 = site.facts["v2"]
    gateway = site.person(site.gateway)
    try:
        with gateway.acting_for(a1):
            gateway.approve("joy@2", "tiny", alias="gold", vector_id=v2)
        # bypassing crx's own check: the gateway, acting as approver1, inserts the alias by SQL
        insert = (
            "INSERT INTO aliases (concept_id, model_id, name, concept_version_id, vector_id, "
            "revision, action, actor, updated_at) SELECT cv.concept_id, v.model_id, 'gold', "
            "v.concept_version_id, v.id, 1, 'promote', 'x', now() FROM vectors v "
            f"JOIN concept_versions cv ON cv.id = v.concept_version_id WHERE v.id = {v2}"
        )
        with site.raw(site.gateway) as raw, raw.transaction():
            raw.execute(f'SET LOCAL ROLE "{a1}"')  # type: ignore[arg-type]
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=f"other than {a1}"):
                raw.execute(insert)  # type: ignore[arg-type]
        # acting as approver2, the one approval by someone else is enough
        with site.raw(site.gateway) as raw, raw.transaction():
            raw.execute(f'SET LOCAL ROLE "{a2}"')  # type: ignore[arg-type]
            raw.execute(insert)  # type: ignore[arg-type]
        assert site.sql("SELECT actor FROM aliases WHERE name = 'gold'") == [(a2,)]
        assert _actors(site, "alias_history", "name = 'gold'") == [a2]
        # the owner's deletion of a protected alias: a gateway acting as a writer may not
        w1 = site.facts["names"]["writer1"]
        with gateway.acting_for(w1), pytest.raises(DatabaseRefused, match="registry owner"):
            gateway.delete_alias("joy", "tiny", "gold", force=True)
        # deleting an unprotected alias through the gateway: history names the deleter
        with gateway.acting_for(w1):
            gateway.delete_alias("joy", "tiny", "staging")
        assert _actors(site, "alias_history", "name = 'staging'")[-1] == w1
        assert site.sql(
            "SELECT action FROM alias_history WHERE name = 'staging' ORDER BY id DESC LIMIT 1"
        ) == [("delete",)]
    finally:
        gateway.close()


def test_a_gateway_never_writes_as_itself_or_a_group(site: Site) -> None:
    v2 = site.facts["v2"]
    approval = (
        "INSERT INTO approvals (vector_id, vector_oid, model_id, alias, decision, actor, at) "
        f"SELECT id, oid, model_id, 'gold', 'approve', 'forged', now() FROM vectors WHERE id = {v2}"
    )
    audit = (
        "INSERT INTO audit_events (at, actor, action, object_kind, object_ref) "
        "VALUES (now(), 'forged', 'forged', 'x', 'x')"
    )
    before = (
        site.sql("SELECT count(*) FROM approvals"),
        site.sql("SELECT count(*) FROM audit_events"),
    )
    with site.raw(site.gateway) as raw:
        # no role set: no privileges of its own (NOINHERIT)
        for statement in (approval, audit, "DELETE FROM aliases"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                raw.execute(statement)  # type: ignore[arg-type]
        # a group it reaches through a person has the privileges, but the stamp refuses it
        for group, statement in (("crx_approver", approval), ("crx_writer", audit)):
            with raw.transaction():
                raw.execute(f"SET LOCAL ROLE {group}")  # type: ignore[arg-type]
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="is a gateway"):
                    raw.execute(statement)  # type: ignore[arg-type]
    after = (
        site.sql("SELECT count(*) FROM approvals"),
        site.sql("SELECT count(*) FROM audit_events"),
    )
    assert after == before
    # through crx, a gateway acting for nobody reads (as crx_reader) but writes nothing
    gateway = site.person(site.gateway)
    try:
        assert gateway.token_writes_served()
        assert [m.name for m in gateway.list_models().items]
        with pytest.raises(DatabaseRefused, match="permission denied"):
            gateway.set_alias("joy@1", "tiny", "staging", vector_id=site.facts["v1"])
        with pytest.raises(DatabaseRefused, match="permission denied"):
            gateway.approve("joy@2", "tiny", alias="gold", vector_id=v2)
        # acting for a role that is not a person (a group, the superuser) is refused by crx
        for role in ("crx_owner", "postgres", site.gateway):
            with gateway.acting_for(role), pytest.raises(NotPermitted, match="no database role"):
                gateway.list_models()
    finally:
        gateway.close()
    assert not site.owner.token_writes_served()  # the superuser is no gateway


def test_a_person_cannot_use_the_gateway_trick(site: Site) -> None:
    w1, a1 = site.facts["names"]["writer1"], site.facts["names"]["approver1"]
    audit = (
        "INSERT INTO audit_events (at, actor, action, object_kind, object_ref) "
        "VALUES (now(), 'forged', 'person.trick', 'x', 'x')"
    )
    with site.raw(w1) as raw:
        # a person's SET ROLE to its group still stamps the person
        with raw.transaction():
            raw.execute("SET LOCAL ROLE crx_writer")  # type: ignore[arg-type]
            raw.execute(audit)  # type: ignore[arg-type]
        # and a person cannot become another person
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            raw.execute(f'SET ROLE "{a1}"')  # type: ignore[arg-type]
    assert _actors(site, "audit_events", "action = 'person.trick'") == [w1]
    writer = site.person(w1)
    try:
        assert not writer.token_writes_served()
        # acting_for is a label for a person's connection, never another role
        with writer.acting_for(a1):
            writer.set_alias("joy@1", "tiny", "staging", vector_id=site.facts["v1"])
    finally:
        writer.close()
    assert _actors(site, "aliases", "name = 'staging'") == [w1]


def test_gateway_and_person_roles_stay_apart(site: Site) -> None:
    db = site.owner.db.sql_engine.url.render_as_string(hide_password=False)
    w1 = site.facts["names"]["writer1"]
    # idempotent: again, the gateway is updated and may act as all three people
    again = _db("gateway", site.gateway, "--json", url=db)
    assert again.exit_code == 0, again.output
    assert f'"{site.gateway}: may act as {w1}"' in again.output
    # a person is not made a gateway, nor a gateway a person, nor a group a gateway
    with pytest.raises(InvalidInput, match="is a person"):
        site.owner.add_gateway(w1)
    with pytest.raises(InvalidInput, match="is a gateway"):
        site.owner.add_user(site.gateway, "writer")
    with pytest.raises(InvalidInput, match="crx group"):
        site.owner.add_gateway("crx_owner")
    with pytest.raises(InvalidInput, match="superuser or holds privileges"):
        site.owner.add_gateway("postgres")
    # a login role with a privilege of its own would keep it as a gateway: refused
    holder = _name("holder")
    site.server.execute(f"CREATE ROLE {holder} LOGIN")
    with site.owner.db.sql_engine.begin() as connection:
        connection.execute(sa.text(f"GRANT SELECT ON models TO {holder}"))
    with pytest.raises(InvalidInput, match="holds privileges on the tables itself"):
        site.owner.add_gateway(holder)
    refused = _db("gateway", w1, url=db)
    assert refused.exit_code == 1
    assert refused.output.startswith("Error: ")
    assert "is a person" in refused.output
    # the gateway is NOINHERIT and a member of crx_gateway; no person is
    rows = site.sql(
        "SELECT r.rolname, r.rolinherit, pg_has_role(r.oid, 'crx_gateway', 'MEMBER') "
        "FROM pg_roles r WHERE r.rolname IN (:g, :w) ORDER BY r.rolname = :g",
        g=site.gateway,
        w=w1,
    )
    assert rows == [(w1, True, False), (site.gateway, False, True)]


def test_the_downgrade_restores_0003s_functions(postgres_server: PostgresServer) -> None:
    from alembic import command

    from crx.registry.db import migrate
    from crx.registry.db.connection import make_engine

    engine = make_engine(postgres_url(postgres_server))

    def definitions() -> dict[str, str]:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p "
                    "WHERE p.proname LIKE 'crx\\_%' ORDER BY p.proname"
                )
            )
            return {name: body for name, body in rows}

    try:
        head = definitions()
        assert {"crx_actor", "crx_acting_role", "crx_is_gateway"} <= set(head)
        assert "crx_actor()" in head["crx_stamp"]
        config = migrate._alembic_config(engine)
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0004")
        old = definitions()
        assert not {"crx_actor", "crx_acting_role", "crx_is_gateway"} & set(old)
        assert "NEW.actor := session_user" in old["crx_stamp"]
        assert "latest.actor <> session_user" in old["crx_guard_alias"]
        migrate.upgrade(engine)
        assert definitions() == head
    finally:
        engine.dispose()


def test_a_sqlite_registry_has_no_gateway(tmp_path: Path, sqlite_template: Path) -> None:
    db = sqlite_url(tmp_path, sqlite_template)
    with Registry(db, str(tmp_path / "store")) as reg:
        assert reg.token_writes_served()  # one user's file: the token's user is the actor
        with pytest.raises(InvalidInput, match="roles are PostgreSQL's"):
            reg.add_gateway("crx_web")
    refused = _db("gateway", "crx_web", url=db)
    assert refused.exit_code == 1
    assert refused.output.startswith("Error: roles are PostgreSQL's")
