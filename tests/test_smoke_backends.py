"""Each backend fixture gives a working registry and store (the base the other tests stand on)."""

from __future__ import annotations

import numpy as np

from crx.registry import Registry
from crx.registry.store import ObjectStore


def test_registry_roundtrip_on_each_database(
    registry: Registry, tiny_model_dir, pairs_file
) -> None:
    registry.register_model("tiny", str(tiny_model_dir))
    version = registry.register_concept("joy", pairs_file).record
    array = np.arange(4 * 32, dtype=np.float32).reshape(4, 32)
    vector = registry.save_vector(version.ref, "tiny", array, origin="extracted").record
    np.testing.assert_array_equal(registry.load_vector(vector.id), array)


def test_store_roundtrip_on_each_backend(store_url: str) -> None:
    store = ObjectStore(store_url)
    store.create()
    oid = store.put(b"hello")
    assert store.get(oid) == b"hello"
    assert list(store.iter_oids()) == [oid]
