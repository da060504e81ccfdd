"""Keyset paging by id: stable under concurrent inserts, O(limit) at any depth."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Select, func
from sqlalchemy.orm import Session

from crx.registry.db.tables import MAX_ROW_ID
from crx.schemas.records import Page

T = TypeVar("T")
DEFAULT_LIMIT = 100


def page(
    session: Session,
    statement: Select,
    id_column: Any,
    convert: Callable[[Sequence[Any]], list[T]],
    *,
    limit: int | None,
    after: int | None,
) -> Page[T]:
    """Run ``statement`` ordered by ``id_column`` from ``after``; ``limit`` None or 0 = all."""
    if after is not None:
        # No row has an id past the column's range: clamp, so both backends answer alike.
        statement = statement.where(id_column > min(after, MAX_ROW_ID))
    statement = statement.order_by(id_column)
    if limit:
        limit = min(limit, MAX_ROW_ID)
        statement = statement.limit(limit + 1)
    rows = session.execute(statement).all()
    more = bool(limit) and len(rows) > (limit or 0)
    rows = rows[:limit] if limit else rows
    items = convert(rows)
    next_after = rows[-1][0].id if more and rows else None
    return Page[T](items=items, next_after=next_after)


def name_contains(statement: Select, column: Any, text: str | None) -> Select:
    """``statement`` narrowed to rows whose ``column`` holds ``text``, case-insensitively
    (``%`` and ``_`` are literal); None or "" leaves it as it is."""
    if not text:
        return statement
    return statement.where(func.lower(column).contains(text.lower(), autoescape=True))
