"""Declarative catalogues: spec files that describe models, concepts, maps, transplants and
evaluations, read into `crx.schemas.spec.CatalogSpec` objects.

This package only reads and validates spec files (`load_specs`); it never writes the registry.
"""

from crx.registry.declare.specfile import LoadedSpecs, find_spec_files, load_specs

__all__ = ["LoadedSpecs", "find_spec_files", "load_specs"]
