"""crx: a registry for concept vectors, and the ConTrans engine that transplants them.

``from crx import Registry`` is the Python API; the ``crx`` command (or ``python -m crx``) is a
thin skin over it. The library lives in ``crx.registry``, the pydantic records and documents in
``crx.schemas``, the command line in ``crx.cli`` and the database schema in ``crx.migrations``.

The names below are imported on first use (PEP 562), so ``import crx`` loads neither SQLAlchemy
nor torch: ``crx --help`` and a script that only reads a schema stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crx.registry.api import Registry
    from crx.registry.errors import CrxError

__all__ = ["CrxError", "Registry", "interop"]

_LAZY = {"Registry": "crx.registry.api", "CrxError": "crx.registry.errors"}
# Modules under a short name: ``crx.interop.from_repeng(...)`` (peers' vectors, numpy only).
_MODULES = {"interop": "crx.registry.interop"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name) or _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'crx' has no attribute {name!r}")
    import importlib

    imported = importlib.import_module(module)
    value = imported if name in _MODULES else getattr(imported, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
