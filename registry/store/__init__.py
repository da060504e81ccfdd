"""Content-addressed blob store over fsspec, and the safetensors encoding of tensors."""

from crx.registry.store.objects import BlobStatus, ObjectStore, sha256_hex

__all__ = ["BlobStatus", "ObjectStore", "sha256_hex"]
