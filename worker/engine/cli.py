"""`charrnn train | generate | score`: the engine without the service.

This module must stay importable without torch (the API image has none): everything that needs
the engine is imported inside the command that runs it.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from inspect import Parameter, signature
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from worker.engine.autoconfig import AUTO_MODEL_FIELDS
from worker.engine.config import ModelConfig, TrainConfig
from worker.engine.errors import CheckpointError, EngineError
from worker.engine.sampling_params import MAX_LENGTH, SamplingParams
from worker.engine.settings import field_bounds, settings_of

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
    **settings,  # one option per model and training setting: setting_parameters(), below
) -> None:
    """Train a model on FILE; progress on stderr, a JSON summary as the last line on stdout."""
    from worker.engine.records import JobSpec

    given = {name: value for name, value in settings.items() if value is not None}
    for setting in (*settings_of(ModelConfig), *settings_of(TrainConfig)):
        reason = setting.reason(given[setting.name]) if setting.name in given else None
        if reason:
            _fail(f"{setting_option(setting.name)}: {reason}")
    model_fields = {s.name: given[s.name] for s in settings_of(ModelConfig) if s.name in given}
    given_training = {s.name: given[s.name] for s in settings_of(TrainConfig) if s.name in given}
    try:
        if resume:
            spec = _resumed_spec(resume, given_training)
        else:
            if file is None or out is None:
                _fail("give a FILE and --out DIR, or --resume DIR")
            spec = JobSpec(
                corpus_path=str(Path(file).resolve()),
                run_dir=str(out),
                model=model_fields,
                training=given_training,
                init_from=str(init_from) if init_from else None,
            )
    except ValidationError as exc:  # the options as given, here only: a record the trainer builds is not
        _fail(describe_invalid(exc, option_name))
    except EngineError as exc:
        _fail(str(exc))
    # Only the user's own problems end in one line; anything else is a bug, and its traceback is shown.
    try:
        if spec.gpus > 1:
            from worker.engine.distributed import launch

            result = launch(spec.gpus, _train_rank, spec)
            if isinstance(result, str):
                _fail(result)
        else:
            result = _train_here(spec)
    except EngineError as exc:
        _fail(str(exc))
    print(result.model_dump_json())


def _train_here(spec, show_progress: bool = True):
    from worker.engine.trainer import TrainingObserver
    from worker.engine.training_run import build_trainer

    observer = ConsoleObserver() if show_progress else TrainingObserver()
    try:
        return build_trainer(spec, observer).train()
    finally:
        if show_progress:
            observer.close()


def _train_rank(spec):
    """One rank of `train --gpus N` (launched by distributed.launch): rank 0 shows the progress. Returns the
    result, or the message of a run the engine refused (every rank refuses alike)."""
    import torch

    from worker.engine.distributed import DistContext, leave_process_group, setup_process_group

    torch.set_num_threads(max(1, torch.get_num_threads() // spec.gpus))  # the ranks share the cores
    spec = spec.model_copy(update={"training": setup_process_group(spec.training)})
    finished = False
    try:
        result = _train_here(spec, show_progress=DistContext.current().is_main)
        finished = True
        return result
    except EngineError as exc:  # the user's to fix: one line, as in one process
        finished = True
        return str(exc)
    finally:
        leave_process_group(finished)


def setting_option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _setting_help(setting) -> str:
    if setting.name in AUTO_MODEL_FIELDS:
        return f"{setting.help} (default: chosen for the budget and the corpus)"
    bounds = setting.bounds()
    default = "" if setting.default is None else f"default {setting.default!r}"
    return f"{setting.help} ({'; '.join(w for w in (bounds, default) if w)})" if bounds or default else setting.help


def setting_parameters() -> list[Parameter]:
    """One `--name` option per model and training setting, typed and helped by its definition (config.py):
    a setting added there is an option here. Bounds are checked by the definition, naming the option."""
    params = []
    for setting in (*settings_of(ModelConfig), *settings_of(TrainConfig)):
        option = typer.Option(setting_option(setting.name), help=_setting_help(setting), show_default=False)
        params.append(Parameter(setting.name, Parameter.KEYWORD_ONLY, default=None,
                                annotation=Annotated[setting.type | None, option]))
    return params


def with_parameters(command: Callable, extra: list[Parameter]) -> Callable:
    """`command`, whose **kwargs take `extra`, as typer sees it: with `extra` in its signature."""
    spec = signature(command, eval_str=True)
    params = [p for p in spec.parameters.values() if p.kind != p.VAR_KEYWORD]

    @functools.wraps(command)
    def wrapper(**kwargs):
        return command(**kwargs)

    wrapper.__signature__ = spec.replace(parameters=[*params, *extra])
    wrapper.__annotations__ = {p.name: p.annotation for p in (*params, *extra)}
    return wrapper


def sampling_parameters() -> list[Parameter]:
    """`generate`'s options, one per sampling parameter (SamplingParams: its default and description).
    The service bounds `length`; on the user's own terminal any length is fine (see generate)."""
    params = []
    for name, info in SamplingParams.model_fields.items():
        annotation = info.annotation
        bounds = field_bounds(info)
        help_text = f"{info.description} ({bounds})" if bounds else info.description
        if name == "length":
            help_text = f"{info.description}: any number, written to stdout as they come"
        elif name == "stop":
            annotation, help_text = list[str] | None, help_text + " (repeatable)"
        option = typer.Option(setting_option(name), help=help_text)
        default = None if name == "stop" else info.get_default(call_default_factory=True)
        params.append(Parameter(name, Parameter.KEYWORD_ONLY, default=default,
                                annotation=Annotated[annotation, option]))
    return params


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
    **sampling,  # one option per sampling parameter: sampling_parameters()
) -> None:
    """Sample from a checkpoint; prints only the generated text (after the prompt)."""
    from worker.engine.checkpoint import load_model
    from worker.engine.sampler import Sampler, SampleRequest

    length = sampling["length"]
    if length < 0:
        _fail(f"--length: got {length}; give 0 or more characters")
    try:
        # The service bounds a request's length; here the text streams to the user's own terminal, so
        # any length is fine: the other fields are checked as the service checks them.
        request = SampleRequest(**{**sampling, "length": min(length, MAX_LENGTH), "stop": sampling["stop"] or []})
        request = request.model_copy(update={"length": length})
    except ValidationError as exc:
        _fail(describe_invalid(exc, option_name))
    try:
        loaded = load_model(checkpoint)
        sampler = Sampler(loaded.model, loaded.vocab)
        if request.num_samples == 1:
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
    app.command(name="train")(with_parameters(train, setting_parameters()))
    app.command(name="generate")(with_parameters(generate, sampling_parameters()))
    app.command()(score)
    app.command()(inspect)
