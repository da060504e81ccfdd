"""The read commands that only look, answered on SQLite with the standard library alone.

`crx show model` and `crx list vectors` spend most of their time importing SQLAlchemy (its ORM
and dialects: ~200 ms of a ~400 ms run, `benchmarks/README.md`, "CLI start-up"). On an
embedded or file SQLite registry, `open_reader` answers them with `sqlite3` (imported in
~4 ms) in a read-only connection and gives the same records as the catalogue
(`crx.registry.catalog.service.Catalog`): the same columns, the same order, the same paging
and the same not-found errors; `tests/test_quickread.py` checks the two agree on every field.

It is public as ``crx.registry.open_reader`` (the CLI's `reader()` uses it). Anything it was
not built for falls back to the catalogue (`open_reader` returns None): a
PostgreSQL URL, a URL with options, a database file that does not exist yet (the catalogue
creates the embedded one), a schema at another revision (the catalogue's error says what to
do), or ``CRX_QUICK_READ=0``.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from crx.registry import config
from crx.registry.db.revision import HEAD_REVISION
from crx.registry.errors import ModelNotFound
from crx.registry.timeutil import as_utc
from crx.schemas.records import MapRecord, ModelRecord, Page, VectorRecord

ENV_QUICK_READ = "CRX_QUICK_READ"
#: `crx.registry.db.tables.MAX_ROW_ID` (a test checks they are equal): no row has a larger id.
MAX_ROW_ID = 2**31 - 1
_JSON = {"tags", "layers", "layer_norms", "map_ids", "settings", "solver_settings", "metrics"}
_TIMES = {"created_at", "updated_at"}
_MODEL = [f for f in ModelRecord.model_fields]
_VECTOR = [f for f in VectorRecord.model_fields if f not in ("concept", "concept_version", "model")]
_MAP = [f for f in MapRecord.model_fields if f not in ("source_model", "target_model")]


def open_reader(database_url: str | None = None) -> QuickReader | None:
    """A reader for ``database_url`` (resolved as `Registry` resolves it: the argument, else
    ``CRX_DATABASE_URL``, else the embedded ``$CRX_HOME/registry.db``), or None where the
    catalogue must answer (see above)."""
    if os.environ.get(ENV_QUICK_READ, "1") == "0":
        return None
    database_url = config.resolve(database_url).database_url
    prefix = "sqlite:///"
    if not database_url.startswith(prefix) or "?" in database_url:
        return None
    path = Path(database_url[len(prefix) :]).expanduser()
    if not path.is_file():
        return None
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    if row is None or row[0] != HEAD_REVISION:
        connection.close()
        return None
    return QuickReader(connection)


#: JSON objects the catalogue reads as ``dict(value or {})``: a JSON null is an empty one.
_DICTS = {"tags", "settings", "solver_settings", "metrics"}


def _value(column: str, raw: Any) -> Any:
    if column in _JSON:
        value = None if raw is None else json.loads(raw)
        return {} if value is None and column in _DICTS else value
    if raw is None:
        return None
    if column in _TIMES:
        return as_utc(datetime.fromisoformat(raw))
    return raw


def _columns(alias: str, names: Sequence[str]) -> str:
    return ", ".join(f"{alias}.{name}" for name in names)


class QuickReader:
    """Read-only views of models, vectors and maps over one sqlite3 connection."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection

    def close(self) -> None:
        self._db.close()

    def get_model(self, ref: str | int) -> ModelRecord:
        """The model named ``ref`` (or with id ``ref``), else `ModelNotFound`, as the catalogue
        finds it (`crx.registry.catalog.models.find`)."""
        query = f"SELECT {_columns('m', _MODEL)} FROM models m WHERE m."
        row = self._db.execute(query + "name = ?", (str(ref),)).fetchone()
        text = str(ref)
        if row is None and (isinstance(ref, int) or (text.isdigit() and len(text) < 12)):
            ref_id = int(ref)
            if 0 <= ref_id <= MAX_ROW_ID:
                row = self._db.execute(query + "id = ?", (ref_id,)).fetchone()
        if row is None:
            raise ModelNotFound(text)
        return ModelRecord(**{c: _value(c, v) for c, v in zip(_MODEL, row, strict=True)})

    def list_vectors(
        self,
        *,
        concept: str | None = None,
        model: str | None = None,
        limit: int | None = 100,
        after: int | None = None,
    ) -> Page[VectorRecord]:
        """As `Catalog.list_vectors`: by id from ``after``, ``limit`` None or 0 = all."""
        where: list[str] = []
        params: list[str | int] = []
        if concept is not None:
            where.append("c.name = ?")
            params.append(concept)
        if model is not None:
            where.append("m.name = ?")
            params.append(model)
        if after is not None:
            where.append("v.id > ?")
            params.append(min(after, MAX_ROW_ID))
        query = (
            f"SELECT {_columns('v', _VECTOR)}, c.name, cv.version, m.name FROM vectors v "
            "JOIN concept_versions cv ON v.concept_version_id = cv.id "
            "JOIN concepts c ON cv.concept_id = c.id JOIN models m ON v.model_id = m.id"
        )
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY v.id"
        if limit:
            query += " LIMIT ?"
            params.append(min(limit, MAX_ROW_ID) + 1)
        rows = self._db.execute(query, params).fetchall()
        more = bool(limit) and len(rows) > (limit or 0)
        rows = rows[:limit] if limit else rows
        items = []
        for row in rows:
            fields = {c: _value(c, v) for c, v in zip(_VECTOR, row, strict=False)}
            concept_name, version, model_name = row[len(_VECTOR) :]
            fields.update(concept=concept_name, concept_version=version, model=model_name)
            items.append(VectorRecord(**fields))
        next_after = items[-1].id if more and items else None
        return Page[VectorRecord](items=items, next_after=next_after)

    def get_maps(self, map_ids: Sequence[int]) -> dict[int, MapRecord]:
        """The maps of ``map_ids`` that exist, by id (unknown ids are left out)."""
        wanted = sorted({i for i in map_ids if 0 <= i <= MAX_ROW_ID})
        if not wanted:
            return {}
        marks = ", ".join("?" for _ in wanted)
        rows = self._db.execute(
            f"SELECT {_columns('a', _MAP)}, s.name, t.name FROM affine_maps a "
            "JOIN models s ON a.source_model_id = s.id JOIN models t ON a.target_model_id = t.id "
            f"WHERE a.id IN ({marks})",
            wanted,
        ).fetchall()
        found = {}
        for row in rows:
            fields = {c: _value(c, v) for c, v in zip(_MAP, row, strict=False)}
            fields.update(source_model=row[-2], target_model=row[-1])
            found[fields["id"]] = MapRecord(**fields)
        return found
