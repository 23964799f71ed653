"""The one entry point, `charrnn`: service commands here, engine commands from worker/cli.py.

Engine commands import torch only when they run, so `charrnn api` works where torch is not installed.
"""

from __future__ import annotations

import typer

from worker.cli import register_engine_commands

cli = typer.Typer(help="charrnn: train character-level RNN language models and generate text from them.",
                  no_args_is_help=True, add_completion=False)
register_engine_commands(cli)

if __name__ == "__main__":
    cli()
