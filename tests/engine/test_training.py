"""Real training of tiny models: the loss falls, resumption is exact, checkpoints survive crashes."""

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.harness import SHAKESPEARE
from worker.engine.checkpoint import CheckpointError, RunDirectory, load_model
from worker.engine.errors import CorpusError
from worker.engine.trainer import TrainConfig, Trainer, TrainingDiverged, TrainingObserver

TINY_MODEL = {"cell": "lstm", "hidden_size": 32, "num_layers": 2, "embedding_dim": 16, "dropout": 0.1}


@pytest.fixture(scope="module")
def text() -> str:
    return SHAKESPEARE.read_text()[:30_000]


def tiny_config(**overrides) -> TrainConfig:
    base = dict(seq_len=16, batch_size=8, learning_rate=1e-2, warmup_steps=5, max_steps=40,
                eval_every=10, checkpoint_every=10, log_every=5, sample_length=20, seed=7,
                device="cpu", precision="fp32")
    return TrainConfig(**{**base, **overrides})


class StopAt(TrainingObserver):
    """Interrupts a run at a given step, as a cancel or a shutdown would."""

    def __init__(self, step: int):
        self.stop_step, self.step, self.evals = step, 0, []

    def on_metrics(self, metrics):
        self.step = metrics.step

    def on_eval(self, metrics, sample):
        self.evals.append((metrics.step, metrics.val_loss))

    def should_stop(self):
        return "interrupted" if self.step >= self.stop_step else None


def test_loss_falls_on_a_small_corpus(tmp_path, text):
    trainer = Trainer(text, tmp_path / "run", TINY_MODEL, tiny_config(max_steps=80, eval_every=40))
    first_val = trainer.evaluate()
    result = trainer.train()
    assert math.isclose(first_val, math.log(len(trainer.vocab)), rel_tol=0.1)  # untrained ~ uniform guess
    assert result.val_loss < first_val - 0.8
    assert result.steps == 80 and result.stopped_by == "max_steps"
    assert Path(result.checkpoint).is_file()


# Some CPUs (an EPYC without AVX512-BF16) have no bf16 kernels: the engine refuses bf16 there, so those
# cases run only where the machine has them.
NEEDS_BF16 = pytest.mark.skipif(
    not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no bf16 kernels (no AVX512-BF16 or AMX)"
)


@pytest.mark.parametrize(("precision", "ema_decay", "optimizer", "decay_fraction"), [
    ("fp32", None, "adamw", 1.0), pytest.param("bf16", None, "adamw", 1.0, marks=NEEDS_BF16),
    ("fp32", 0.9, "adamw", 1.0), pytest.param("bf16", 0.9, "adamw", 0.2, marks=NEEDS_BF16),
    pytest.param("bf16", None, "muon", 0.2, marks=NEEDS_BF16), ("fp32", None, "muon", 0.2),
])
def test_resumed_run_equals_uninterrupted_run_bitwise(tmp_path, text, precision, ema_decay, optimizer, decay_fraction):
    config = tiny_config(precision=precision, max_steps=45, log_every=1, ema_decay=ema_decay, optimizer=optimizer,
                         decay_fraction=decay_fraction)
    whole = Trainer(text, tmp_path / "whole", TINY_MODEL, config).train()

    # Stop between checkpoints and across an epoch boundary's neighbourhood, then resume twice.
    for stop in (13, 27):
        observer = StopAt(stop)
        interrupted = Trainer(text, tmp_path / "parts", TINY_MODEL, config, observer=observer).train()
        assert interrupted.stopped_by == "interrupted" and interrupted.steps == stop
    resumed_trainer = Trainer(text, tmp_path / "parts", TINY_MODEL, config)
    assert resumed_trainer.resumed_from_step == 27
    resumed = resumed_trainer.train()

    assert resumed.steps == whole.steps
    assert resumed.train_loss == whole.train_loss
    assert resumed.val_loss == whole.val_loss and resumed.best_val_loss == whole.best_val_loss
    a, b = load_file(whole.last_checkpoint), load_file(resumed.last_checkpoint)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_weight_average_is_what_checkpoints_hold_and_evaluation_scores(tmp_path, text):
    trainer = Trainer(text, tmp_path / "run", TINY_MODEL, tiny_config(max_steps=30, ema_decay=0.9))
    result = trainer.train()
    saved = load_file(result.last_checkpoint)
    averaged, trained = trainer.average.model.state_dict(), trainer.model.state_dict()
    assert all(torch.equal(saved[k], averaged[k]) for k in saved)
    assert not all(torch.equal(saved[k], trained[k]) for k in saved)
    assert trainer.average.updates == 30
    assert result.val_loss == trainer.evaluate()  # the average's score, as the run reported it
    # the trained weights travel in the training state, for an exact resume
    _, _, state = RunDirectory(tmp_path / "run").latest()
    assert all(torch.equal(state.training_weights[k], trained[k]) for k in trained)


def test_resume_refuses_a_different_corpus(tmp_path, text):
    Trainer(text, tmp_path / "run", TINY_MODEL, tiny_config(max_steps=10)).train()
    with pytest.raises(CheckpointError, match="different text"):
        Trainer(text[::-1], tmp_path / "run", TINY_MODEL, tiny_config(max_steps=10))


