"""Alembic runs against the service's own engine, so migrations and the app agree on the database."""

from __future__ import annotations

import app.models  # noqa: F401  (registers every table on Base.metadata)
from alembic import context
from app.db import Base, get_engine

target_metadata = Base.metadata


def run_migrations_online() -> None:
    with get_engine().connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `charrnn db upgrade`")
run_migrations_online()
