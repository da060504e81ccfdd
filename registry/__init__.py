"""The crx library: the `Registry` facade and everything under it (see the README's layout).

``from crx import Registry`` is the public spelling; ``crx.registry.Registry`` is the same class.
Both are imported on first use, so importing a submodule (``crx.registry.errors``, say) does not
load the facade, SQLAlchemy or the catalogue. ``open_reader()`` is the facade's read-only
companion for a process that only looks up models, vectors and maps: on a SQLite registry it
answers with the standard library's sqlite3 and no SQLAlchemy (None elsewhere: use `Registry`;
`crx.registry.catalog.quickread`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crx.registry.api import Registry
    from crx.registry.catalog.quickread import QuickReader, open_reader
    from crx.registry.errors import CrxError

__all__ = ["CrxError", "QuickReader", "Registry", "open_reader"]
_QUICK = ("QuickReader", "open_reader")


def __getattr__(name: str) -> Any:
    import crx

    if name in _QUICK:
        from crx.registry.catalog import quickread

        return getattr(quickread, name)
    if name in __all__:
        return getattr(crx, name)
    raise AttributeError(f"module 'crx.registry' has no attribute {name!r}")
