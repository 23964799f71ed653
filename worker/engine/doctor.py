"""The training doctor: reads a run's losses as they come and says, in plain words with the numbers, what
is going on and what to change.

    not_learning     training loss still at or above the unigram reference after a fifth of the budget
    diverged         the loss became non-finite or exploded (the trainer stops the run)
    overfitting      validation loss rising over consecutive evaluations while training loss falls
    still_improving  validation loss still falling steeply when the budget ran out
    healthy          none of the above: where the final loss stands against the references

Torch-free and fed plain numbers by the trainer: every training step's loss, every evaluation, the end.
Losses are nats per character (bits = nats / ln 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from worker.engine.config import TrainConfig
from worker.engine.records import Diagnosis

# The not-learning check runs once, when this share of the budget is done and at least this many steps
# have trained (a time budget on a slow machine may spend a fifth on its first steps and speed probe).
NOT_LEARNING_AT = 0.2
NOT_LEARNING_MIN_STEPS = 20
# Training losses averaged for "the training loss now" (one batch's loss is noisy).
RECENT_STEPS = 20
# Over-fitting: validation loss rose at this many consecutive evaluations, each by more than RISE_NATS,
# and stands this far above its best.
RISING_EVALUATIONS = 2
RISE_NATS = 0.002
ABOVE_BEST = 0.01
# Still improving: over the last SLOPE_EVALUATIONS evaluations the validation loss fell at least
# STEEP_SHARE of its average pace over the whole run, and at least MIN_FALL_PER_TENTH nats per tenth of
# the budget (a run that has levelled off falls at a small share of its average pace).
STEEP_SHARE = 0.25
MIN_FALL_PER_TENTH = 0.005
SLOPE_EVALUATIONS = 4
LN2 = math.log(2)
# Learning rates outside this range are the likely cause of a model that does not learn.
DEFAULT_LEARNING_RATE = TrainConfig.learning_rate
USUAL_LEARNING_RATES = (5e-4, 2e-2)


@dataclass(frozen=True)
class EvalPoint:
    step: int
    progress: float  # share of the budget done, 0..1
    val_loss: float
    train_loss: float  # mean of the recent training steps


def _bits(nats: float) -> str:
    return f"{nats:.3f} nats ({nats / LN2:.2f} bits) per character"


class Doctor:
    def __init__(self, references: dict | None, *, learning_rate: float, model: dict):
        """`references`: {"unigram", "bigram"} in nats per character (None: the checks that need them are
        skipped); `learning_rate` and `model` (ModelConfig fields) make the advice concrete."""
        self.references = references
        self.learning_rate, self.model = learning_rate, model
        self.recent: list[float] = []
        self.evals: list[EvalPoint] = []
        self.checked_learning = False
        self.overfitting_since: int | None = None  # the step an over-fitting diagnosis was given at

    # -- what the trainer feeds ------------------------------------------------------------------

    def train_step(self, step: int, loss: float, progress: float) -> Diagnosis | None:
        self.recent = (self.recent + [loss])[-RECENT_STEPS:]
        if self.checked_learning or progress < NOT_LEARNING_AT or step < NOT_LEARNING_MIN_STEPS:
            return None
        self.checked_learning = True
        if progress >= 1:
            return None  # the end's verdict says it
        return self._not_learning(step, f"after {progress:.0%} of the budget")

    def evaluation(self, step: int, progress: float, val_loss: float | None) -> Diagnosis | None:
        if val_loss is None or not self.recent:
            return None
        self.evals.append(EvalPoint(step, progress, val_loss, self.train_loss()))
        if self.overfitting_since is None and self._rising():
            self.overfitting_since = step
            return self._overfitting(step)
        return None

    def end(self, step: int) -> Diagnosis | None:
        """The run's verdict when its budget ran out."""
        if not self.recent:
            return None
        not_learning = self._not_learning(step, "at the end of the run")
        if not_learning:
            return not_learning
        # Still past its best at the end (the best checkpoint is an earlier one): over-fitting stands.
        if self.evals and (self._rising() or self.overfitting_since is not None
                           and self._best().step < self.evals[-1].step):
            return self._overfitting(step)
        return self._still_improving(step) or self._healthy(step)

    def diverged(self, step: int, reason: str) -> Diagnosis:
        return Diagnosis(kind="diverged", message=(
            f"diverged: {reason}. Training stopped here: a diverged model does not recover, so the job "
            f"ends (as failed) rather than train on. The checkpoints written before step {step} are kept. "
            f"Lower learning_rate (now {self.learning_rate:g}), e.g. to {self.learning_rate / 10:g}, or grad_clip"
            + (", or switch cell to lstm or gru" if self.model.get("cell") == "rnn" else "") + "."
        ), step=step)

    # -- the readings ----------------------------------------------------------------------------

    def train_loss(self) -> float:
        return sum(self.recent) / len(self.recent)

    def _best(self) -> EvalPoint:
        return min(self.evals, key=lambda e: e.val_loss)

    def _rising(self) -> bool:
        last = self.evals[-(RISING_EVALUATIONS + 1):]
        if len(last) < RISING_EVALUATIONS + 1:
            return False
        val_rising = all(b.val_loss > a.val_loss + RISE_NATS for a, b in zip(last, last[1:], strict=False))
        train_falling = last[-1].train_loss < last[0].train_loss
        return val_rising and train_falling and last[-1].val_loss > self._best().val_loss + ABOVE_BEST

    def _not_learning(self, step: int, when: str) -> Diagnosis | None:
        if not self.references:
            return None
        # The latest quarter of the steps so far (at most RECENT_STEPS): the loss now, not its start.
        latest = self.recent[-max(1, min(RECENT_STEPS, step // 4)):]
        unigram, bigram, loss = self.references["unigram"], self.references["bigram"], sum(latest) / len(latest)
        if loss < unigram:
            return None
        lr = self.learning_rate
        if lr < USUAL_LEARNING_RATES[0]:
            cause = f"the learning rate is too low (now {lr:g}): raise learning_rate to {DEFAULT_LEARNING_RATE:g}"
        elif lr > USUAL_LEARNING_RATES[1]:
            cause = (f"the learning rate is too high (now {lr:g}), so each step undoes the last: lower "
                     f"learning_rate to {DEFAULT_LEARNING_RATE:g}")
        else:
            cause = (f"the budget is too short for this corpus and model (the learning rate, {lr:g}, is a usual "
                     "one): train longer")
        return Diagnosis(kind="not_learning", message=(
            f"not learning: {when} (step {step}) the training loss is {_bits(loss)}, at or above the "
            f"{unigram:.3f} of a model that knows only how often each character occurs. The model has learned "
            f"only how often each character occurs, or less: its samples are common letters and spaces "
            f"(knowing just the previous character scores {bigram:.3f}). Most likely {cause}. Other causes: a "
            f"corpus with little structure to learn (random or compressed data: check the text is what you "
            f"meant to upload), or a model too small for it (a larger hidden_size)."
        ), step=step)

    def _overfitting(self, step: int) -> Diagnosis:
        best = self._best()
        last = self.evals[-(RISING_EVALUATIONS + 1):]
        dropout, hidden = self.model.get("dropout", 0), self.model.get("hidden_size")
        return Diagnosis(kind="overfitting", message=(
            f"over-fitting: the validation loss rose over the last {len(last) - 1} evaluations "
            f"({last[0].val_loss:.3f} to {last[-1].val_loss:.3f} nats per character) while the training loss "
            f"fell ({last[0].train_loss:.3f} to {last[-1].train_loss:.3f}): the model is learning the training "
            f"text by heart rather than its patterns. The best checkpoint, step {best.step} (validation loss "
            f"{best.val_loss:.3f}), is kept and served. To generalise better: raise dropout (now {dropout:g}), "
            f"use a smaller model (hidden_size now {hidden}), stop earlier (fewer max_epochs), or upload more text."
        ), step=step)

    def _fall_per_tenth(self) -> float | None:
        """How fast the validation loss fell over the last evaluations, in nats per tenth of the budget
        (a least-squares slope; None with too few evaluations)."""
        points = self.evals[-SLOPE_EVALUATIONS:]
        if len(points) < SLOPE_EVALUATIONS:
            return None
        xs, ys = [p.progress for p in points], [p.val_loss for p in points]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        spread = sum((x - mx) ** 2 for x in xs)
        if spread <= 0:
            return None
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / spread
        return -slope / 10

    def _still_improving(self, step: int) -> Diagnosis | None:
        fall = self._fall_per_tenth()
        if fall is None:
            return None
        first, last = self.evals[0], self.evals[-1]
        average = (first.val_loss - last.val_loss) / max(last.progress - first.progress, 1e-9) / 10
        if fall < MIN_FALL_PER_TENTH or fall < STEEP_SHARE * average:
            return None
        val = last.val_loss
        # Losses fall ever more slowly: assume a budget twice as long gains half of what the same fall
        # kept up for another whole budget would.
        estimate = max(0.0, val - fall * 10 / 2)
        return Diagnosis(kind="still_improving", message=(
            f"still improving: when the budget ran out the validation loss ({_bits(val)}) was still falling "
            f"by about {fall:.3f} nats per tenth of the budget over the last {SLOPE_EVALUATIONS} evaluations. "
            f"A budget twice as long would likely bring it to about {estimate:.2f} (assuming the fall slows, "
            f"as it does). Train longer (a larger max_steps, max_epochs or max_seconds), or continue this run "
            f"from its checkpoint with init_from."
        ), step=step)

    def _healthy(self, step: int) -> Diagnosis:
        val = self.evals[-1].val_loss if self.evals else None
        loss = val if val is not None else self.train_loss()
        which = "validation" if val is not None else "training"
        parts = [f"healthy: the final {which} loss is {_bits(loss)}"]
        if self.references:
            unigram, bigram = self.references["unigram"], self.references["bigram"]
            share = (unigram - loss) / unigram if unigram > 0 else 0.0
            side = "below" if loss < bigram else "above"
            parts.append(
                f"{share:.0%} of the way from the unigram reference ({unigram:.3f}, a model that knows only "
                f"character frequencies) to 0, and {abs(bigram - loss):.3f} {side} the bigram reference "
                f"({bigram:.3f}, a model that knows only the previous character)"
            )
            if loss >= bigram:
                parts.append("a bigger model or a longer budget should get it below the bigram reference")
        message = parts[0] + (", " + "; ".join(parts[1:]) if parts[1:] else "") + "."
        return Diagnosis(kind="healthy", message=message, step=step)
