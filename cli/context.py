"""The registry a command works on, opened lazily from the global ``--db`` / ``--store``."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from crx.registry import QuickReader, Registry


@contextmanager
def importing() -> Iterator[None]:
    """Imports with the cyclic garbage collector paused.

    Importing the library (SQLAlchemy's ORM, pydantic, the record schemas) creates tens of
    thousands of objects that live as long as the process and are not garbage; the collector's
    passes over them while they are created cost about a tenth of a read command's run.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class State:
    def __init__(self, database_url: str | None, store_url: str | None) -> None:
        self.database_url = database_url
        self.store_url = store_url
        self._registry: Registry | None = None
        self._reader: QuickReader | None = None
        self._reader_tried = False

    @property
    def reader(self) -> QuickReader | Registry:
        """What answers `reader()`: the quick reader where it can, else the registry."""
        if self._registry is None and not self._reader_tried:
            self._reader_tried = True
            with importing():
                from crx.registry import open_reader

            self._reader = open_reader(self.database_url)
        return self._reader if self._reader is not None else self.registry

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            with importing():
                from crx.registry import Registry

            self._registry = Registry(self.database_url, self.store_url)
        return self._registry

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._registry is not None:
            self._registry.close()


def registry() -> Registry:
    """The current command's registry."""
    return click.get_current_context().find_object(State).registry  # type: ignore[union-attr]


def reader() -> QuickReader | Registry:
    """For the commands that only read models, vectors and maps: on a SQLite registry the
    standard library's sqlite3 answers (`crx.registry.open_reader`, no SQLAlchemy to import:
    half a read command's time), else the registry; the records are the same."""
    return click.get_current_context().find_object(State).reader  # type: ignore[union-attr]


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (stable fields).")
limit_option = click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Rows per page (0 = all).",
)
after_option = click.option(
    "--after", type=int, default=None, help="Start after this id (the next page's cursor)."
)


def parse_when(text: str, *, end_of_day: bool) -> datetime:
    """An ISO 8601 date or date-time as aware UTC (naive = UTC). A bare date is the start of
    that day, or with ``end_of_day`` its last microsecond ("on 2026-11-20" includes all of it).
    """
    value = text.strip()
    try:
        if len(value) == 10:
            day = datetime.combine(date.fromisoformat(value), time.max if end_of_day else time.min)
            return day.replace(tzinfo=UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a date (YYYY-MM-DD) or an ISO 8601 date-time"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


class When(click.ParamType):
    """A click type for `parse_when`."""

    name = "DATE"

    def __init__(self, *, end_of_day: bool) -> None:
        self.end_of_day = end_of_day

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            return parse_when(str(value), end_of_day=self.end_of_day)
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)
