"""Schema lifecycle: alembic migrations are the only schema source, and old schemas are refused.

Runs against real SQLite files and the real PostgreSQL server from the fixtures.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from crx import migrations
from crx.registry import Registry
from crx.registry.db import migrate
from crx.registry.db.connection import make_engine
from crx.registry.db.tables import Base
from crx.registry.errors import (
    DatabaseNotInitialised,
    DatabaseUnavailable,
    SchemaOutOfDate,
    UnknownSchemaRevision,
)
from tests.servers import PostgresServer, free_port

CATALOGUE_TABLES = {
    "models",
    "concepts",
    "concept_versions",
    "vectors",
    "affine_maps",
    "map_anchors",
    "evaluations",
    "aliases",
    "alias_history",
    "approvals",
    "policies",
    "deprecations",
    "audit_events",
    "api_tokens",
}


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return set(inspect(connection).get_table_names())
    finally:
        engine.dispose()


def _fresh_postgres(server: PostgresServer) -> str:
    name = f"crx_mig_{uuid.uuid4().hex[:12]}"
    server.execute(f"CREATE DATABASE {name}")
    return server.url(name)


@pytest.fixture(params=["sqlite", "postgres"])
def blank_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with no tables at all, of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'blank.db'}"
    return _fresh_postgres(request.getfixturevalue("postgres_server"))


def test_head_revision_matches_alembic_script_head() -> None:
    script = ScriptDirectory(str(Path(migrations.__file__).parent))
    heads = script.get_heads()
    assert len(heads) == 1, f"migrations have several heads: {heads}"
    assert migrate.HEAD_REVISION == script.get_current_head() == heads[0]
    # Every revision chains back to the base: no orphan scripts.
    chain = [rev.revision for rev in script.walk_revisions()]
    assert chain[0] == migrate.HEAD_REVISION
    assert script.get_revision(chain[-1]).down_revision is None


def test_init_creates_schema_at_head_and_is_idempotent(blank_db_url: str, tmp_path: Path) -> None:
    store = tmp_path / "store"
    with Registry(blank_db_url, str(store)) as registry:
        first = registry.init()
        assert first.revision_before is None
        assert first.revision == migrate.HEAD_REVISION
        assert registry.current_revision() == migrate.HEAD_REVISION
        assert store.is_dir()
        registry.register_concept("kept", [_pair()])
    tables_after_first = _tables(blank_db_url)
    assert tables_after_first == CATALOGUE_TABLES | {"alembic_version"}

    with Registry(blank_db_url, str(store)) as registry:
        second = registry.init()
        assert second.revision_before == migrate.HEAD_REVISION
        assert second.revision == migrate.HEAD_REVISION
        # Nothing was dropped or recreated: the data is still there.
        assert [c.name for c in registry.list_concepts().items] == ["kept"]
        assert len(registry.audit_events(limit=None).items) == 1
    assert _tables(blank_db_url) == tables_after_first
    engine = make_engine(blank_db_url)
    with engine.connect() as connection:
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    engine.dispose()
    assert [tuple(v) for v in versions] == [(migrate.HEAD_REVISION,)]


def test_migrated_schema_matches_the_orm_tables(blank_db_url: str) -> None:
    engine = make_engine(blank_db_url)
    try:
        migrate.upgrade(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            diffs = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diffs == []


def test_downgrade_to_base_and_back_up(blank_db_url: str) -> None:
    from alembic import command

    engine = make_engine(blank_db_url)
    try:
        migrate.upgrade(engine)
        config = migrate._alembic_config(engine)
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "base")
        assert _tables(blank_db_url) <= {"alembic_version"}
        assert migrate.current_revision(engine) is None
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.HEAD_REVISION
    finally:
        engine.dispose()
    assert _tables(blank_db_url) == CATALOGUE_TABLES | {"alembic_version"}


def _pair() -> object:
    from crx.registry.pairs import ContrastPair

    return ContrastPair("a kind word", "a cruel word")


def _set_revision(url: str, revision: str) -> None:
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    engine.dispose()


def _assert_out_of_date(registry: Registry, current: str) -> None:
    calls = {
        "list_models": registry.list_models,
        "list_concepts": registry.list_concepts,
        "get_concept": lambda: registry.get_concept("joy"),
        "register_concept": lambda: registry.register_concept("joy", [_pair()]),
        "verify_store": registry.verify_store,
        "gc_store": registry.gc_store,
        "audit_events": registry.audit_events,
    }
    for name, call in calls.items():
        with pytest.raises(SchemaOutOfDate) as caught:
            call()
        message = str(caught.value)
        assert "back up" in message, name
        assert "`crx db upgrade`" in message, name
        assert current in message, name
        assert migrate.HEAD_REVISION in message, name
        assert caught.value.current == current


def test_older_schema_refuses_every_call_and_changes_nothing(db_url: str, tmp_path: Path) -> None:
    _set_revision(db_url, "0000")
    registry = Registry(db_url, str(tmp_path / "store"))
    _assert_out_of_date(registry, "0000")
    registry.close()
    engine = make_engine(db_url)
    with engine.connect() as connection:
        for table in ("concepts", "concept_versions", "audit_events"):
            assert connection.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 0
    engine.dispose()
    assert not (tmp_path / "store").exists()


def test_database_with_only_an_old_alembic_version(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        connection.execute("INSERT INTO alembic_version VALUES ('0000')")
    with Registry(f"sqlite:///{path}", str(tmp_path / "store")) as registry:
        _assert_out_of_date(registry, "0000")
        assert registry.current_revision() == "0000"


def test_database_from_a_newer_crx_is_refused_by_init_and_upgrade(
    db_url: str, tmp_path: Path
) -> None:
    _set_revision(db_url, "9999")
    with Registry(db_url, str(tmp_path / "store")) as registry:
        for call in (registry.init, registry.upgrade):
            with pytest.raises(UnknownSchemaRevision) as caught:
                call()
            assert "9999" in str(caught.value)
            assert "newer crx" in str(caught.value)
        assert registry.current_revision() == "9999"


def _crx(*args: str) -> subprocess.CompletedProcess[str]:
    crx = Path(sys.executable).with_name("crx")
    return subprocess.run(
        [str(crx), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_cli_reports_old_and_unknown_schemas_in_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = str(tmp_path / "store")
    assert _crx("--db", url, "--store", store, "init").returncode == 0
    _set_revision(url, "0000")
    listed = _crx("--db", url, "--store", store, "list", "models")
    assert listed.returncode == 1
    assert listed.stdout == ""
    lines = listed.stderr.strip().splitlines()
    assert len(lines) == 1, listed.stderr
    assert lines[0].startswith("Error: "), listed.stderr
    assert "back up" in lines[0]
    assert "`crx db upgrade`" in lines[0]
    _set_revision(url, "9999")
    upgraded = _crx("--db", url, "--store", store, "db", "upgrade")
    assert upgraded.returncode == 1
    assert "Traceback" not in upgraded.stderr
    assert upgraded.stderr.startswith("Error: ")
    assert "newer crx" in upgraded.stderr


def test_out_of_date_default_registry_is_not_silently_upgraded(tmp_path: Path) -> None:
    """Auto-initialisation of $CRX_HOME is for an empty database, never for an old one."""
    with Registry() as registry:
        registry.list_models()
        db_url = registry.location.database_url
    _set_revision(db_url, "0000")
    with Registry() as registry:
        with pytest.raises(SchemaOutOfDate):
            registry.list_models()
        assert registry.current_revision() == "0000"


def test_non_default_database_without_schema_is_not_initialised(
    blank_db_url: str, tmp_path: Path
) -> None:
    with Registry(blank_db_url, str(tmp_path / "store")) as registry:
        for call in (
            registry.list_models,
            lambda: registry.register_concept("joy", [_pair()]),
            registry.verify_store,
        ):
            with pytest.raises(DatabaseNotInitialised, match="crx init"):
                call()
    # Refusing did not create anything: no tables, no store.
    assert _tables(blank_db_url) == set()
    assert not (tmp_path / "store").exists()


def test_unreachable_postgres_is_database_unavailable(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://crx:s3cret-pw@127.0.0.1:{port}/crx"
    with Registry(url, str(tmp_path / "store")) as registry:
        for call in (registry.init, registry.list_models, registry.current_revision):
            with pytest.raises(DatabaseUnavailable) as caught:
                call()
            message = str(caught.value)
            assert message.startswith("cannot open the database postgresql://crx:***@"), message
            assert f":{port}/crx" in message
            assert "s3cret-pw" not in message
            assert "\n" not in message


def test_sqlite_in_a_missing_folder_is_database_unavailable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'folder' / 'registry.db'}"
    with (
        Registry(url, str(tmp_path / "store")) as registry,
        pytest.raises(DatabaseUnavailable, match="does not exist"),
    ):
        registry.init()
    assert not (tmp_path / "no").exists()


def test_embedded_default_initialises_itself_on_first_use(tmp_path: Path) -> None:
    home = tmp_path / "crx-home"  # CRX_HOME, set by the autouse fixture
    assert not home.exists()
    with Registry() as registry:
        assert registry.location.database_is_default
        assert registry.list_concepts().items == []
        version = registry.register_concept("joy", [_pair()]).record
        assert version.ref == "joy@1"
    assert (home / "registry.db").is_file()
    assert (home / "store" / version.pairs_oid[:2] / version.pairs_oid[2:]).is_file()
    with Registry() as registry:
        assert registry.current_revision() == migrate.HEAD_REVISION
        assert registry.get_concept("joy").pairs_oid == version.pairs_oid
