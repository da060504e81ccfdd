"""Shared fixtures: real backends only (SQLite files, a PostgreSQL server, moto's S3 server).

The servers start once per test session. Outside CI, a backend whose server cannot be found is
skipped with the reason; in CI (``CI=true``) that is an error, so CI never passes by skipping.
Each test gets its own database (a copy of a migrated template, as mlflow's tests do) and its
own store root (``memory://`` is global to the process, so roots must differ).

This file holds fixtures and hooks only. Shared fixtures of one subject live in the plugin
modules named in ``pytest_plugins`` (with the plain helpers that go with them); other plain
helpers are in ``tests/databases.py`` and ``tests/servers.py``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.databases import postgres_url, sqlite_url
from tests.servers import MotoServer, PostgresServer

pytest_plugins = ["tests.tiny_models", "tests.cli_world", "tests.registry_world", "tests.team"]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI must run every backend)")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own CRX_HOME and no inherited registry URLs."""
    monkeypatch.setenv("CRX_HOME", str(tmp_path / "crx-home"))
    monkeypatch.delenv("CRX_DATABASE_URL", raising=False)
    monkeypatch.delenv("CRX_STORE_URL", raising=False)
    monkeypatch.setenv("CRX_ACTOR", "tester")


# -- markers ------------------------------------------------------------------------------

#: Fixtures that start a server, and the marker a test using one gets.
SERVER_FIXTURES = {"postgres_server": "postgres", "moto_server": "s3", "s3_env": "s3"}
#: A parametrized fixture's param of these names selects that server (``db_url[postgres]``,
#: ``store_url[s3]``, and the module fixtures parametrized the same way).
SERVER_PARAMS = {"postgres": "postgres", "s3": "s3"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test that needs PostgreSQL or S3 (``-m "not postgres and not s3"`` then runs
    with neither server): it uses a server fixture, directly or through its fixtures, or a
    parametrized fixture's ``postgres`` / ``s3`` param (those fixtures ask for the server only
    at run time, with ``request.getfixturevalue``, so the fixture closure does not show it)."""
    for item in items:
        wanted = {
            SERVER_FIXTURES[n] for n in getattr(item, "fixturenames", ()) if n in SERVER_FIXTURES
        }
        callspec = getattr(item, "callspec", None)
        for value in callspec.params.values() if callspec is not None else ():
            if isinstance(value, str) and value in SERVER_PARAMS:
                wanted.add(SERVER_PARAMS[value])
        for marker in sorted(wanted):
            if item.get_closest_marker(marker) is None:
                item.add_marker(getattr(pytest.mark, marker))


# -- servers ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer.start()
    except Exception as exc:
        _unavailable(f"cannot start PostgreSQL: {exc}")
    try:
        server.execute("CREATE DATABASE crx_template")
        from crx.registry.db.connection import make_engine
        from crx.registry.db.migrate import upgrade

        engine = make_engine(server.url("crx_template"))
        upgrade(engine)
        engine.dispose()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    try:
        server = MotoServer.start()
    except Exception as exc:
        _unavailable(f"cannot start moto's S3 server: {exc}")
    yield server
    server.stop()


@pytest.fixture
def s3_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    for key, value in moto_server.environment().items():
        monkeypatch.setenv(key, value)
    return moto_server


# -- databases ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crx.registry.db.connection import make_engine
    from crx.registry.db.migrate import upgrade

    path = tmp_path_factory.mktemp("template") / "registry.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path, sqlite_template)
    return postgres_url(request.getfixturevalue("postgres_server"))


@pytest.fixture
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite URL with no schema yet (for init and migration tests)."""
    return f"sqlite:///{tmp_path / 'empty.db'}"


# -- stores -------------------------------------------------------------------------------


@pytest.fixture(params=["file", "memory", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store root on each backend."""
    if request.param == "file":
        return str(tmp_path / "store")
    if request.param == "memory":
        return f"memory://crx-test-{uuid.uuid4().hex}/store"
    request.getfixturevalue("s3_env")
    return f"s3://crx-test-{uuid.uuid4().hex[:16]}/store"


@pytest.fixture
def registry(db_url: str, tmp_path: Path) -> Iterator[object]:
    """A ready registry on each database kind, with a local store."""
    from crx.registry import Registry

    reg = Registry(db_url, str(tmp_path / "store"))
    reg.init()
    yield reg
    reg.close()


# -- small real inputs ----------------------------------------------------------------------


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    """A model folder with a real transformers config (4 layers, d_model 32), no weights."""
    folder = tmp_path / "tiny-llama"
    folder.mkdir()
    (folder / "config.json").write_text(
        '{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 4,'
        ' "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,'
        ' "vocab_size": 100}'
    )
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    return folder


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.json"
    path.write_text(
        '[{"positive": "I feel wonderful today", "negative": "I feel awful today"},'
        ' {"positive": "What a joyful party", "negative": "What a gloomy funeral"}]'
    )
    return path
