"""The schema revision this crx expects, importable without SQLAlchemy (the quick read path
checks it with the standard library's sqlite3, `crx.registry.catalog.quickread`)."""

from __future__ import annotations

# The newest migration in migrations/versions; a test checks it equals alembic's head.
HEAD_REVISION = "0006"
