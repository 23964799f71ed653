"""The data directory as a store: each key is a file under it (the default, and what `make serve` uses).

Writes go to a temporary file in the target's folder and are renamed over it, so a reader (or a kill -9)
never meets half an object. A full disk raises StoreFull.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from app.storage.base import CHUNK, ObjectInfo, ObjectMissing, Store, StoreError, StoreFull, check_key

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class LocalStore(Store):
    def __init__(self, root: Path):
        self.root = Path(root)
        self.local_root = self.root
        self.describe = "the data directory (CHARRNN_DATA_DIR)"

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _failed(self, exc: OSError, doing: str) -> StoreError:
        if exc.errno in FULL_ERRNOS:
            return StoreFull(f"{self.describe} is full: {doing} failed; free space on its disk")
        return StoreError(f"{self.describe}: {doing} failed ({exc.strerror}); check that the folder is writable")

    def put_file(self, key: str, src: Path, *, move: bool = False) -> None:
        dst = self.path(key)
        if Path(src).resolve() == dst.resolve():
            return  # written in place (a run directory inside the data directory)
        tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.tmp")
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            if move:
                os.replace(src, dst)  # same filesystem: atomic, nothing copied
                return
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        except OSError as exc:
            raise self._failed(exc, f"storing {key}") from None
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        dst = self.path(key)
        tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.tmp")
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dst)
        except OSError as exc:
            raise self._failed(exc, f"storing {key}") from None
        finally:
            tmp.unlink(missing_ok=True)

    def iter_bytes(self, key: str, chunk: int = CHUNK) -> Iterator[bytes]:
        try:
            f = open(self.path(key), "rb")  # noqa: SIM115  (closed below, also when the caller stops early)
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        with f:
            while data := f.read(chunk):
                yield data

    def size(self, key: str) -> int | None:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return
        for path in base.rglob("*"):
            key = path.relative_to(self.root).as_posix()
            if not key.startswith(prefix):
                continue
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                if path.is_file():
                    yield ObjectInfo(key, stat.st_size, stat.st_mtime)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            try:
                self.path(key).unlink(missing_ok=True)
            except OSError as exc:
                raise self._failed(exc, f"deleting {key}") from None

    def delete_prefix(self, prefix: str) -> None:
        folder = self.root / check_key(prefix.rstrip("/"))
        if prefix.endswith("/") and folder.is_dir():
            # Renamed first, so that a half-removed folder never stands under its name.
            doomed = folder.with_name(f".deleted-{secrets.token_hex(4)}-{folder.name}")
            try:
                os.replace(folder, doomed)
            except OSError:
                doomed = folder
            shutil.rmtree(doomed, ignore_errors=True)
            return
        super().delete_prefix(prefix)

    def move(self, src: str, dst: str) -> None:
        try:
            self.path(dst).parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path(src), self.path(dst))
        except FileNotFoundError:
            raise ObjectMissing(src) from None
        except OSError as exc:
            raise self._failed(exc, f"moving {src}") from None

    def check_writable(self) -> None:
        probe = f".write-check-{secrets.token_hex(4)}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._failed(exc, "making the folder") from None
        self.put_bytes(probe, b"ok")
        self.delete([probe])
