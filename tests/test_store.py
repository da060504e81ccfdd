"""The content-addressed store on every backend (file, memory, moto S3), and tensor encoding.

No mocks: blobs are written to a real folder, fsspec's in-process memory filesystem, and moto's
S3 server over HTTP; corruption is made by overwriting bytes through the filesystem itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from crx.registry.errors import BlobCorrupt, BlobMissing, InvalidInput, StoreUnavailable
from crx.registry.store import BlobStatus, ObjectStore, sha256_hex, tensors
from tests.servers import free_port


@pytest.fixture
def store(store_url: str) -> ObjectStore:
    created = ObjectStore(store_url)
    created.create()
    return created


def _overwrite(store: ObjectStore, oid: str, data: bytes) -> None:
    """Replace a stored blob's bytes behind the store's back (simulated bit rot)."""
    path = store.path(oid)
    if store.is_local:
        os.chmod(path, 0o644)
        Path(path).write_bytes(data)
    else:
        store.fs.pipe_file(path, data)


def _stamp(store: ObjectStore, oid: str) -> object:
    """When the blob was last written, as the backend records it."""
    path = store.path(oid)
    if store.is_local:
        return os.stat(path).st_mtime_ns
    info = store.fs.info(path)
    return info.get("created") or info.get("LastModified")


# -- addressing ----------------------------------------------------------------------------


def test_oid_is_sha256_of_the_stored_bytes(store: ObjectStore) -> None:
    data = b"\x00\x01 some bytes \xff" * 100
    oid = store.put(data)
    assert oid == hashlib.sha256(data).hexdigest() == sha256_hex(data)
    assert store.get(oid) == data
    assert store.put(b"") == hashlib.sha256(b"").hexdigest()
    assert store.get(hashlib.sha256(b"").hexdigest()) == b""


def test_blob_path_is_two_level_fanout(store: ObjectStore) -> None:
    oid = store.put(b"layout")
    assert store.path(oid) == f"{store.root}/{oid[:2]}/{oid[2:]}"
    # The bytes really sit there, read through the filesystem, not through the store.
    assert store.fs.cat_file(f"{store.root}/{oid[:2]}/{oid[2:]}") == b"layout"
    with pytest.raises(ValueError, match="not an oid"):
        store.path("../../etc/passwd")


def test_put_is_idempotent_and_does_not_rewrite(store: ObjectStore) -> None:
    data = b"write me once"
    oid = store.put(data)
    if store.is_local:
        os.utime(store.path(oid), ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    else:
        # memory:// stamps creation to the microsecond, S3's LastModified to the second.
        time.sleep(0.05 if "memory" in store.fs.protocol else 1.1)
    before = _stamp(store, oid)
    assert before is not None
    assert store.put(data) == oid
    assert _stamp(store, oid) == before
    assert list(store.iter_oids()) == [oid]
    assert store.get(oid) == data


# -- local specifics -----------------------------------------------------------------------


def test_local_blobs_are_read_only_and_leave_no_temp_files(tmp_path: Path) -> None:
    store = ObjectStore(f"file://{tmp_path / 'store'}")
    store.create()
    oids = [store.put(f"blob {i}".encode()) for i in range(5)]
    for oid in oids:
        mode = stat.S_IMODE(os.stat(store.path(oid)).st_mode)
        assert mode == 0o400, oct(mode)  # read-only, and the owner's only
        folder_mode = stat.S_IMODE(os.stat(Path(store.path(oid)).parent).st_mode)
        assert folder_mode == 0o700, oct(folder_mode)
    every_file = sorted(
        str(p.relative_to(tmp_path / "store")) for p in (tmp_path / "store").rglob("*")
    )
    expected = sorted({oid[:2] for oid in oids} | {f"{oid[:2]}/{oid[2:]}" for oid in oids})
    assert every_file == expected  # no .tmp-* leftovers, nothing else


def test_plain_path_and_file_url_are_the_same_store(tmp_path: Path) -> None:
    plain = ObjectStore(str(tmp_path / "s"))
    plain.create()
    oid = plain.put(b"same place")
    assert ObjectStore(f"file://{tmp_path / 's'}").get(oid) == b"same place"
    assert plain.is_local


# -- failures ------------------------------------------------------------------------------


def test_get_of_a_missing_oid_raises_blob_missing(store: ObjectStore) -> None:
    absent = sha256_hex(b"never stored")
    with pytest.raises(BlobMissing) as caught:
        store.get(absent)
    assert caught.value.oid == absent
    assert absent in str(caught.value)
    assert store.status(absent) is BlobStatus.MISSING
    assert not store.exists(absent)


def test_corrupt_blob_raises_blob_corrupt_and_status_says_so(store: ObjectStore) -> None:
    good = store.put(b"a healthy blob")
    oid = store.put(b"the original bytes")
    _overwrite(store, oid, b"the original bytez")
    with pytest.raises(BlobCorrupt) as caught:
        store.get(oid)
    assert caught.value.oid == oid
    assert caught.value.actual == sha256_hex(b"the original bytez")
    assert store.status(oid) is BlobStatus.CORRUPT
    assert store.status(good) is BlobStatus.OK
    # Unverified reads hand back what is there; verified reads never do.
    assert store.get(oid, verify=False) == b"the original bytez"


def test_remove_deletes_and_is_idempotent(store: ObjectStore) -> None:
    keep = store.put(b"keep")
    drop = store.put(b"drop")
    store.remove(drop)
    store.remove(drop)
    assert not store.exists(drop)
    assert store.exists(keep)
    assert list(store.iter_oids()) == [keep]


def test_iter_oids_lists_exactly_the_stored_blobs(store: ObjectStore) -> None:
    oids = {store.put(f"item {i}".encode()) for i in range(12)}
    some = sorted(oids)[0]
    # Strays that are not blobs: a temp file, a file at the root, a folder with a bad name.
    strays = [
        f"{store.root}/{some[:2]}/.tmp-abc-{some[:8]}",
        f"{store.root}/README",
        f"{store.root}/zz/not-an-oid",
        f"{store.root}/{some[:2]}/{some[2:-1]}",
    ]
    for stray in strays:
        if store.is_local:
            Path(stray).parent.mkdir(parents=True, exist_ok=True)
            Path(stray).write_bytes(b"stray")
        else:
            store.fs.pipe_file(stray, b"stray")
    listed = list(store.iter_oids())
    assert listed == sorted(oids)


def test_an_uncreated_store_lists_nothing(store_url: str) -> None:
    assert list(ObjectStore(store_url).iter_oids()) == []


def test_create_is_idempotent(store: ObjectStore) -> None:
    oid = store.put(b"survives a second create")
    store.create()
    store.check_reachable()
    assert store.get(oid) == b"survives a second create"


def test_missing_local_folder_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="does not exist"):
        ObjectStore(str(tmp_path / "nowhere")).check_reachable()


def test_unreachable_s3_endpoint_is_store_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # bound then released: nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # botocore's default retries take ~35 s to give up on a refused port; one attempt is
    # enough to show which error comes out.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = ObjectStore("s3://crx-unreachable/prefix")
    calls = {
        "create": store.create,
        "check_reachable": store.check_reachable,
        "put": lambda: store.put(b"x"),
        "get": lambda: store.get(sha256_hex(b"x")),
        "exists": lambda: store.exists(sha256_hex(b"x")),
        "iter_oids": lambda: list(store.iter_oids()),
    }
    for name, call in calls.items():
        with pytest.raises(StoreUnavailable) as caught:
            call()
        message = str(caught.value)
        assert message.startswith("cannot use the store s3://crx-unreachable/prefix: "), name
        assert str(port) in message, name
        assert caught.value.__cause__ is None, name
        assert caught.value.__suppress_context__, name


# -- tensor encoding -----------------------------------------------------------------------


def _header(data: bytes) -> dict:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length])


def test_tensor_encoding_is_deterministic_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "W": rng.standard_normal((5, 3)).astype(np.float32),
        "b": rng.standard_normal(5).astype(np.float64),
        "half": rng.standard_normal((2, 2)).astype(np.float16),
        "idx": np.arange(7, dtype=np.int64),
    }
    forward = tensors.encode(arrays)
    backward = tensors.encode(dict(reversed(list(arrays.items()))))
    assert forward == backward
    assert sha256_hex(forward) == sha256_hex(backward)
    # A non-contiguous view encodes like its contiguous copy.
    base = rng.standard_normal((3, 5)).astype(np.float32)
    assert tensors.encode({"W": base.T}) == tensors.encode({"W": np.ascontiguousarray(base.T)})
    # No header metadata: that is what made oids unstable.
    assert "__metadata__" not in _header(forward)
    decoded = tensors.decode(forward)
    assert set(decoded) == set(arrays)
    for name, array in arrays.items():
        assert decoded[name].dtype == array.dtype
        np.testing.assert_array_equal(decoded[name], array)
    # Different values give a different oid.
    changed = dict(arrays, W=arrays["W"] + 1)
    assert sha256_hex(tensors.encode(changed)) != sha256_hex(forward)


def _write_bf16_safetensors(path: Path, named: dict[str, np.ndarray]) -> None:
    """Write a safetensors file with BF16 tensors by hand (the format: u64 header size, JSON
    header, then the raw little-endian data). Values must be exact in bfloat16."""
    header: dict[str, dict] = {}
    body = b""
    for name, array in named.items():
        as_f32 = np.ascontiguousarray(array, dtype="<f4")
        bits = (as_f32.view("<u4") >> 16).astype("<u2")
        assert np.array_equal((bits.astype(np.uint32) << 16).view(np.float32), as_f32)
        raw = bits.tobytes()
        header[name] = {
            "dtype": "BF16",
            "shape": list(array.shape),
            "data_offsets": [len(body), len(body) + len(raw)],
        }
        body += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)


def test_bfloat16_file_is_widened_to_float32(tmp_path: Path) -> None:
    values = np.array([[1.5, -2.0, 0.15625, 299008.0], [0.0, -0.5, 65280.0, 1e-3]], np.float32)
    values[1, 3] = np.float32(0.0009994507)  # 1e-3 rounded to bfloat16
    single = np.array([7.0, -0.25], np.float32)
    path = tmp_path / "bf16.safetensors"
    _write_bf16_safetensors(path, {"vec": values, "one": single})
    read = tensors.read_file(path)
    assert set(read) == {"vec", "one"}
    assert read["vec"].dtype == np.float32
    assert read["vec"].shape == (2, 4)
    np.testing.assert_array_equal(read["vec"], values)
    np.testing.assert_array_equal(read["one"], single)


def test_bfloat16_file_written_by_torch_reads_the_same(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    source = torch.tensor([[0.1, -1.7, 3.14159], [1e4, -1e-4, 0.0]], dtype=torch.float32)
    path = tmp_path / "torch_bf16.safetensors"
    save_file({"direction": source.to(torch.bfloat16), "extra": source}, str(path))
    read = tensors.read_file(path)
    expected = source.to(torch.bfloat16).to(torch.float32).numpy()
    assert read["direction"].dtype == np.float32
    np.testing.assert_array_equal(read["direction"], expected)
    np.testing.assert_array_equal(read["extra"], source.numpy())


def test_read_file_refuses_bad_files_with_invalid_input(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file at all")
    truncated = tmp_path / "truncated.safetensors"
    _write_bf16_safetensors(truncated, {"v": np.ones((4, 4), np.float32)})
    truncated.write_bytes(truncated.read_bytes()[:-6])
    for path in (garbage, truncated, tmp_path / "absent.safetensors"):
        with pytest.raises(InvalidInput, match=path.name):
            tensors.read_file(path)


def test_gc_removes_stale_temporary_files_of_killed_writers(tmp_path) -> None:
    import os

    from crx.registry import Registry

    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}", str(tmp_path / "store"))
    reg.init()
    kept = reg.store.put(b"unreferenced but young")
    folder = tmp_path / "store" / "ab"
    folder.mkdir()
    stale = folder / ".tmp-xyz-abcdef12"
    stale.write_bytes(b"half a blob")
    os.utime(stale, (1_000_000, 1_000_000))
    fresh = folder / ".tmp-new-abcdef12"
    fresh.write_bytes(b"being written")

    listed = reg.gc_store(dry_run=True, grace_seconds=3600)
    assert (listed.stale_temporary_files, listed.unreferenced) == (1, [])
    assert stale.exists()

    done = reg.gc_store(dry_run=False, grace_seconds=3600)
    assert done.stale_temporary_files == 1
    assert not stale.exists()
    assert fresh.exists()
    assert reg.store.exists(kept)


def test_the_embedded_registry_is_its_owners_only() -> None:
    """``registry.db``, its folder and the store are created owner-only, whatever the umask."""
    from crx import Registry

    old = os.umask(0o022)
    try:
        with Registry() as reg:  # CRX_HOME is set per test by conftest
            assert reg.location.database_is_default
            reg.list_models()  # first use creates everything
    finally:
        os.umask(old)
    home = Path(os.environ["CRX_HOME"])
    modes = {
        name: stat.S_IMODE(os.stat(home / name).st_mode) for name in ("", "registry.db", "store")
    }
    assert modes == {"": 0o700, "registry.db": 0o600, "store": 0o700}
