"""The model size, dropout and epoch limit charrnn chooses when a run leaves them out.

A run is limited either by its budget (time, steps or epochs: how many characters it will train on)
or by its corpus (how many different characters there are to learn from). The measurements behind
these rules are in benchmarks/RESULTS.md ("Quality: held-out loss after two minutes", "Beating the plain
loop in a time budget"), on three kinds of corpora:
- for a fixed budget, a model much bigger than the budget can feed is under-trained and one much
  smaller under-fits: the best held-out loss came at 1.5 to 2.3 training characters per parameter (two
  minutes of tinyshakespeare on 2-core CPUs: 2x384 at 2.3 beat 2x256 at 9.9 and 2x512 at 0.8 on one;
  2x384 at about 1.6 beat 2x256 at about 5 by 0.02 on a machine half as fast). The threshold is below
  that optimum because the speed probe reads 20% high or low on a shared machine, and a size just
  under the optimum costs more than one just over it;
- once the budget reads the corpus many times over, a model learns the corpus by heart: dropout
  between the layers, more the more epochs the budget holds, slows that down, and past MAX_EPOCHS
  the held-out loss only rose (even at dropout 0.5), so the run stops there, its learning rate
  decaying to that point.

Torch-free (the API imports it to say what a queued job leaves to the worker). For a time budget the
characters depend on this machine's speed, which the trainer measures with a short probe (probe.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from worker.engine.config import TrainConfig, estimate_training_bytes, num_parameters

# Fields chosen here when a run does not give them; every other field has a fixed default.
AUTO_MODEL_FIELDS = ("hidden_size", "dropout")
# Training fields chosen with them, when the run does not give them (see MAX_EPOCHS).
AUTO_TRAINING_FIELDS = ("max_epochs",)
HIDDEN_SIZES = (128, 192, 256, 384, 512, 768, 1024)
CHARS_PER_PARAMETER = 1.0
# Dropout by epochs the budget holds: none up to DROPOUT_FREE_EPOCHS, then DROPOUT_PER_DOUBLING more
# each time the epochs double, up to MAX_DROPOUT.
DROPOUT_FREE_EPOCHS = 4.0
DROPOUT_PER_DOUBLING = 0.15
MAX_DROPOUT = 0.5
# A run that leaves its size to us and gives no max_epochs reads its corpus at most this many times.
MAX_EPOCHS = 40


@dataclass(frozen=True)
class Choice:
    model: dict  # the chosen model fields only
    budget_chars: int  # characters the run is expected to train on
    epochs: float  # how many times over that reads the training text
    reasons: tuple[str, ...]
    training: dict = field(default_factory=dict)  # the chosen training fields only (max_epochs)

    def summary(self) -> str:
        return "; ".join(self.reasons)


def budget_chars(training: TrainConfig, train_chars: int, chars_per_second: float | None) -> int:
    """Characters the run will train on: the tightest of its stopping rules (a time budget needs the
    measured speed of this machine)."""
    per_step = training.batch_size * training.seq_len
    limits = []
    if training.max_steps:
        limits.append(training.max_steps * per_step)
    if training.max_epochs:
        limits.append(int(training.max_epochs * train_chars))
    if training.max_seconds and chars_per_second:
        limits.append(int(training.max_seconds * chars_per_second))
    return max(per_step, min(limits)) if limits else per_step


def needs_speed(given_model: dict, training: TrainConfig) -> bool:
    """Whether choosing needs this machine's speed: a field is left to us and time may stop the run."""
    return bool(training.max_seconds) and any(k not in given_model for k in AUTO_MODEL_FIELDS)


def choose_model(
    given_model: dict,
    *,
    vocab_size: int,
    train_chars: int,
    training: TrainConfig,
    speed: Callable[[int], float] | None = None,
    memory_limit: int | None = None,
) -> Choice:
    """The model fields a run leaves out, chosen for its budget and corpus; `speed(hidden_size)` is
    this machine's training speed in characters per second (needed for a time budget only). No size
    whose training would need more than `memory_limit` bytes is chosen."""
    cell = given_model.get("cell", "lstm")
    layers = given_model.get("num_layers", 2)
    embedding = given_model.get("embedding_dim", 64)
    reasons = []

    def fits(hidden: int) -> bool:
        if memory_limit is None:
            return True
        need = estimate_training_bytes(vocab_size=vocab_size, cell=cell, hidden_size=hidden, num_layers=layers,
                                       embedding_dim=embedding, batch_size=training.batch_size,
                                       seq_len=training.seq_len, gpus=training.gpus)
        return need["total"] <= memory_limit

    # A run that leaves its size to us is sized for what it will read, and stops reading at MAX_EPOCHS;
    # a run that gives its size keeps its own budget.
    epoch_cap = MAX_EPOCHS if "hidden_size" not in given_model and not training.max_epochs else None

    def budget_for(hidden: int) -> int:
        """The budget's characters for a model of this size (its speed decides them for a time budget)."""
        return budget_chars(training, train_chars, speed(hidden) if speed and training.max_seconds else None)

    def chars_for(hidden: int) -> int:
        """What a model of this size would train on: the budget's characters, at most epoch_cap epochs."""
        chars = budget_for(hidden)
        return min(chars, epoch_cap * train_chars) if epoch_cap else chars

    if "hidden_size" in given_model:
        hidden = given_model["hidden_size"]
    else:
        # The largest size the run can still feed CHARS_PER_PARAMETER characters per parameter. Bigger
        # sizes only get fewer characters per parameter: stop at the first that falls short (and probe
        # no bigger one).
        hidden = HIDDEN_SIZES[0]
        for candidate in HIDDEN_SIZES[1:]:
            params = num_parameters(vocab_size, cell, candidate, layers, embedding)
            if not fits(candidate) or chars_for(candidate) < CHARS_PER_PARAMETER * params:
                break
            hidden = candidate
        params = num_parameters(vocab_size, cell, hidden, layers, embedding)
        reasons.append(
            f"hidden_size {hidden}: the budget trains on about {_millions(chars_for(hidden))} characters, "
            f"{chars_for(hidden) / params:.1f} per parameter ({params:,} parameters)"
        )
    chars = chars_for(hidden)
    epochs = chars / max(train_chars, 1)
    chosen_training = {}
    uncapped = budget_for(hidden)
    if epoch_cap and uncapped > chars:
        chosen_training["max_epochs"] = epoch_cap
        reasons.append(
            f"max_epochs {epoch_cap}: the budget would read the {_millions(train_chars)} training characters "
            f"{uncapped / max(train_chars, 1):.0f} times, and past {epoch_cap} the held-out loss only rises"
        )

    if "dropout" in given_model:
        dropout = given_model["dropout"]
    else:
        doublings = math.log2(epochs / DROPOUT_FREE_EPOCHS) if epochs > DROPOUT_FREE_EPOCHS else 0.0
        dropout = min(MAX_DROPOUT, round(DROPOUT_PER_DOUBLING * doublings / 0.05) * 0.05)
        dropout = round(dropout, 2)
        reasons.append(
            f"dropout {dropout:g}: it reads the {_millions(train_chars)} training characters about {epochs:.1f} times"
        )
    chosen = {k: v for k, v in (("hidden_size", hidden), ("dropout", dropout)) if k not in given_model}
    return Choice(model=chosen, budget_chars=chars, epochs=epochs, reasons=tuple(reasons), training=chosen_training)


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 100_000 else f"{n:,}"
