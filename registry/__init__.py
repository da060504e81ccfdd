"""crx: a registry for concept vectors, and the ConTrans engine that transplants them.

``from registry import Registry`` is the Python API; the ``crx`` command is a thin skin over it.
"""

from registry.api import Registry
from registry.errors import CrxError

__all__ = ["CrxError", "Registry"]
