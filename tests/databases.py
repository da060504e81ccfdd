"""Fresh migrated databases for tests: plain helpers (the fixtures are in ``tests/conftest.py``).

Each test gets its own database, a copy of a migrated template, as mlflow's tests do: a file
copy on SQLite, ``CREATE DATABASE ... TEMPLATE crx_template`` on PostgreSQL.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

from tests.servers import PostgresServer

_counter = itertools.count()


def sqlite_url(tmp_path: Path, template: Path) -> str:
    path = tmp_path / "registry.db"
    shutil.copy(template, path)
    return f"sqlite:///{path}"


def postgres_url(server: PostgresServer) -> str:
    name = f"crx_test_{os.getpid()}_{next(_counter)}"
    server.execute(f"CREATE DATABASE {name} TEMPLATE crx_template")
    return server.url(name)
