"""Content-addressed blobs over fsspec: local folders, ``memory://`` and ``s3://``.

``oid`` = sha256 of exactly the stored bytes; a blob lives at ``<root>/oid[:2]/oid[2:]``.
``put`` is idempotent (an existing, intact oid is not written again). On a local disk a blob is
written to a temporary name in its final folder, flushed, then renamed into place, so no reader
ever sees half a blob, and it is made read-only for its owner only. Object stores (S3) make a
PUT visible whole or not at all, so they are written directly. Reads re-hash by default: a
corrupt blob is an error, not a wrong tensor.

S3 endpoints: s3fs reads credentials the usual boto ways; ``AWS_ENDPOINT_URL`` (or
``CRX_S3_ENDPOINT_URL``) points it at MinIO, moto or any S3-protocol server.
"""

from __future__ import annotations

import enum
import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crx.registry.config import redact, scrub
from crx.registry.errors import BlobCorrupt, BlobMissing, StoreUnavailable

OID_LENGTH = 64
# A local store is one user's: folders and blobs are the owner's only (whatever the umask); a
# team shares through PostgreSQL and S3 and their permissions instead.
PRIVATE_FOLDER = 0o700
PRIVATE_BLOB = 0o400
_HEX = frozenset("0123456789abcdef")

if TYPE_CHECKING:
    import fsspec


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_oid(value: str) -> bool:
    return len(value) == OID_LENGTH and set(value) <= _HEX


class BlobStatus(enum.Enum):
    OK = "ok"
    MISSING = "missing"
    CORRUPT = "corrupt"


def _local_root(url: str) -> str | None:
    """The folder of a local store's URL (a path or ``file://``), else None."""
    if "://" not in url or url.startswith("file://"):
        return str(Path(url.removeprefix("file://")).expanduser().resolve())
    return None


