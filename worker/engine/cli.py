"""`charrnn train | generate | score`: the engine without the service.

This module must stay importable without torch (the API image has none): everything that needs
the engine is imported inside the command that runs it.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from worker.engine.errors import CheckpointError, EngineError
from worker.engine.sampling_params import MAX_LENGTH, MAX_NUM_SAMPLES, MAX_TEMPERATURE

stderr = Console(stderr=True)
LN2 = math.log(2)


def _fail(message: str) -> None:
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code=2)


def describe_invalid(exc: ValidationError, name_for: Callable[[tuple], str], limit: int = 3) -> str:
    """pydantic's errors as one line a person can act on: the option (or setting) as they typed it, the
    value given and the bound, e.g. `--temperature: got -1.0; it must be greater than or equal to 0`."""
    problems = []
    for error in exc.errors(include_url=False)[:limit]:
        reason = error["msg"].removeprefix("Value error, ").replace("Input should be", "it must be")
        given = error.get("input")
        shown = f"got {given!r}; " if isinstance(given, int | float | str) and len(repr(given)) <= 40 else ""
        problems.append(f"{name_for(error['loc'])}: {shown}{reason}")
    return "; ".join(problems)


def option_name(loc: tuple) -> str:
    """A request field's command-line option: ('training', 'max_seconds') -> --max-seconds."""
    return "--" + str(loc[-1] if loc else "value").replace("_", "-")


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
        refs = info.reference_losses
        if refs:
            stderr.print(
                f"reference losses of the held-out text: unigram {refs['unigram']:.3f} nats/char "
                f"({refs['unigram'] / LN2:.2f} bits; knows only character frequencies), bigram "
                f"{refs['bigram']:.3f} ({refs['bigram'] / LN2:.2f} bits; knows only the previous character)",
                highlight=False,
            )
        self.progress.start()
        if self.task is not None:  # the run re-sized its model and starts again
            self.progress.remove_task(self.task)
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

    def on_diagnosis(self, diagnosis) -> None:
        # Escaped: the message is plain text, never rich markup.
        self.progress.console.print(f"[bold]diagnosis:[/] {escape(diagnosis.message)}", highlight=False)

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
    optimizer: Annotated[str | None, typer.Option(
        help="adamw | muon (Muon for the recurrent weight matrices, AdamW for the rest)")] = None,
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
    from worker.engine.records import JobSpec
    from worker.engine.training_run import build_trainer

    model_fields = {"cell": cell, "hidden_size": hidden_size, "num_layers": num_layers,
                    "embedding_dim": embedding_dim, "dropout": dropout}
    train_fields = {"seq_len": seq_len, "batch_size": batch_size, "learning_rate": learning_rate,
                    "grad_clip": grad_clip, "weight_decay": weight_decay, "warmup_steps": warmup_steps,
                    "min_lr_ratio": min_lr_ratio, "ema_decay": ema_decay, "max_steps": max_steps,
                    "decay_fraction": decay_fraction, "optimizer": optimizer, "max_epochs": max_epochs,
                    "max_seconds": max_seconds, "val_fraction": val_fraction, "eval_every": eval_every,
                    "checkpoint_every": checkpoint_every, "seed": seed, "device": device, "precision": precision}
    given_training = {k: v for k, v in train_fields.items() if v is not None}
    # Only the user's own problems end in one line; anything else is a bug, and its traceback is shown.
    try:
        if resume:
            spec = _resumed_spec(resume, given_training)
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
    except ValidationError as exc:  # the options as given, here only: a record the trainer builds is not
        _fail(describe_invalid(exc, option_name))
    except EngineError as exc:
        _fail(str(exc))
    observer = ConsoleObserver()
    try:
        try:
            result = build_trainer(spec, observer).train()
        finally:
            observer.close()
    except EngineError as exc:
        _fail(str(exc))
    print(result.model_dump_json())


def _resumed_spec(resume: Path, given_training: dict):
    """The spec of the run in `resume`: its own settings, with the flags given now over them (e.g. a longer
    --max-steps). A run.json that does not say how to continue is the user's problem, not a crash."""
    from worker.engine.checkpoint import RunDirectory
    from worker.engine.records import JobSpec

    run = RunDirectory(resume).read_run()
    if not run.get("corpus_path"):
        _fail(f"{resume}/run.json does not say which file it trained on; pass FILE and --out instead")
    if not isinstance(run.get("model"), dict) or not isinstance(run.get("training"), dict):
        raise CheckpointError(f"{resume}/run.json has no model or training settings; start a new run instead")
    return JobSpec(
        corpus_path=run["corpus_path"],
        run_dir=str(resume),
        model={k: v for k, v in run["model"].items() if k != "vocab_size"},
        training={**run["training"], **given_training},
        init_from=run.get("init_from"),
    )


