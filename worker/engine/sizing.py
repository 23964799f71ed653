"""Sizing a run's model: chosen before the run for its budget, checked once against its own first steps.

    Sizer(given fields, settings, ...)
      .choose()                         before step 1: probe this machine's speed where the budget is
                                        time (probe.py), then autoconfig's rules pick the fields left
                                        out (autoconfig.py)
      .recheck(step, seconds, elapsed)  after each of the first RECHECK_SKIP_STEPS + RECHECK_STEPS steps:
                                        once they are timed, choose again at the run's own speed; a new
                                        size is returned, and the trainer starts the run again at step 0
                                        with it

The trainer asks for the recheck only until the run's first evaluation or checkpoint: from then on the
model is the one it reported or saved. A run that resumes keeps the model in its run.json and is not
sized again. Under data parallelism rank 0's probe decides for every rank, and there is no recheck
(the ranks would have to rebuild their models and DDP wrappers together).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from worker.engine.autoconfig import AUTO_TRAINING_FIELDS, Choice, choose_model, needs_speed
from worker.engine.config import TrainConfig
from worker.engine.distributed import DistContext
from worker.engine.probe import SpeedProbe, SpeedRecheck


def apply_training_choice(config: TrainConfig, chosen: dict, given: TrainConfig | None = None) -> None:
    """Set the training fields autoconfig chose (an epoch limit) on `config` where the run did not set
    them itself. `given` holds the settings as the run gave them (by default `config` as it is): a
    second choice replaces the first's limit rather than keeping it."""
    given = given or config
    for key in AUTO_TRAINING_FIELDS:
        value = getattr(given, key)
        setattr(config, key, value if value is not None else chosen.get(key))


class Sizer:
    """Chooses the model fields a run leaves out (`choose`), and once, on the run's first steps,
    chooses again at the run's own speed (`recheck`)."""

    def __init__(self, given: dict, training: TrainConfig, *, vocab_size: int, train_chars: int,
                 memory_limit: int | None, device: torch.device, autocast_dtype: torch.dtype | None,
                 dist: DistContext):
        self.given, self.vocab_size, self.train_chars = given, vocab_size, train_chars
        self.memory_limit, self.dist = memory_limit, dist
        # The settings as the run gave them: a second choice starts from these, not from the first
        # choice's epoch limit.
        self.training = replace(training)
        self.probe = None
        if needs_speed(given, training):
            self.probe = SpeedProbe(vocab_size, {k: v for k, v in given.items() if k != "hidden_size"},
                                    training.batch_size // dist.world_size, training.seq_len,
                                    device, autocast_dtype, training.optimizer)
        self.choice: Choice | None = None
        self.timing: SpeedRecheck | None = None  # the run's own steps, while the recheck is still to come
        self._counted = 0.0  # probe seconds already handed to the run's clock (spent)

    @property
    def rechecks(self) -> bool:
        """Whether a recheck is still to come."""
        return self.timing is not None

    def choose(self) -> Choice:
        """The fields left out, chosen for the budget (probing this machine's speed where it is time)."""
        speed = (lambda hidden: self.probe(hidden) * self.dist.world_size) if self.probe else None
        choice = choose_model(self.given, vocab_size=self.vocab_size, train_chars=self.train_chars,
                              training=self.training, speed=speed, memory_limit=self.memory_limit)
        # Every rank builds the same model: rank 0's probe decides.
        self.choice = self.dist.from_main(choice)
        if self.probe and "hidden_size" in self.choice.model and not self.dist.enabled:
            self.timing = SpeedRecheck(self.training.batch_size * self.training.seq_len)
        return self.choice

    def recheck(self, step: int, step_seconds: float, elapsed: float) -> Choice | None:
        """Time step `step` (1-based; `elapsed`: the run's seconds so far). Once enough steps are timed,
        choose again at the run's own speed, for the budget that is left: the new choice if its size
        differs from the one the run trains (it then starts again at step 0 with it, its seconds so far
        still counting), else None. Chooses again once only."""
        measured = self.timing.add(step, step_seconds) if self.timing else None
        if measured is None:
            return None
        self.timing = None
        hidden = self.choice.model["hidden_size"]
        probed = self.probe(hidden)
        # Every size is as much faster or slower than its probe as this one is.
        speed = lambda size: self.probe(size) * measured / probed  # noqa: E731
        left = replace(self.training, max_seconds=max(self.training.max_seconds - elapsed, 1.0))
        choice = choose_model(self.given, vocab_size=self.vocab_size, train_chars=self.train_chars, training=left,
                              speed=speed, memory_limit=self.memory_limit)
        if choice.model["hidden_size"] == hidden:
            return None
        why = (f"hidden_size {choice.model['hidden_size']} after {step} steps instead of {hidden}: this "
               f"run trains at {measured:,.0f} characters/s where the probe read {probed:,.0f}")
        self.choice = replace(choice, reasons=(why, *choice.reasons))
        return self.choice

    def spent(self) -> float:
        """Seconds spent probing since the last call: they count against the run's time budget."""
        total = self.probe.seconds if self.probe else 0.0
        seconds, self._counted = total - self._counted, total
        return seconds
