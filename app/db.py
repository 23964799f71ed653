"""The database in one place: engine, sessions, the declarative base and a UTC timestamp type.

SQLite is the default (WAL, busy_timeout, and BEGIN IMMEDIATE so that a transaction that reads and
then writes waits for the lock instead of failing with "database is locked"); any SQLAlchemy URL works,
and nothing here or in the queries is SQLite-only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache

from sqlalchemy import DateTime, Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from app.settings import get_settings


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Stored as naive UTC (SQLite has no time zones), always handed back time-zone aware."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    pass


def make_engine(url: str, busy_timeout_seconds: float = 30.0) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": busy_timeout_seconds, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_seconds * 1000)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn):
            # Writers take the write lock up front (no deadlock upgrading a read lock); readers that
            # say so (read_session) don't, so they never queue behind the workers' progress writes.
            read_only = conn.get_execution_options().get("read_only", False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


@lru_cache
def get_engine() -> Engine:
    settings = get_settings()
    if settings.sqlalchemy_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return make_engine(settings.sqlalchemy_url, settings.sqlite_busy_timeout_seconds)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


# Work that must follow the transaction's outcome (removing a file whose row was deleted, putting back
# one moved aside) is queued on the session by the service and run by whoever ends the transaction:
# services never commit or roll back themselves (the request's dependency does, app/deps.py).
_AFTER_COMMIT, _AFTER_ROLLBACK = "charrnn_after_commit", "charrnn_after_rollback"


def after_commit(session: Session, action: Callable[[], None]) -> None:
    """Run `action` once this session's transaction has committed (never if it rolls back)."""
    session.info.setdefault(_AFTER_COMMIT, []).append(action)


def after_rollback(session: Session, action: Callable[[], None]) -> None:
    """Run `action` if this session's transaction rolls back (never if it commits)."""
    session.info.setdefault(_AFTER_ROLLBACK, []).append(action)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    session.info.pop(_AFTER_ROLLBACK, None)
    for action in session.info.pop(_AFTER_COMMIT, ()):
        action()


@event.listens_for(Session, "after_soft_rollback")
def _run_after_rollback(session: Session, previous_transaction) -> None:
    if previous_transaction.parent is not None:  # a savepoint's or a nested rollback: the outer one decides
        return
    session.info.pop(_AFTER_COMMIT, None)
    for action in session.info.pop(_AFTER_ROLLBACK, ()):
        action()


@contextmanager
def write_session() -> Iterator[Session]:
    """A request's transaction: committed once when the body returns, rolled back on any error."""
    with get_sessionmaker()() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def session_scope() -> Iterator[Session]:
    """A short transaction: commit on success, roll back on error."""
    with get_sessionmaker()() as session, session.begin():
        yield session


@contextmanager
def read_session() -> Iterator[Session]:
    """A session for reads only: on SQLite it takes no write lock."""
    with Session(get_engine().execution_options(read_only=True)) as session:
        yield session


def is_postgres() -> bool:
    return get_engine().dialect.name == "postgresql"
