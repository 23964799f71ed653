"""Riding out a database that is briefly away (locked, full, restarting, read-only).

A worker must not die of one failed write: it keeps training, keeps the reports it could not write,
and tries again with a growing delay. One log line when an outage starts and one when it ends,
rather than a traceback per try. Readiness stays honest by itself: /readyz counts a worker by the
last heartbeat it actually wrote, which ages past the lease while the writes fail.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy.exc import DBAPIError

log = logging.getLogger("charrnn.worker")

# What counts as the database being away, rather than a bug: every error the driver raised
# (OperationalError - locked, disk full, connection lost - and its siblings).
DATABASE_ERRORS = (DBAPIError,)

FIRST_DELAY, MAX_DELAY = 0.5, 8.0


class Outage:
    """Backoff and logging for one kind of write (the loop's, or a job's)."""

    def __init__(self, what: str):
        self.what = what
        self.since: float | None = None
        self.delay = FIRST_DELAY
        self.retry_at = 0.0

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def may_try(self) -> bool:
        return time.monotonic() >= self.retry_at

    def failed(self, exc: Exception) -> float:
        """Note a failed try; returns how long to wait before the next."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
            self.delay = FIRST_DELAY
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("%s: the database is unavailable (%s); retrying with backoff", self.what, first_line)
        else:
            self.delay = min(MAX_DELAY, self.delay * 2)
        self.retry_at = now + self.delay
        return self.delay

    def succeeded(self) -> None:
        if self.since is not None:
            log.warning("%s: the database is back after %.1fs", self.what, time.monotonic() - self.since)
        self.since, self.delay, self.retry_at = None, FIRST_DELAY, 0.0
