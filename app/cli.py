"""The one entry point, `charrnn`: service commands here, engine commands from worker/engine/cli.py.

Engine commands import torch only when they run, so `charrnn api` works where torch is not installed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Annotated

import typer

db_cli = typer.Typer(help="The database.", no_args_is_help=True)
keys_cli = typer.Typer(help="API keys.", no_args_is_help=True)

Host = Annotated[str, typer.Option(help="address to listen on")]
Port = Annotated[int, typer.Option(help="port to listen on")]


def upgrade_database() -> None:
    from alembic.config import Config

    from alembic import command
    from app.settings import get_settings

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = Config(os.path.join(root, "alembic.ini"))
    config.set_main_option("script_location", os.path.join(root, "alembic"))
    command.upgrade(config, "head")


def require_writable_store(command: str) -> None:
    """Refuse to start, saying why, where the store (CHARRNN_STORAGE_URL, or the data directory) cannot be
    written: otherwise every upload would answer 503 and every job fail at its first checkpoint."""
    from app.settings import get_settings
    from app.storage import StoreError, get_store

    store = get_store(get_settings())
    try:
        store.check_writable()
    except StoreError as exc:
        typer.echo(f"charrnn {command}: cannot write to {store.describe}: {exc.message}", err=True)
        raise typer.Exit(2) from None


def ensure_key() -> None:
    from app.db import session_scope
    from app.keys.service import ensure_bootstrap_key
    from app.settings import get_settings

    with session_scope() as session:
        created = ensure_bootstrap_key(session, key=get_settings().bootstrap_key)
    if created:
        typer.secho("No API key existed, so one was made. It is shown only this once:", fg="yellow", err=True)
        typer.echo(created)


def run_api(host: str, port: int, on_stop_signal: Callable[[], None] | None = None) -> None:
    """Serve the API until SIGTERM/SIGINT; `on_stop_signal` is called as soon as one arrives (before the
    API drains its connections: `charrnn serve` stops its worker meanwhile)."""
    import uvicorn

    from app.logs import setup_logging
    from app.settings import get_settings

    setup_logging(get_settings().log_level)
    # server_header=False: no `Server: uvicorn` telling a prober what to look up. access_log=False: our
    # middleware logs each request (app/ops/middleware.py), with its owner and duration.
    config = uvicorn.Config(
        "app.main:app", host=host, port=port, log_config=None, timeout_graceful_shutdown=5, server_header=False,
        access_log=False,
    )
    server = uvicorn.Server(config)
    if on_stop_signal is not None:
        handle_exit = server.handle_exit

        def stop(sig, frame):
            on_stop_signal()
            handle_exit(sig, frame)

        server.handle_exit = stop
    server.run()
    if not server.started:
        sys.exit(3)  # what uvicorn.run exits with when the app does not start


@db_cli.command("upgrade")
def db_upgrade():
    """Apply the database migrations (Alembic) up to the latest."""
    upgrade_database()
    typer.echo("database is up to date", err=True)


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="the owner: a new key with the same name sees the same data")],
):
    """Make an API key and print it (only this once)."""
    from app.db import session_scope
    from app.keys.service import create_key

    upgrade_database()
    with session_scope() as session:
        record, key = create_key(session, name=name)
    typer.echo(f"created {record.id} for owner {name!r}; the key is shown only now:", err=True)
    typer.echo(key)


@keys_cli.command("list")
def keys_list():
    """List keys (never the keys themselves)."""
    from app.db import session_scope
    from app.keys.service import list_keys

    upgrade_database()
    with session_scope() as session:
        for k in list_keys(session):
            state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
            typer.echo(f"{k.id}\t{k.name}\t{k.prefix}…\t{k.created_at:%Y-%m-%d %H:%M}\t{state}")


@keys_cli.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="the key's id (key_…), from `keys list`")]):
    """Revoke a key: it stops working at once; its owner's data stays."""
    from app.db import session_scope
    from app.keys.service import revoke_key

    with session_scope() as session:
        ok = revoke_key(session, key_id=key_id)
    if not ok:
        typer.secho(f"no active key with id {key_id!r}", fg="red", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}", err=True)


def api(host: Host = "127.0.0.1", port: Port = 8000):
    """Run the HTTP API alone (start workers separately with `charrnn worker`)."""
    require_writable_store("api")
    upgrade_database()
    ensure_key()
    run_api(host, port)


def register_api_commands(cli: typer.Typer) -> None:
    cli.add_typer(db_cli, name="db")
    cli.add_typer(keys_cli, name="keys")
    cli.command()(api)
