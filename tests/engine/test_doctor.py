"""The training doctor on real runs of tiny models: each diagnosis happens for the reason it names.

Runs leave eval_every out, so they also show the evaluations spaced over the budget."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pytest
import torch

from tests.harness import ROOT, SHAKESPEARE
from worker.engine import references
from worker.engine.trainer import (
    EVAL_WINDOW_CHARS,
    EVAL_WINDOWS,
    EVALUATIONS_PER_RUN,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    TrainingObserver,
    held_out_sample,
)

TINY = {"cell": "lstm", "hidden_size": 32, "num_layers": 1, "embedding_dim": 16, "dropout": 0.0}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Oversubscribed torch crawls on a shared 2-core machine; these models are too small to need more.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return SHAKESPEARE.read_text()[:20_000]


class Recorder(TrainingObserver):
    def __init__(self):
        self.started, self.evals, self.diagnoses = None, [], []

    def on_start(self, info):
        self.started = info

    def on_eval(self, metrics, sample):
        self.evals.append((metrics.step, metrics.train_loss, metrics.val_loss))

    def on_diagnosis(self, diagnosis):
        self.diagnoses.append(diagnosis)


def train(tmp_path, text, model=TINY, **training) -> tuple[Recorder, object]:
    base = dict(seq_len=16, batch_size=8, learning_rate=1e-2, max_steps=40, checkpoint_every=10**6,
                log_every=5, sample_length=5, seed=7, device="cpu", precision="fp32")
    recorder = Recorder()
    trainer = Trainer(text, tmp_path / "run", model, TrainConfig(**{**base, **training}), observer=recorder)
    return recorder, trainer.train()


def test_a_learning_rate_near_zero_is_not_learning(tmp_path, shakespeare):
    recorder, result = train(tmp_path, shakespeare, learning_rate=1e-7, max_steps=100)
    refs = references.of_text(shakespeare, 0.1)
    assert recorder.started.reference_losses == pytest.approx(refs.to_dict())
    early, final = recorder.diagnoses
    # Said once a fifth of the budget is done, and again at the end.
    assert (early.kind, early.step, final.kind, final.step) == ("not_learning", 20, "not_learning", 100)
    assert "after 20% of the budget" in early.message
    assert "learned only how often each character occurs" in early.message
    assert f"{refs.unigram:.3f}" in early.message and "learning rate is too low (now 1e-07)" in early.message
    assert result.diagnosis == final and result.reference_losses == recorder.started.reference_losses
    # eval_every left out: the evaluations are spread over the budget, the last at its end.
    assert len(recorder.evals) == EVALUATIONS_PER_RUN
    steps = [step for step, _, _ in recorder.evals]
    assert steps[-1] == 100 and all(0 < b - a <= 9 for a, b in zip(steps, steps[1:], strict=False))


def test_a_huge_learning_rate_diverges_and_says_the_job_stops(tmp_path, shakespeare):
    recorder = Recorder()
    # The largest rate and clip the settings allow: a plain RNN's loss explodes within a few steps.
    config = TrainConfig(seq_len=16, batch_size=8, learning_rate=1.0, grad_clip=1000, max_steps=30,
                         sample_length=5, device="cpu", precision="fp32")
    with pytest.raises(TrainingDiverged):
        Trainer(shakespeare, tmp_path / "run", {**TINY, "cell": "rnn"}, config, observer=recorder).train()
    (diagnosis,) = recorder.diagnoses
    assert diagnosis.kind == "diverged"
    assert "Training stopped here" in diagnosis.message and "Lower learning_rate (now 1)" in diagnosis.message


def test_a_tiny_corpus_trained_many_epochs_with_a_big_model_overfits(tmp_path):
    text = SHAKESPEARE.read_text()[:2_000]
    big = {"cell": "lstm", "hidden_size": 128, "num_layers": 1, "embedding_dim": 32, "dropout": 0.0}
    recorder, result = train(tmp_path, text, big, seq_len=32, batch_size=4, max_steps=300)
    assert result.epoch > 20  # the same 1,800 characters, over and over
    first = next(d for d in recorder.diagnoses if d.kind == "overfitting")
    assert recorder.diagnoses[-1].kind == "overfitting"
    vals = {step: val for step, _, val in recorder.evals}
    best_step = min(vals, key=vals.get)
    # The validation loss rose at the evaluations before the diagnosis; the best one is named.
    before = [val for step, val in vals.items() if step <= first.step][-3:]
    assert before[0] < before[1] < before[2]
    assert f"The best checkpoint, step {best_step}" in recorder.diagnoses[-1].message
    assert best_step < result.steps and result.best_val_loss == pytest.approx(vals[best_step])


def test_a_budget_cut_short_is_still_improving_with_an_estimate(tmp_path, shakespeare):
    recorder, result = train(tmp_path, shakespeare, max_steps=40, min_lr_ratio=1.0)
    final = recorder.diagnoses[-1]
    assert final.kind == "still_improving" and final.step == 40
    vals = [val for _, _, val in recorder.evals]
    assert vals[-1] < vals[-4]  # it was indeed still falling
    estimate = float(final.message.split("bring it to about ")[1].split(" ")[0])
    assert estimate < result.val_loss


def test_a_normal_run_is_healthy_and_placed_against_the_references(tmp_path):
    rng = random.Random(3)
    text = " ".join(rng.choice(["the", "cat", "sat", "on", "mat", "a", "dog"]) for _ in range(5000))
    recorder, result = train(tmp_path, text, max_steps=200)
    (final,) = recorder.diagnoses
    refs = result.reference_losses
    assert final.kind == "healthy" and final.step == 200
    assert result.val_loss < refs["bigram"] < refs["unigram"]
    assert f"{result.val_loss:.3f} nats ({result.val_loss / math.log(2):.2f} bits)" in final.message
    assert "below the bigram reference" in final.message


def test_evaluations_left_to_the_budget_score_a_bounded_sample_of_the_held_out_text():
    data = torch.arange(100_000) % 50
    inputs, targets = held_out_sample(data)
    assert inputs.shape == targets.shape == (EVAL_WINDOWS, EVAL_WINDOW_CHARS)
    assert inputs[0, 0] == 0 and targets[-1, -1] == data[-1]  # spread from the start to the end
    assert torch.equal(targets[:, :-1], inputs[:, 1:])
    small = torch.arange(1000)
    assert held_out_sample(small) is small


def test_cli_train_prints_the_references_first_and_the_diagnosis_last(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SHAKESPEARE.read_text()[:20_000])
    run = subprocess.run(
        [sys.executable, "-m", "worker.cli", "train", str(corpus), "--out", str(tmp_path / "run"),
         "--max-steps", "20", "--learning-rate", "1e-7", "--hidden-size", "16", "--num-layers", "1",
         "--seq-len", "16", "--batch-size", "4", "--device", "cpu", "--precision", "fp32"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    refs = references.of_text(corpus.read_text(), 0.1)
    first_refs = next(i for i, line in enumerate(lines) if line.startswith("reference losses"))
    assert f"unigram {refs.unigram:.3f} nats/char" in lines[first_refs]
    last_diagnosis = max(i for i, line in enumerate(lines) if line.startswith("diagnosis: not learning"))
    assert first_refs < last_diagnosis
    summary = json.loads(run.stdout.splitlines()[-1])
    assert summary["diagnosis"]["kind"] == "not_learning"
    assert summary["reference_losses"]["bigram"] == pytest.approx(refs.bigram)
