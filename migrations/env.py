"""Alembic environment for crx: runs on the connection handed over by ``crx.registry.db.migrate``.

Run outside crx (``alembic -c alembic.ini upgrade head``), it connects to
``sqlalchemy.url`` from the ini file or ``CRX_DATABASE_URL``.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from crx.registry.db.tables import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from crx.registry.db.connection import make_engine

    url = os.environ.get("CRX_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set CRX_DATABASE_URL or sqlalchemy.url in alembic.ini")
    engine = make_engine(url)
    with engine.begin() as conn:
        _run(conn)


if context.is_offline_mode():
    raise SystemExit("crx migrations run online only")
run_migrations_online()
