"""`charrnn`, the one entry point: the API's commands, the engine's, and the worker's.

It lives here because it is the one place that needs all three; each half registers its own commands
and imports torch only inside the command that runs it, so `charrnn api` works where torch is absent.
"""

from __future__ import annotations

import importlib.util
import signal
import sys

import typer
from pydantic import ValidationError

from app.cli import (
    Host,
    Port,
    ensure_key,
    register_api_commands,
    require_writable_store,
    run_api,
    upgrade_database,
)
from app.settings import Settings
from worker.engine.cli import describe_invalid, register_engine_commands

cli = typer.Typer(
    help="charrnn: train character-level RNN language models and generate text from them.",
    no_args_is_help=True,
    add_completion=False,
    # Errors a person can fix are a line or two naming the option or setting, not a framed panel or a
    # traceback of our own code.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
register_api_commands(cli)
register_engine_commands(cli)


# What the worker half needs beyond the API's dependencies: the `[worker]` extra in pyproject.toml.
WORKER_MODULES = ("torch", "safetensors", "numpy")
INSTALL_HINT = (
    "install the worker's dependencies: pip install -e '.[worker]' "
    "(or: pip install torch==2.13.0 safetensors numpy)"
)


def require_worker_extra(command: str) -> None:
    """Refuse to start, before anything else happens, where the worker half cannot run: otherwise every
    job would be claimed and fail in its training process instead."""
    missing = [name for name in WORKER_MODULES if _find_spec(name) is None]
    if missing:
        print(f"charrnn {command}: {', '.join(missing)} not installed; {INSTALL_HINT}", file=sys.stderr)
        raise typer.Exit(2)


def _find_spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a broken install: as good as missing
        return None


@cli.command()
def worker():
    """Run one worker: trains queued jobs and serves generation for the API."""
    require_worker_extra("worker")
    require_writable_store("worker")
    from worker.service.runner import main

    upgrade_database()
    main()


@cli.command()
def serve(host: Host = "127.0.0.1", port: Port = 8000):
    """Everything on one machine: migrate, then the API and one worker (a supervised child process)."""
    require_worker_extra("serve")
    require_writable_store("serve")
    from worker.service.embedded import EmbeddedWorker

    upgrade_database()
    ensure_key()
    # uvicorn answers SIGTERM/SIGINT by shutting the API down, then raises the signal again under the
    # handlers it found: with the defaults, serve would die there, before its worker had stopped, whose
    # training would carry on unsupervised. With these, serve waits for its worker (which checkpoints and
    # requeues its job) and exits 0 after a requested stop.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    with EmbeddedWorker() as embedded_worker:
        # The worker starts stopping at once, while the API drains its connections.
        run_api(host, port, on_stop_signal=embedded_worker.request_stop)  # returns on Ctrl-C / SIGTERM


def setting_name(loc: tuple) -> str:
    return "CHARRNN_" + str(loc[-1] if loc else "").upper()


def main() -> None:
    """`charrnn`: a setting that cannot be used (CHARRNN_*) ends the command with one line saying which
    and why, wherever it is first read."""
    try:
        cli()
    except ValidationError as exc:
        # Only the settings' own: any other model's ValidationError is a bug, and keeps its traceback.
        if exc.title != Settings.__name__:
            raise
        print(f"charrnn: {describe_invalid(exc, setting_name)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
