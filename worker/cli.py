"""`charrnn`, the one entry point: the API's commands, the engine's, and the worker's.

It lives here because it is the one place that needs all three; each half registers its own commands
and imports torch only inside the command that runs it, so `charrnn api` works where torch is absent.
"""

from __future__ import annotations

import typer

from app.cli import Host, Port, ensure_key, register_api_commands, run_api, upgrade_database
from worker.engine.cli import register_engine_commands

cli = typer.Typer(
    help="charrnn: train character-level RNN language models and generate text from them.",
    no_args_is_help=True,
    add_completion=False,
)
register_api_commands(cli)
register_engine_commands(cli)


@cli.command()
def worker():
    """Run one worker: trains queued jobs and serves generation for the API."""
    from worker.service.runner import main

    upgrade_database()
    main()


@cli.command()
def serve(host: Host = "127.0.0.1", port: Port = 8000):
    """Everything on one machine: migrate, then the API and one worker (a supervised child process)."""
    from worker.service.embedded import EmbeddedWorker

    upgrade_database()
    ensure_key()
    with EmbeddedWorker():
        run_api(host, port)  # returns on Ctrl-C / SIGTERM


if __name__ == "__main__":
    cli()
