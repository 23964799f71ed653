"""The model size and dropout chosen for a run that leaves them out: the rule, and the trainer using it."""

import json

import pytest
import torch

from tests.harness import SHAKESPEARE
from worker.engine.autoconfig import HIDDEN_SIZES, MAX_DROPOUT, MAX_EPOCHS, choose_model
from worker.engine.config import TrainConfig, estimate_training_bytes
from worker.engine.trainer import Trainer, TrainingObserver

VOCAB = 65


def choose(train_chars=1_000_000, given=None, speed=None, memory_limit=None, **training):
    config = TrainConfig(**{"seq_len": 64, "batch_size": 32, **training})
    return choose_model(given or {}, vocab_size=VOCAB, train_chars=train_chars, training=config, speed=speed,
                        memory_limit=memory_limit)


def test_a_bigger_budget_chooses_a_bigger_model():
    sizes = [choose(max_steps=steps).model["hidden_size"] for steps in (50, 500, 2000, 20_000, 200_000)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1], sizes
    assert sizes[0] == HIDDEN_SIZES[0] and sizes[-1] == HIDDEN_SIZES[-1]


def test_a_faster_machine_chooses_a_bigger_model_for_the_same_time():
    slow = choose(max_seconds=120, speed=lambda hidden: 3e6 / hidden)
    fast = choose(max_seconds=120, speed=lambda hidden: 3e8 / hidden)
    assert slow.model["hidden_size"] < fast.model["hidden_size"]
    assert "hidden_size" in slow.summary() and "per parameter" in slow.summary()


def test_a_budget_that_reads_a_small_corpus_many_times_gets_dropout():
    once = choose(train_chars=10_000_000, max_steps=2000)
    many = choose(train_chars=100_000, max_steps=2000)
    endless = choose(train_chars=10_000, max_steps=20_000)
    assert once.model["dropout"] == 0 and once.epochs < 1
    assert 0 < many.model["dropout"] <= endless.model["dropout"] == MAX_DROPOUT
    assert f"about {many.epochs:.1f} times" in many.summary()


def test_a_run_sized_by_us_stops_reading_a_small_corpus_at_max_epochs():
    capped = choose(train_chars=100_000, max_steps=20_000)
    assert capped.training == {"max_epochs": MAX_EPOCHS} and capped.epochs == MAX_EPOCHS
    assert f"max_epochs {MAX_EPOCHS}" in capped.summary()
    # Its own size, or its own epoch limit, and the budget is the run's.
    assert choose(train_chars=100_000, given={"hidden_size": 64}, max_steps=20_000).training == {}
    assert choose(train_chars=100_000, max_steps=20_000, max_epochs=100).training == {}
    assert choose(train_chars=10_000_000, max_steps=2000).training == {}  # less than one epoch


def test_given_fields_are_kept_and_not_reported_as_chosen():
    choice = choose(given={"hidden_size": 48, "dropout": 0.5}, max_steps=2000)
    assert choice.model == {} and choice.reasons == ()
    only_dropout = choose(given={"hidden_size": 48}, train_chars=10_000, max_steps=2000)
    assert set(only_dropout.model) == {"dropout"}


def test_the_chosen_size_fits_the_memory_limit():
    config = dict(max_steps=200_000)
    unlimited = choose(**config).model["hidden_size"]
    need = estimate_training_bytes(vocab_size=VOCAB, cell="lstm", hidden_size=256, num_layers=2, embedding_dim=64,
                                   batch_size=32, seq_len=64)["total"]
    capped = choose(memory_limit=need, **config).model["hidden_size"]
    assert capped == 256 < unlimited


class Recorder(TrainingObserver):
    def on_start(self, info):
        self.info = info


def run_config(**overrides):
    base = dict(seq_len=16, batch_size=8, max_steps=3, eval_every=10, checkpoint_every=10, sample_length=5,
                device="cpu", precision="fp32")
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def text():
    return SHAKESPEARE.read_text()[:20_000]


def test_the_trainer_chooses_says_why_and_records_it(tmp_path, text):
    observer = Recorder()
    trainer = Trainer(text, tmp_path / "run", {"num_layers": 1, "embedding_dim": 8}, run_config(), observer=observer)
    trainer.train()
    assert trainer.model.config.hidden_size == HIDDEN_SIZES[0]  # 3 steps feed no bigger model
    assert any(r.startswith("hidden_size") for r in observer.info.chosen)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["model"]["hidden_size"] == HIDDEN_SIZES[0] and run["chosen"] == observer.info.chosen


def test_a_chosen_epoch_limit_stops_the_run_and_survives_a_resume(tmp_path):
    # 1,800 training characters: under 2 steps of 32 x 32 read them once, so 40 epochs are about 70 steps.
    text = SHAKESPEARE.read_text()[:2_000]
    small = {"num_layers": 1, "embedding_dim": 8}
    config = run_config(max_steps=1000, checkpoint_every=50, eval_every=50, batch_size=32, seq_len=32)
    first = Trainer(text, tmp_path / "run", small, config)
    assert first.config.max_epochs == MAX_EPOCHS and first.choice.training == {"max_epochs": MAX_EPOCHS}
    result = first.train()
    assert result.stopped_by == "max_epochs" and result.epoch == MAX_EPOCHS and result.steps < 1000
    # A run directory that already chose keeps its choice, whatever the settings it is given now.
    again = Trainer(text, tmp_path / "run", small, run_config(max_steps=1000, checkpoint_every=50, eval_every=50))
    assert again.config.max_epochs == MAX_EPOCHS


