"""A full disk the API can recover from: answers that say what to delete, and room kept for the deletes.

When the data directory's filesystem is full, SQLite cannot write, not even the few pages that deleting a
row takes, so nobody could free space through the API. A small reserve file in the data directory holds
some room back: a DELETE that finds the disk full gives it back first, and the reserve is made again once
there is room to spare. Every other write on a full disk answers 507 naming what to delete.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from app.settings import Settings, get_settings

log = logging.getLogger("charrnn.api")

RESERVE_NAME = ".disk-reserve"
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# PostgreSQL's SQLSTATE for "disk full" (class 53: insufficient resources).
POSTGRES_DISK_FULL = "53100"
# How often the API looks whether the reserve can be made again: a statvfs, but not on every request.
RECHECK_SECONDS = 5.0
RETRY_AFTER_SECONDS = "60"
PARTIAL_MIN_AGE_SECONDS = 60.0
FULL_DETAIL = (
    "the server's disk is full (the filesystem of its data directory): nothing was stored. Free space by "
    "deleting what you no longer need: corpora (DELETE /corpora/{id}), ended jobs with their checkpoints "
    "(DELETE /jobs/{id}) or single checkpoints (DELETE /checkpoints/{id}); deletes work even now. Or ask the "
    "operator to free space in the data directory"
)


def is_disk_full(exc: BaseException) -> bool:
    """A database or file error that means the disk (or a quota) is full, whatever wraps it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if isinstance(exc, sqlite3.Error) and (
            getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)
        ):
            return True
        if getattr(exc, "sqlstate", None) == POSTGRES_DISK_FULL or getattr(exc, "pgcode", None) == POSTGRES_DISK_FULL:
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__
    return False


def free_bytes(directory: Path) -> int:
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


class Reserve:
    """The reserve file of one data directory, shared by every API process that serves it."""

    def __init__(self, settings: Settings):
        self.path = settings.data_dir / RESERVE_NAME
        self.size = settings.disk_reserve_bytes
        self._lock = threading.Lock()

    def give_back(self) -> bool:
        """Delete the reserve so that a delete can write; True if there was one."""
        with self._lock:
            try:
                self.path.unlink()
            except FileNotFoundError:
                return False
        log.warning("the disk is full: gave back the %d-byte reserve to let a delete through", self.size)
        return True

    def remake(self) -> bool:
        """Make the reserve again, only with room to spare (twice its size free): True if one was made."""
        if self.size <= 0 or self.path.exists():
            return False
        with self._lock:
            if not self.path.parent.is_dir() or free_bytes(self.path.parent) < 2 * self.size:
                return False
            self._sweep_partials()
            # Written whole under another name first, so that no process ever sees a reserve smaller than it is.
            partial = self.path.with_name(f"{RESERVE_NAME}-{secrets.token_hex(4)}.tmp")
            try:
                with open(partial, "wb") as f:
                    os.posix_fallocate(f.fileno(), 0, self.size)  # real blocks, not a sparse file
                os.replace(partial, self.path)
            except OSError as exc:
                partial.unlink(missing_ok=True)
                if exc.errno not in DISK_FULL_ERRNOS:
                    log.warning("could not make the disk reserve %s: %s", self.path.name, exc)
                return False
        return True

    def _sweep_partials(self) -> None:
        """A partial reserve that a killed process left (one being made lives for milliseconds)."""
        for leftover in self.path.parent.glob(f"{RESERVE_NAME}-*.tmp"):
            with contextlib.suppress(OSError):
                if time.time() - leftover.stat().st_mtime > PARTIAL_MIN_AGE_SECONDS:
                    leftover.unlink()

    def disk_is_full(self) -> bool:
        return self.path.parent.is_dir() and free_bytes(self.path.parent) < max(self.size, 1)


class KeepDeletesWorking:
    """ASGI middleware: a DELETE on a full disk gets the reserve's room; the reserve comes back when it can."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.reserve: Reserve | None = None
        self.checked_at = 0.0

    def _reserve(self) -> Reserve:
        settings = get_settings()
        if self.reserve is None or self.reserve.path.parent != settings.data_dir:
            self.reserve = Reserve(settings)
        return self.reserve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        reserve = self._reserve()
        if scope["method"] == "DELETE" and await run_in_threadpool(reserve.disk_is_full):
            await run_in_threadpool(reserve.give_back)
        try:
            await self.app(scope, receive, send)
        finally:
            if time.monotonic() - self.checked_at >= RECHECK_SECONDS:
                self.checked_at = time.monotonic()
                await run_in_threadpool(reserve.remake)
