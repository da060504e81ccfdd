"""Alembic migrations: the one source of the database schema (see ``crx.registry.db.migrate``)."""
