"""Models as crx knows them before any weight is loaded: their facts, and pulling real ones.

- `facts`: a model's architecture facts and hashes, read from its config or GGUF metadata;
- `catalogue`: the real models crx can pull from PyPI packages, and where they go;
- `pull`: download, check, assemble and convert one of them.
"""
