"""A throwaway PostgreSQL database on the local server (127.0.0.1:5432, trust auth), dropped after use."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

ADMIN_DSN = os.environ.get("CHARRNN_TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


def postgres_available() -> str | None:
    """None if the server answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(ADMIN_DSN, connect_timeout=3):
            return None
    except Exception as exc:  # any failure to connect means: no server here
        return f"PostgreSQL is not reachable at {ADMIN_DSN!r}: {exc}"


def require_postgres() -> None:
    """CI has the server, so there a missing one fails the test; elsewhere the test skips."""
    import pytest

    why_not = postgres_available()
    if why_not:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(why_not)


@contextmanager
def throwaway_database() -> Iterator[str]:
    """Create a fresh database and yield its SQLAlchemy URL; drop it (and its connections) afterwards."""
    import psycopg

    name = f"charrnn_test_{uuid.uuid4().hex[:12]}"
    params = dict(part.split("=", 1) for part in ADMIN_DSN.split())
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        user = params.get("user", "postgres")
        yield f"postgresql+psycopg://{user}@{params.get('host', '127.0.0.1')}:{params.get('port', '5432')}/{name}"
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
