"""`charrnn train | generate | score`: the engine without the service.

This module must stay importable without torch (the API image has none): everything that needs
the engine is imported inside the command that runs it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

stderr = Console(stderr=True)


def _fail(message: str) -> None:
    stderr.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


class ConsoleObserver:
    """Progress bar, live loss and evaluation samples on stderr."""

    def __init__(self):
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=stderr,
            transient=False,
        )
        self.task = None

    def on_start(self, info) -> None:
        resumed = f", resumed from step {info.resumed_from_step}" if info.resumed_from_step else ""
        for reason in info.chosen:
            stderr.print(f"chose {reason}")
        stderr.print(
            f"{info.model['cell']} {info.model['num_layers']}x{info.model['hidden_size']}: "
            f"{info.num_parameters:,} parameters, vocabulary {info.vocab_size}, "
            f"{info.train_chars:,} train / {info.val_chars:,} validation characters, "
            f"{info.device} {info.precision}{resumed}"
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=None, status="")

    def _update(self, m) -> None:
        val = f" val {m.val_loss:.4f}" if m.val_loss is not None else ""
        status = f"loss {m.train_loss:.4f}{val} lr {m.learning_rate:.2e} {m.chars_per_second:,.0f} chars/s"
        self.progress.update(self.task, completed=m.step, total=m.max_steps, status=status)

    def on_metrics(self, metrics) -> None:
        self._update(metrics)

    def on_eval(self, metrics, sample: str) -> None:
        self._update(metrics)
        val = f" val {metrics.val_loss:.4f}" if metrics.val_loss is not None else ""
        self.progress.console.print(f"[dim]step {metrics.step}{val} sample:[/] {sample[:160]!r}")

    def on_checkpoint(self, checkpoint) -> None:
        pass

    def should_stop(self) -> str | None:
        return None

    def close(self) -> None:
        self.progress.stop()


def train(
    file: Annotated[Path | None, typer.Argument(help="UTF-8 text to train on")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="run directory for checkpoints")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="continue the run in this directory")] = None,
    init_from: Annotated[Path | None, typer.Option(help="start from these weights (.safetensors)")] = None,
    cell: Annotated[str | None, typer.Option(help="lstm | gru | rnn")] = None,
    hidden_size: Annotated[int | None, typer.Option()] = None,
    num_layers: Annotated[int | None, typer.Option()] = None,
    embedding_dim: Annotated[int | None, typer.Option()] = None,
    dropout: Annotated[float | None, typer.Option()] = None,
    seq_len: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    learning_rate: Annotated[float | None, typer.Option()] = None,
    grad_clip: Annotated[float | None, typer.Option()] = None,
    weight_decay: Annotated[float | None, typer.Option()] = None,
    warmup_steps: Annotated[int | None, typer.Option()] = None,
    min_lr_ratio: Annotated[float | None, typer.Option(help="final learning rate / peak")] = None,
    decay_fraction: Annotated[float | None, typer.Option(
        help="share of the run, at its end, over which the rate decays (1: from the start)")] = None,
    ema_decay: Annotated[float | None, typer.Option(
        help="evaluate, checkpoint and sample from an exponential moving average of the weights at this decay")] = None,
    max_steps: Annotated[int | None, typer.Option()] = None,
    max_epochs: Annotated[float | None, typer.Option()] = None,
    max_seconds: Annotated[float | None, typer.Option()] = None,
    val_fraction: Annotated[float | None, typer.Option()] = None,
    eval_every: Annotated[int | None, typer.Option()] = None,
    checkpoint_every: Annotated[int | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N")] = None,
    precision: Annotated[str | None, typer.Option(help="auto | fp32 | bf16")] = None,
) -> None:
    """Train a model on FILE; progress on stderr, a JSON summary as the last line on stdout."""
    from worker.engine.checkpoint import RunDirectory
    from worker.engine.records import JobSpec
    from worker.engine.training_run import build_trainer

    model_fields = {"cell": cell, "hidden_size": hidden_size, "num_layers": num_layers,
                    "embedding_dim": embedding_dim, "dropout": dropout}
    train_fields = {"seq_len": seq_len, "batch_size": batch_size, "learning_rate": learning_rate,
                    "grad_clip": grad_clip, "weight_decay": weight_decay, "warmup_steps": warmup_steps,
                    "min_lr_ratio": min_lr_ratio, "ema_decay": ema_decay, "max_steps": max_steps,
                    "decay_fraction": decay_fraction,
                    "max_epochs": max_epochs,
                    "max_seconds": max_seconds, "val_fraction": val_fraction, "eval_every": eval_every,
                    "checkpoint_every": checkpoint_every, "seed": seed, "device": device, "precision": precision}
    given_training = {k: v for k, v in train_fields.items() if v is not None}
    try:
        if resume:
            run = RunDirectory(resume).read_run()
            if not run.get("corpus_path"):
                _fail(f"{resume}/run.json does not say which file it trained on; pass FILE and --out instead")
            # A resumed run keeps its settings; flags given now override (e.g. a longer --max-steps).
            spec = JobSpec(
                corpus_path=run["corpus_path"],
                run_dir=str(resume),
                model={k: v for k, v in run["model"].items() if k != "vocab_size"},
                training={**run["training"], **given_training},
                init_from=run.get("init_from"),
            )
        else:
            if file is None or out is None:
                _fail("give a FILE and --out DIR, or --resume DIR")
            spec = JobSpec(
                corpus_path=str(Path(file).resolve()),
                run_dir=str(out),
                model={k: v for k, v in model_fields.items() if v is not None},
                training=given_training,
                init_from=str(init_from) if init_from else None,
            )
        observer = ConsoleObserver()
        trainer = build_trainer(spec, observer)
        try:
            result = trainer.train()
        finally:
            observer.close()
    except (ValueError, TypeError) as exc:  # EngineError, a refused spec; TypeError: a bad run.json
        _fail(str(exc))
    print(result.model_dump_json())


def generate(
    checkpoint: Annotated[Path, typer.Argument(help="a .safetensors checkpoint or a run directory")],
    prompt: Annotated[str, typer.Option(help="text to start from")] = "",
    length: Annotated[int, typer.Option(help="characters to generate")] = 200,
    temperature: Annotated[float, typer.Option(help="0 = always the most likely character")] = 1.0,
    top_k: Annotated[int | None, typer.Option()] = None,
    top_p: Annotated[float | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    num_samples: Annotated[int, typer.Option()] = 1,
    stop: Annotated[list[str] | None, typer.Option(help="stop at this string (repeatable)")] = None,
) -> None:
    """Sample from a checkpoint; prints only the generated text (after the prompt)."""
    from worker.engine.checkpoint import CheckpointError, load_model
    from worker.engine.sampler import Sampler, SampleRequest

    try:
        loaded = load_model(checkpoint)
        request = SampleRequest(prompt=prompt, length=length, temperature=temperature, top_k=top_k,
                                top_p=top_p, seed=seed, num_samples=num_samples, stop=stop or [])
        samples = Sampler(loaded.model, loaded.vocab).generate(request)
    except (CheckpointError, ValueError) as exc:
        _fail(str(exc))
    sys.stdout.write("\n\n".join(s.text for s in samples) + "\n")


def score(
    checkpoint: Annotated[Path, typer.Argument(help="a .safetensors checkpoint or a run directory")],
    file: Annotated[Path, typer.Argument(help="UTF-8 text to score")],
) -> None:
    """Mean cross-entropy of FILE under the model, in nats per character, as JSON."""
    from worker.engine.checkpoint import CheckpointError, load_model
    from worker.engine.data import read_text
    from worker.engine.scoring import score_text

    try:
        loaded = load_model(checkpoint)
        loss, chars = score_text(loaded.model, loaded.vocab, read_text(file))
    except (CheckpointError, ValueError) as exc:
        _fail(str(exc))
    print(json.dumps({"loss": loss, "chars": chars}))


def register_engine_commands(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(generate)
    app.command()(score)