def generate(
    checkpoint: Annotated[Path, typer.Argument(help="a .safetensors checkpoint or a run directory")],
    prompt: Annotated[str, typer.Option(help="text to start from")] = "",
    length: Annotated[
        int, typer.Option(help="characters to generate: any number, written to stdout as they come")
    ] = 200,
    temperature: Annotated[
        float, typer.Option(help=f"0 to {MAX_TEMPERATURE:g}; 0 = always the most likely character")
    ] = 1.0,
    top_k: Annotated[int | None, typer.Option()] = None,
    top_p: Annotated[float | None, typer.Option(help="above 0, at most 1")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    num_samples: Annotated[int, typer.Option(help=f"1 to {MAX_NUM_SAMPLES}")] = 1,
    stop: Annotated[list[str] | None, typer.Option(help="stop at this string (repeatable)")] = None,
) -> None:
    """Sample from a checkpoint; prints only the generated text (after the prompt)."""
    from worker.engine.checkpoint import load_model
    from worker.engine.sampler import Sampler, SampleRequest

    if length < 0:
        _fail(f"--length: got {length}; give 0 or more characters")
    try:
        # The service bounds a request's length; here the text streams to the user's own terminal, so
        # any length is fine: the other fields are checked as the service checks them.
        request = SampleRequest(prompt=prompt, length=min(length, MAX_LENGTH), temperature=temperature,
                                top_k=top_k, top_p=top_p, seed=seed, num_samples=num_samples, stop=stop or [])
        request = request.model_copy(update={"length": length})
    except ValidationError as exc:
        _fail(describe_invalid(exc, option_name))
    try:
        loaded = load_model(checkpoint)
        sampler = Sampler(loaded.model, loaded.vocab)
        if num_samples == 1:
            for pieces in sampler.stream(request):
                if pieces[0]:
                    sys.stdout.write(pieces[0])
                    sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            samples = sampler.generate(request)
            sys.stdout.write("\n\n".join(s.text for s in samples) + "\n")
    except EngineError as exc:
        _fail(str(exc))


def score(
    checkpoint: Annotated[Path, typer.Argument(help="a .safetensors checkpoint or a run directory")],
    file: Annotated[Path, typer.Argument(help="UTF-8 text to score")],
) -> None:
    """Mean cross-entropy of FILE under the model, in nats per character, as JSON."""
    from worker.engine.checkpoint import load_model
    from worker.engine.data import read_text
    from worker.engine.scoring import score_text

    try:
        loaded = load_model(checkpoint)
        loss, chars = score_text(loaded.model, loaded.vocab, read_text(file))
    except EngineError as exc:
        _fail(str(exc))
    print(json.dumps({"loss": loss, "chars": chars}))


def inspect(
    checkpoint: Annotated[Path, typer.Argument(help="a .safetensors checkpoint or a run directory")],
    file: Annotated[Path, typer.Argument(help="UTF-8 text to inspect")],
    as_json: Annotated[bool, typer.Option("--json", help="print the whole answer as JSON")] = False,
    top_k: Annotated[int, typer.Option(min=0, max=20, help="the likeliest characters listed per position")] = 3,
    layer: Annotated[int | None, typer.Option(help="each character's activations of this layer (0: first)")] = None,
    units: Annotated[list[int] | None, typer.Option("--units", help="only these units of --layer (repeatable)")] = None,
    find: Annotated[bool, typer.Option("--find-units", help="rank the units that track text features")] = False,
) -> None:
    """Each character of FILE as the model saw it: probability, surprise (bits), rank, entropy, top-k."""
    from worker.engine.checkpoint import load_model
    from worker.engine.data import read_text
    from worker.engine.inspection import find_units, inspect_text

    try:
        loaded = load_model(checkpoint)
        text = read_text(file)
        result = inspect_text(loaded.model, loaded.vocab, text, top_k, layer, units or None)
        if find:
            result["found_units"] = find_units(loaded.model, loaded.vocab, text)
    except EngineError as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(result))
        return
    _print_inspection(result)


def _print_inspection(result: dict) -> None:
    from rich.table import Table
    from rich.text import Text

    activations = result["activations"]
    table = Table("#", "char", "prob", "surprise bits", "rank", "entropy bits", "expected", box=None)
    for state in ("h", "c"):
        if activations and activations[state] is not None:
            for unit in activations["units"]:
                table.add_column(f"{state}{unit}")
    for i, row in enumerate(result["characters"]):
        expected = " ".join(f"{t['char']!r}:{t['prob']:.2f}" for t in row["top"])
        values = []
        for state in ("h", "c"):
            if activations and activations[state] is not None:
                values.extend(f"{v:.3f}" for v in activations[state][i])
        cells = [str(i), repr(row["char"]), f"{row['prob']:.4f}", f"{row['surprise_bits']:.3f}",
                 str(row["rank"]), f"{row['entropy_bits']:.3f}", expected, *values]
        table.add_row(*(Text(cell) for cell in cells))  # Text: a "[" in the text is not rich markup
    console = Console(width=200)
    console.print(table)
    rows = result["characters"]
    console.print(f"mean surprise {sum(r['surprise_bits'] for r in rows) / max(len(rows), 1):.4f} bits per character")
    for feature in result.get("found_units") or []:
        units = feature["units"]
        best = ", ".join(f"layer {u['layer']} {u['state']}{u['unit']} ({u['correlation']:+.2f})" for u in units)
        console.print(f"{feature['description']}: {best or feature.get('note', '')}", markup=False)


def register_engine_commands(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(generate)
    app.command()(score)
    app.command()(inspect)