def test_checkpoint_round_trip_onto_cpu(tmp_path, text):
    trainer = Trainer(text, tmp_path / "run", {**TINY_MODEL, "cell": "gru"}, tiny_config(max_steps=10))
    result = trainer.train()
    loaded = load_model(result.checkpoint, device="cpu")
    assert loaded.model.config == trainer.model.config
    assert loaded.vocab == trainer.vocab
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor.cpu())
    assert next(loaded.model.parameters()).device.type == "cpu"
    # the training state is plain data: it loads with weights_only=True
    step, _, state = RunDirectory(tmp_path / "run").latest()
    assert step == 10 and state.step == 10


def test_checkpoint_write_killed_half_way_leaves_previous_checkpoint(tmp_path, text):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    run = tmp_path / "run"
    # A real process, really killed (SIGKILL) after writing half of its second checkpoint's weights.
    script = textwrap.dedent(f"""
        import os, signal
        import worker.engine.checkpoint as ck
        from worker.engine.trainer import Trainer, TrainConfig
        real_write, calls = ck.atomic_write, []
        def dying_write(path, data):
            calls.append(path)
            if path.name == "step-00000020.safetensors":
                with open(path.parent / ("." + path.name + ".partial.tmp"), "wb") as f:
                    f.write(data[: len(data) // 2]); f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            real_write(path, data)
        ck.atomic_write = dying_write
        config = TrainConfig.from_dict({tiny_config(max_steps=30).to_dict()!r})
        Trainer(open({str(corpus)!r}).read(), {str(run)!r}, {TINY_MODEL!r}, config).train()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    step, weights, state = RunDirectory(run).latest()
    assert step == 10 and state.step == 10
    load_model(weights)  # still loadable
    # and the run resumes from it and completes
    resumed = Trainer(text, run, TINY_MODEL, tiny_config(max_steps=30))
    assert resumed.resumed_from_step == 10
    assert resumed.train().steps == 30


def test_diverging_run_stops_with_a_clear_reason(tmp_path, text):
    # The largest rate and clip the settings allow.
    config = tiny_config(learning_rate=1.0, grad_clip=1000, warmup_steps=1, max_steps=50)
    with pytest.raises(TrainingDiverged, match=r"diverged at step \d+.*Lower learning_rate"):
        Trainer(text, tmp_path / "run", {**TINY_MODEL, "cell": "rnn"}, config).train()


def test_init_from_continues_from_weights_and_checks_vocabulary(tmp_path, text):
    first = Trainer(text, tmp_path / "a", TINY_MODEL, tiny_config(max_steps=20)).train()
    second = Trainer(text, tmp_path / "b", None, tiny_config(max_steps=5), init_from=first.checkpoint)
    assert second.evaluate() < math.log(len(second.vocab)) - 0.3  # starts trained, not from scratch
    with pytest.raises(CorpusError, match="never saw"):
        Trainer(text + "€", tmp_path / "c", None, tiny_config(max_steps=5), init_from=first.checkpoint)


def charrnn_here(*args: str):
    """`charrnn ARGS` in this process (typer's CliRunner): the command as a user runs it, without paying a
    torch import in a new process (a real `charrnn train` process runs in test_doctor.py and
    test_cli_errors.py). Its result: exit_code, stdout, stderr."""
    from typer.testing import CliRunner

    from worker.cli import cli

    return CliRunner().invoke(cli, list(args))


def test_cli_train_prints_json_summary_and_resumes(tmp_path, text):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    proc = charrnn_here("train", str(corpus), "--out", str(tmp_path / "run"),
                        "--hidden-size", "16", "--num-layers", "1", "--seq-len", "16", "--batch-size", "4",
                        "--max-steps", "12", "--eval-every", "6", "--checkpoint-every", "6", "--device", "cpu")
    assert proc.exit_code == 0, (proc.stderr, proc.exception)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"steps", "train_loss", "val_loss", "chars_per_second", "checkpoint"} <= summary.keys()
    assert summary["steps"] == 12 and Path(summary["checkpoint"]).is_file()
    resumed = charrnn_here("train", "--resume", str(tmp_path / "run"), "--max-steps", "18")
    assert resumed.exit_code == 0, (resumed.stderr, resumed.exception)
    again = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert again["steps"] == 18 and again["resumed_from_step"] == 12


@pytest.mark.parametrize(("content", "message"), [
    (b"", "empty"),
    (b"abc", "too few"),
    (b"ok \xff\xfe bad", "offset 3"),
])
def test_cli_train_rejects_bad_files_clearly(tmp_path, content, message):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    proc = charrnn_here("train", str(corpus), "--out", str(tmp_path / "r"))
    # exit 2, the user's error: a bug's exception would end it with 1 (and a traceback in a real process)
    assert proc.exit_code == 2, (proc.stderr, proc.exception)
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_the_rate_holds_at_its_peak_until_the_decay_share_of_the_run_is_left():
    from worker.engine.trainer import lr_at

    wsd = TrainConfig(learning_rate=1.0, min_lr_ratio=0.1, decay_fraction=0.2)
    assert [lr_at(wsd, 100, p) for p in (0.0, 0.5, 0.8)] == [1.0, 1.0, 1.0]
    assert math.isclose(lr_at(wsd, 100, 0.9), 0.55) and math.isclose(lr_at(wsd, 100, 1.0), 0.1)
    linear = TrainConfig(learning_rate=1.0, min_lr_ratio=0.1)  # decay_fraction 1: from the first step
    assert math.isclose(lr_at(linear, 100, 0.5), 0.55)
