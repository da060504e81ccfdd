"""The crx library: the `Registry` facade and everything under it (see the README's layout).

``from crx import Registry`` is the public spelling; ``crx.registry.Registry`` is the same class.
Both are imported on first use, so importing a submodule (``crx.registry.errors``, say) does not
load the facade, SQLAlchemy or the catalogue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crx.registry.api import Registry
    from crx.registry.errors import CrxError

__all__ = ["CrxError", "Registry"]


def __getattr__(name: str) -> Any:
    import crx

    if name in __all__:
        return getattr(crx, name)
    raise AttributeError(f"module 'crx.registry' has no attribute {name!r}")