def _filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, root path inside it) of a store that is not on the local disk."""
    import fsspec

    protocol = url.split("://", 1)[0]
    options: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        # Other processes write to the same bucket: never answer from a stale listing.
        options["use_listings_cache"] = False
        # Fail in seconds, not minutes, when the endpoint is down.
        options["config_kwargs"] = {
            "retries": {"max_attempts": 2, "mode": "standard"},
            "connect_timeout": 5,
        }
        endpoint = os.environ.get("CRX_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["endpoint_url"] = endpoint
    try:
        fs, root = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as exc:
        raise StoreUnavailable(redact(url), scrub(str(exc), url)) from None
    return fs, root.rstrip("/")


class ObjectStore:
    """Blobs addressed by the sha256 of their bytes, under one fsspec URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.display_url = redact(url)  # safe to show: any password replaced
        # Called before a blob that is not yet stored is written: the catalogue sets it to
        # refuse a writer its database will refuse anyway (a read-only role), so a refused
        # command leaves no blob behind (`crx.registry.catalog.service.Catalog`).
        self.before_new_blob: Callable[[], None] | None = None
        local_root = _local_root(url)
        self.is_local = local_root is not None
        if local_root is not None:
            # Local blobs go through os and pathlib; fsspec (~25 ms to import) is loaded only
            # when something asks for `fs`, so `crx show` and `crx list` never import it.
            self.root = local_root
        else:
            self.fs, self.root = _filesystem(url)

    @cached_property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem (on a local store, built on first use)."""
        import fsspec

        return fsspec.filesystem("file")

    def __repr__(self) -> str:
        return f"ObjectStore({redact(self.url)!r})"

    # -- layout -------------------------------------------------------------------------

    def path(self, oid: str) -> str:
        if not is_oid(oid):
            raise ValueError(f"not an oid: {oid!r}")
        return f"{self.root}/{oid[:2]}/{oid[2:]}"

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(self.display_url, scrub(f"{type(exc).__name__}: {exc}", self.url))

    # -- lifecycle ----------------------------------------------------------------------

    def create(self) -> None:
        """Create the store's root (and, on S3, check the bucket can be reached). Idempotent."""
        try:
            if self.is_local:
                Path(self.root).mkdir(mode=PRIVATE_FOLDER, parents=True, exist_ok=True)
            elif self.fs.protocol in ("memory",) or "memory" in self.fs.protocol:
                self.fs.makedirs(self.root, exist_ok=True)
            else:
                bucket = self.root.split("/", 1)[0]
                if not self.fs.exists(bucket):
                    self.fs.mkdir(bucket)
                self.fs.ls(bucket, refresh=True)
        except OSError as exc:
            raise self._unavailable(exc) from None
        except Exception as exc:  # botocore/aiohttp errors are not OSErrors
            raise self._unavailable(exc) from None

    def check_reachable(self) -> None:
        """Raise `StoreUnavailable` unless the store's root can be listed."""
        try:
            if self.is_local:
                if not Path(self.root).is_dir():
                    raise StoreUnavailable(
                        redact(self.url), "the folder does not exist (run crx init)"
                    )
                return
            self.fs.ls(self.root.split("/", 1)[0], refresh=True)
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise self._unavailable(exc) from None

    # -- blobs --------------------------------------------------------------------------

    def exists(self, oid: str) -> bool:
        try:
            if self.is_local:
                return os.path.exists(self.path(oid))
            return bool(self.fs.exists(self.path(oid)))
        except Exception as exc:
            raise self._unavailable(exc) from None

    def age_seconds(self, oid: str) -> float | None:
        """Seconds since blob ``oid`` was written; None when it is gone, infinity when the
        backend records no time for it."""
        try:
            info = self.fs.info(self.path(oid))
        except FileNotFoundError:
            return None
        modified = info.get("mtime") or info.get("LastModified") or info.get("created")
        if modified is None:
            return float("inf")
        stamp = modified.timestamp() if hasattr(modified, "timestamp") else float(modified)
        return time.time() - stamp

    def put(self, data: bytes) -> str:
        """Store ``data`` and return its oid.

        A blob already present is re-verified, not trusted: if its bytes no longer hash to its
        oid it is written again, so registering the same content repairs a corrupt blob.
        """
        oid = sha256_hex(data)
        if self.status(oid) is BlobStatus.OK:
            return oid
        if self.before_new_blob is not None:
            self.before_new_blob()
        self._write(oid, data)
        return oid

    def ensure_present(self, oid: str, data: bytes) -> None:
        """Put ``data`` back under ``oid`` if it is gone (a gc ran between a put and its rows).

        Writers call it inside their write transaction, which a deleting gc excludes (see
        `crx.registry.db.session`), so a row is never committed pointing at a deleted blob.
        """
        if not self.exists(oid):
            self._write(oid, data)

    def _write(self, oid: str, data: bytes) -> None:
        try:
            if self.is_local:
                self._put_local(oid, data)
            else:
                self.fs.pipe_file(self.path(oid), data)
        except Exception as exc:
            raise self._unavailable(exc) from None

    def _put_local(self, oid: str, data: bytes) -> None:
        final = Path(self.path(oid))
        final.parent.mkdir(mode=PRIVATE_FOLDER, parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=final.parent, prefix=".tmp-", suffix=f"-{oid[:8]}")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp, PRIVATE_BLOB)
            os.replace(temp, final)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def get(self, oid: str, *, verify: bool = True) -> bytes:
        """The bytes of ``oid``; raises `BlobMissing`, or `BlobCorrupt` if they do not hash back."""
        try:
            if self.is_local:
                path = self.path(oid)
                # A folder, a FIFO or a device in a blob's place is that blob's problem, and
                # must not be opened (a FIFO would block the read for ever).
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    raise BlobCorrupt(oid, why="it is not a regular file")
                with open(path, "rb") as handle:
                    data = handle.read()
            else:
                data = self.fs.cat_file(self.path(oid))
        except FileNotFoundError:
            raise BlobMissing(oid, redact(self.url)) from None
        except BlobCorrupt:
            raise
        except Exception as exc:
            raise self._unavailable(exc) from None
        if verify:
            actual = sha256_hex(data)
            if actual != oid:
                raise BlobCorrupt(oid, actual)
        return data

    def status(self, oid: str) -> BlobStatus:
        """Whether ``oid`` is present and its bytes still hash to it."""
        try:
            self.get(oid, verify=True)
        except BlobMissing:
            return BlobStatus.MISSING
        except BlobCorrupt:
            return BlobStatus.CORRUPT
        return BlobStatus.OK

    def remove(self, oid: str) -> None:
        """Delete blob ``oid``; on a local disk only a regular file inside the store's folder."""
        try:
            if self.is_local:
                path = Path(self.path(oid))
                if self._inside(path):
                    path.unlink(missing_ok=True)
            else:
                self.fs.rm_file(self.path(oid))
        except FileNotFoundError:
            return
        except Exception as exc:
            raise self._unavailable(exc) from None

    def stale_temporaries(self, older_than_seconds: float) -> list[Path]:
        """Temporary files of local writes that never finished (a killed writer), oldest first."""
        if not self.is_local:
            return []
        cutoff = time.time() - older_than_seconds
        found = []
        for path in self._local_files():
            if not path.name.startswith(".tmp-"):
                continue
            try:
                modified = path.lstat().st_mtime
            except FileNotFoundError:
                # Its writer renamed it into place since the listing (found by
                # tests/test_governance_concurrency.py: gc crashed with a traceback).
                continue
            if modified <= cutoff:
                found.append((modified, path))
        return [path for _, path in sorted(found)]

    def _local_files(self) -> list[Path]:
        """Regular files one shard folder deep, never through a link: a shard folder or a file
        that is a symbolic link (to anywhere) is not the store's."""
        root = Path(self.root)
        if not root.is_dir() or root.is_symlink():
            return []
        files = []
        with os.scandir(root) as shards:
            for shard in shards:
                if len(shard.name) != 2 or not shard.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(shard.path) as entries:
                    files += [Path(e.path) for e in entries if e.is_file(follow_symlinks=False)]
        return files

    def _inside(self, path: Path) -> bool:
        """Whether ``path`` is a regular file (not a link) whose folder is the store's own."""
        try:
            return (
                not path.is_symlink()
                and path.is_file()
                and path.parent.resolve().parent == Path(self.root).resolve()
            )
        except OSError:
            return False

    def iter_oids(self) -> Iterator[str]:
        """Every oid present in the store (temporary files and strays are skipped)."""
        try:
            if self.is_local:
                paths = [str(p) for p in self._local_files()]
            else:
                paths = list(self.fs.find(self.root, maxdepth=2))
        except FileNotFoundError:
            return
        except Exception as exc:
            raise self._unavailable(exc) from None
        for path in sorted(paths):
            prefix, _, name = path.rstrip("/").rpartition("/")
            oid = prefix[-2:] + name
            if prefix[-3:-2] == "/" and is_oid(oid):
                yield oid
