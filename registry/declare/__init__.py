"""Declarative catalogues: spec files that describe models, concepts, maps, transplants and
evaluations, and the reconciliation that makes the registry match them.

- `specfile`: read and validate spec files into `crx.schemas.spec.CatalogSpec` (`load_specs`);
- `snapshot`, `reconcile`: ``crx diff``, a pure function of the specs and one `Snapshot` of
  the registry read in one transaction;
- `saved`: diffs saved with ``crx diff -o`` and the freshness checks before applying one;
- `compute`, `write`, `apply`: ``crx apply``, computing first, then one write transaction;
- `prune`: what ``--prune`` deletes with a model or a concept.
"""

from crx.registry.declare.specfile import LoadedSpecs, find_spec_files, load_specs

__all__ = ["LoadedSpecs", "find_spec_files", "load_specs"]
