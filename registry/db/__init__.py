"""The SQL side of the registry: ORM tables, engines and sessions, and alembic helpers."""
