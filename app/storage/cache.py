"""A machine's local copies of remote objects, keyed by their sha256: bounded, least recently used first out.

A worker trains from a file and a generation server loads one, so a remote corpus or checkpoint is
fetched once into `<data dir>/cache/<sha256>`, its digest checked while it streams in (a copy that does
not match its row is refused, never used), and then reused by every job and model on the machine.
Each use touches the file's mtime; past CHARRNN_CACHE_BYTES the oldest go. The files are immutable
(their name is their content), so processes sharing the folder never see one change.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path

from app.storage.base import Store

TMP_PREFIX = ".fetch-"
STALE_TMP_SECONDS = 3600.0


class ObjectCache:
    def __init__(self, directory: Path, max_bytes: int):
        self.directory, self.max_bytes = Path(directory), max_bytes

    def path(self, store: Store, key: str, *, sha256: str, size: int | None = None) -> Path:
        """A local file with the object's bytes: in place for the data directory, else a checked copy."""
        if store.local_root is not None:
            return store.local_root / key  # readers check it as they always have
        cached = self.directory / sha256
        with contextlib.suppress(FileNotFoundError):
            os.utime(cached)  # used now: the last to be evicted
            return cached
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f"{TMP_PREFIX}{secrets.token_hex(6)}"
        try:
            with open(tmp, "wb") as out:
                store.fetch(key, out, sha256=sha256, size=size)
            os.replace(tmp, cached)
        finally:
            tmp.unlink(missing_ok=True)
        self.evict(keep=cached)
        return cached

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Remove the least recently used files until the cache is within its bound; returns them."""
        entries = []
        for path in self.directory.iterdir():
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                if path.name.startswith(TMP_PREFIX):
                    if time.time() - stat.st_mtime > STALE_TMP_SECONDS:  # a killed fetch's leftover
                        path.unlink(missing_ok=True)
                    continue
                entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        removed = []
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)  # a process reading it keeps its open file
            total -= size
            removed.append(path)
        return removed
