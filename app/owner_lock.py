"""One owner's check-then-write under a lock held by every API process on the database.

A per-owner limit is a count followed by an insert; two API processes doing both at once would each see
room for one more. On SQLite the transaction's write lock (BEGIN IMMEDIATE, app/db.py) already runs them
one after the other; on PostgreSQL a transaction-scoped advisory lock keyed by the limit and the owner does.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session


def lock_owner(session: Session, *, owner: str, limit: str) -> None:
    """Hold, until this transaction ends, the lock on `owner`'s count of `limit` (e.g. "jobs", "bytes")."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"{limit}:{owner}"})
    else:
        session.connection()  # SQLite: the first statement takes the database's one write lock
