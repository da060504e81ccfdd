"""Alembic helpers: upgrade a database to head, read its revision, guard against old schemas.

The alembic script location is computed from the installed ``migrations`` package (the wheel
ships it), so ``crx db upgrade`` works from any working directory. The connection is handed to
``migrations/env.py`` through ``config.attributes["connection"]``, as MLflow does. Alembic is
imported only here and only when a migration runs: reading the revision for the schema guard is
one plain query.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from crx.registry.config import redact
from crx.registry.db.revision import HEAD_REVISION
from crx.registry.errors import DatabaseNotInitialised, SchemaOutOfDate, UnknownSchemaRevision

if TYPE_CHECKING:
    from alembic.config import Config


def _alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    from crx import migrations

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def known_revisions(config: Config) -> set[str]:
    """Every revision in this crx's migration scripts."""
    from alembic.script import ScriptDirectory

    return {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Create or upgrade the schema to ``revision`` (idempotent).

    A database at a revision these scripts do not have (written by a newer crx) raises
    `UnknownSchemaRevision` instead of alembic's "Can't locate revision" error.
    """
    from alembic import command

    config = _alembic_config(engine)
    current = current_revision(engine)
    if current is not None and current not in known_revisions(config):
        url = redact(engine.url.render_as_string(hide_password=True))
        raise UnknownSchemaRevision(url, current, HEAD_REVISION)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for a database alembic never touched."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        try:
            row = connection.execute(text("SELECT version_num FROM alembic_version")).first()
        except (OperationalError, ProgrammingError):
            return None
    return row[0] if row else None


def has_any_table(engine: Engine) -> bool:
    with engine.connect() as connection:
        return bool(inspect(connection).get_table_names())


def check_schema(engine: Engine) -> None:
    """Raise unless the database is at `HEAD_REVISION`."""
    current = current_revision(engine)
    url = redact(engine.url.render_as_string(hide_password=True))
    if current == HEAD_REVISION:
        return
    if current is None:
        raise DatabaseNotInitialised(url)
    raise SchemaOutOfDate(url, current, HEAD_REVISION)
