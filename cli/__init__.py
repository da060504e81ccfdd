"""The ``crx`` command: a thin skin over `registry.Registry` (parse, call, render)."""