def test_a_resumed_run_keeps_the_model_it_started_with(tmp_path, text):
    first = Trainer(text, tmp_path / "run", {"num_layers": 1, "embedding_dim": 8, "hidden_size": 24},
                    run_config(max_steps=2, checkpoint_every=2))
    first.train()
    # Left out now, the size comes from the run, not from a new choice (which would be HIDDEN_SIZES[0]).
    again = Trainer(text, tmp_path / "run", {"num_layers": 1, "embedding_dim": 8}, run_config(max_steps=4))
    assert again.model.config.hidden_size == 24 and again.resumed_from_step == 2
    assert again.train().steps == 4


def test_the_speed_probe_counts_against_the_budget_and_leaves_the_weights_alone(tmp_path, text):
    model = {"num_layers": 1, "embedding_dim": 8, "hidden_size": 16}
    probed = Trainer(text, tmp_path / "a", model, run_config(max_seconds=30, max_steps=None))  # dropout left out
    plain = Trainer(text, tmp_path / "b", {**model, "dropout": 0.0}, run_config())
    assert probed.choice is not None and probed.state.elapsed > 0
    assert plain.choice is None and plain.state.elapsed == 0
    for a, b in zip(probed.model.parameters(), plain.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_speed_probe_reads_the_median_step_so_one_slowed_step_does_not_shrink_the_model():
    from worker.engine.probe import robust_speed

    steady = robust_speed([0.10, 0.10, 0.10, 0.10, 0.10], chars_per_step=2048)
    # another process takes the CPU for one step: a mean over the steps would read 40% slower
    disturbed = robust_speed([0.10, 0.10, 0.50, 0.10, 0.10], chars_per_step=2048)
    assert disturbed == steady == 20480
    assert robust_speed([0.1, 0.2, 0.3], chars_per_step=300) == 1500


class StartsAndStops(TrainingObserver):
    """Records every start (with the weights it starts from); stops the run at step `stop_at` of its
    `stop_after`-th start."""

    def __init__(self, stop_at: int, stop_after: int = 2):
        self.starts, self.trainer, self.stop_at, self.stop_after = [], None, stop_at, stop_after

    def on_start(self, info):
        self.starts.append((info, {k: v.clone() for k, v in self.trainer.model.state_dict().items()}))

    def should_stop(self):
        done = len(self.starts) >= self.stop_after and self.trainer.state.step >= self.stop_at
        return "cancelled" if done else None


def test_a_probe_that_read_far_too_slow_is_corrected_by_the_runs_own_speed_before_its_first_checkpoint(
        tmp_path, monkeypatch):
    from worker.engine.probe import RECHECK_SKIP_STEPS, RECHECK_STEPS, SpeedProbe

    measure = SpeedProbe._measure
    monkeypatch.setattr(SpeedProbe, "_measure", lambda probe, hidden: measure(probe, hidden) / 20)
    text = SHAKESPEARE.read_text()[:200_000]
    small = {"num_layers": 1, "embedding_dim": 8}
    observer = StartsAndStops(stop_at=4)
    # A budget that feeds a bigger model at any speed a test machine has (the run is stopped long before).
    config = run_config(max_seconds=200, max_steps=None, eval_every=None, checkpoint_every=1000)
    trainer = Trainer(text, tmp_path / "run", small, config, observer=observer)
    observer.trainer = trainer
    first_size = trainer.model.config.hidden_size
    result = trainer.train()

    (first, _), (second, weights) = observer.starts
    resized = second.model["hidden_size"]
    assert first.model["hidden_size"] == first_size < resized
    steps = RECHECK_SKIP_STEPS + RECHECK_STEPS
    assert second.chosen[0].startswith(f"hidden_size {resized} after {steps} steps instead of {first_size}: ")
    assert "characters/s where the probe read" in second.chosen[0]
    # The run restarted at step 0 with the new size, and its record says so.
    assert result.stopped_by == "cancelled" and result.steps == 4 and result.num_parameters == second.num_parameters
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["model"]["hidden_size"] == resized and run["chosen"] == second.chosen
    # It starts from the weights a run given that size from the first would start from.
    given = {**small, "hidden_size": resized, "dropout": second.model["dropout"]}
    fresh = Trainer(text, tmp_path / "fresh", given, run_config(max_steps=1))
    assert all(torch.equal(weights[k], v) for k, v in fresh.model.state_dict().items())
    # A resume keeps the re-sized model and does not probe or re-check again.
    again = Trainer(text, tmp_path / "run", small, config)
    assert again.model.config.hidden_size == resized and again.resumed_from_step == 4 and again.sizer is None


def test_a_recheck_that_chooses_the_same_size_keeps_the_run_going(tmp_path):
    from worker.engine.probe import RECHECK_SKIP_STEPS, RECHECK_STEPS

    # 1,800 training characters read at most 40 times feed no size above the smallest, at any speed.
    text = SHAKESPEARE.read_text()[:2_000]
    observer = StartsAndStops(stop_at=RECHECK_SKIP_STEPS + RECHECK_STEPS + 2, stop_after=1)
    config = run_config(max_seconds=20, max_steps=None, eval_every=None, checkpoint_every=1000)
    trainer = Trainer(text, tmp_path / "run", {"num_layers": 1, "embedding_dim": 8}, config, observer=observer)
    observer.trainer = trainer
    assert trainer.sizer is not None and trainer.model.config.hidden_size == HIDDEN_SIZES[0]
    result = trainer.train()
    assert len(observer.starts) == 1 and trainer.sizer is None
    assert result.steps == RECHECK_SKIP_STEPS + RECHECK_STEPS + 2
