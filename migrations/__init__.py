"""Alembic migrations: the only source of the crx database schema (see ``registry.db.migrate``)."""
