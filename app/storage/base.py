"""The storage interface: where corpora and training runs keep their bytes, by key.

Keys are relative paths (`corpora/<sha256>.txt`, `runs/<job id>/checkpoints/step-00000020.safetensors`):
the same strings the database stores in `corpora.path` and `checkpoints.path`. Two implementations:
the data directory (local.py, the default) and an S3-compatible bucket (s3.py, CHARRNN_STORAGE_URL).

The rules every implementation keeps (tests/storage/test_contract.py checks them on both):
- `put_file` is atomic: a reader sees the whole object or none (a kill mid-put leaves nothing visible);
- nothing is held whole in memory: puts read from a file, reads stream in chunks;
- store failures raise StoreError (503) or StoreFull (507), naming the store and what to check, never a
  credential; a missing object is ObjectMissing.

An object counts only once the database row that names it (with its size and sha256) has committed;
an object no row claims is an orphan, swept by app/storage/sweep.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


class StoreError(Exception):
    """The store cannot be used right now (unreachable, credentials denied, bucket missing): 503."""

    status = 503

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class StoreFull(StoreError):
    """The store has no room (a full disk, a bucket quota): 507."""

    status = 507


class ObjectMissing(Exception):
    """No object under that key."""


class CorruptObject(Exception):
    """What was fetched does not match the size and sha256 its row recorded."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float  # seconds since the epoch


def check_key(key: str) -> str:
    """Keys come from our own rows, but a key must never climb out of the store's root."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a storage key: {key!r}")
    return key


class Store:
    """See the module docstring. `describe` names the store in messages (no credentials, ever)."""

    describe: str = "the store"
    # The folder whose files *are* the objects (the data directory), or None for a remote store: readers
    # then open files in place instead of fetching a copy into the cache.
    local_root: Path | None = None

    def put_file(self, key: str, src: Path, *, move: bool = False) -> None:
        """Store the file at `src` under `key`, atomically; `move` lets a local store rename it in."""
        raise NotImplementedError

    def put_bytes(self, key: str, data: bytes) -> None:
        """A small object (a JSON record), atomically."""
        raise NotImplementedError

    def iter_bytes(self, key: str, chunk: int = CHUNK) -> Iterator[bytes]:
        """The object's bytes, streamed in chunks; ObjectMissing if there is none."""
        raise NotImplementedError

    def size(self, key: str) -> int | None:
        """The object's size, or None when there is no such object."""
        raise NotImplementedError

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`."""
        raise NotImplementedError

    def delete(self, keys: Iterable[str]) -> None:
        """Remove these objects; a missing one is no error."""
        raise NotImplementedError

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under `prefix` (a folder: ends with '/')."""
        self.delete([info.key for info in self.list(prefix)])

    def move(self, src: str, dst: str) -> None:
        """Rename an object (a server-side copy and delete on S3); ObjectMissing if `src` is gone."""
        raise NotImplementedError

    def check_writable(self) -> None:
        """Write, read back and delete a probe object; StoreError saying why not."""
        raise NotImplementedError

    def abort_stale_uploads(self, older_than: float) -> int:
        """Discard invisible leftovers of interrupted uploads (S3 multipart parts); how many."""
        return 0

    # -- built on the above -------------------------------------------------------------------------

    def get_bytes(self, key: str) -> bytes:
        """A small object whole (JSON records only: corpora and checkpoints are streamed)."""
        return b"".join(self.iter_bytes(key))

    def fetch(self, key: str, out: BinaryIO, *, sha256: str | None = None, size: int | None = None) -> str:
        """Stream the object into `out`; returns its sha256, CorruptObject if it differs from what is given."""
        digest, written = hashlib.sha256(), 0
        for chunk in self.iter_bytes(key):
            digest.update(chunk)
            written += len(chunk)
            out.write(chunk)
        actual = digest.hexdigest()
        if (size is not None and written != size) or (sha256 is not None and actual != sha256):
            raise CorruptObject(
                f"{key} in {self.describe} has {written} bytes and sha256 {actual[:12]}..., not the "
                f"{size if size is not None else '?'} bytes and sha256 {(sha256 or '?')[:12]}... its record holds"
            )
        return actual
