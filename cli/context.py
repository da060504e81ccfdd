"""The registry a command works on, opened lazily from the global ``--db`` / ``--store``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from crx.registry import Registry


class State:
    def __init__(self, database_url: str | None, store_url: str | None) -> None:
        self.database_url = database_url
        self.store_url = store_url
        self._registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            from crx.registry import Registry

            self._registry = Registry(self.database_url, self.store_url)
        return self._registry

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()


def registry() -> Registry:
    """The current command's registry."""
    return click.get_current_context().find_object(State).registry  # type: ignore[union-attr]


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
