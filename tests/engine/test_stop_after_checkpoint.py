"""A run stopped (shutdown, cancel) right after a checkpoint keeps that checkpoint as it was written: it is
not saved again as an interruption checkpoint, which would lose its is_best and its evaluation."""

from __future__ import annotations

from tests.harness import SHAKESPEARE
from worker.engine.header import read_metadata
from worker.engine.records import CheckpointStats
from worker.engine.trainer import TrainConfig, Trainer, TrainingObserver

TINY_MODEL = {"cell": "lstm", "hidden_size": 16, "num_layers": 1, "embedding_dim": 8}


class StopAfterCheckpoint(TrainingObserver):
    def __init__(self, step: int):
        self.stop_step, self.saved = step, []

    def on_checkpoint(self, checkpoint):
        self.saved.append((checkpoint.step, checkpoint.is_best))

    def should_stop(self):
        return "shutdown" if any(step == self.stop_step for step, _ in self.saved) else None


def test_a_run_stopped_right_after_a_checkpoint_does_not_save_that_step_again(tmp_path):
    config = TrainConfig(seq_len=16, batch_size=4, max_steps=40, eval_every=10, checkpoint_every=10, log_every=5,
                         sample_length=10, seed=7, device="cpu", precision="fp32")
    observer = StopAfterCheckpoint(20)
    trainer = Trainer(SHAKESPEARE.read_text()[:20_000], tmp_path / "run", TINY_MODEL, config, observer=observer)
    result = trainer.train()

    assert result.stopped_by == "shutdown" and result.steps == 20
    assert observer.saved == [(10, True), (20, True)]  # step 20 once, as the new best it was
    stats = CheckpointStats.from_file_metadata(read_metadata(trainer.run.step_paths(20)[0]))
    assert stats.is_best and stats.val_loss == result.val_loss


def test_a_run_resumed_from_its_last_step_ends_without_saving_it_again(tmp_path):
    """A worker killed between the last checkpoint and writing the outcome: the next one resumes at the end."""
    config = TrainConfig(seq_len=16, batch_size=4, max_steps=20, eval_every=10, checkpoint_every=10, log_every=5,
                         sample_length=10, seed=7, device="cpu", precision="fp32")
    text = SHAKESPEARE.read_text()[:20_000]
    whole = Trainer(text, tmp_path / "run", TINY_MODEL, config).train()
    observer = StopAfterCheckpoint(-1)
    again = Trainer(text, tmp_path / "run", TINY_MODEL, config, observer=observer)
    assert again.resumed_from_step == 20
    result = again.train()

    assert observer.saved == [] and result.steps == 20 and result.val_loss == whole.val_loss
    stats = CheckpointStats.from_file_metadata(read_metadata(again.run.step_paths(20)[0]))
    assert stats.is_best


class StopAtStep(StopAfterCheckpoint):
    """Asks to stop as soon as a step's training-loss point is reported: before its evaluation."""

    def on_metrics(self, metrics):
        self.reached = metrics.step

    def should_stop(self):
        return "shutdown" if getattr(self, "reached", 0) >= self.stop_step else None


def test_a_run_stopped_at_an_evaluation_step_evaluates_and_saves_it_first(tmp_path):
    """The run that resumes starts after this step: its evaluation and checkpoint must not be skipped."""
    config = TrainConfig(seq_len=16, batch_size=4, max_steps=40, eval_every=10, checkpoint_every=10, log_every=5,
                         sample_length=10, seed=7, device="cpu", precision="fp32")
    observer = StopAtStep(20)
    result = Trainer(SHAKESPEARE.read_text()[:20_000], tmp_path / "run", TINY_MODEL, config, observer=observer).train()
    assert result.stopped_by == "shutdown" and result.steps == 20
    assert observer.saved == [(10, True), (20, True)]
