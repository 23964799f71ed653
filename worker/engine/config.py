"""The model's and the run's configuration: plain dataclasses, importable without torch.

The API validates job requests against these defaults without importing torch (app/ never does),
so they live here rather than beside the code that uses them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Cell = Literal["lstm", "gru", "rnn"]

# With no stopping rule given, a run stops here: a few minutes on a laptop CPU, seconds on a GPU.
DEFAULT_MAX_STEPS = 2000


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    cell: Cell = "lstm"
    hidden_size: int = 384  # measured best for a 2-minute CPU budget (benchmarks/RESULTS.md: choosing the defaults)
    num_layers: int = 2
    embedding_dim: int = 64  # small: a character carries little information, the state carries the rest
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class TrainConfig:
    seq_len: int = 128  # characters of backprop per window; the carried state reaches further back
    batch_size: int = 32  # parallel streams
    learning_rate: float = 3e-3  # peak; LSTMs of this size tolerate a high rate with clipping
    min_lr_ratio: float = 0.1  # the cosine decay ends at learning_rate * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max global gradient norm; RNN gradients spike, this keeps a step sane
    max_steps: int | None = None
    max_epochs: float | None = None
    max_seconds: float | None = None
    val_fraction: float = 0.1
    eval_every: int = 500
    checkpoint_every: int = 500
    log_every: int = 10
    sample_length: int = 200  # characters of sample text shown at each evaluation
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    gpus: int = 1  # data-parallel processes (distributed.py): GPUs with NCCL, or CPU processes with gloo
    precision: str = "auto"  # auto | fp32 | bf16

    def __post_init__(self) -> None:
        # The default stopping rule is written into the config itself, so that a job's stored settings
        # and a run's run.json say when it stops; the trainer has no hidden rule of its own.
        if self.max_steps is None and self.max_epochs is None and self.max_seconds is None:
            self.max_steps = DEFAULT_MAX_STEPS

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


# -- rules the API checks before a job queues and the engine checks before it trains ------------------
# One function and one message each: each returns what is wrong and what to change, or None if fine.


def min_train_chars(batch_size: int, seq_len: int) -> int:
    """The fewest training characters that make one batch of `batch_size` streams (data.StreamBatcher)."""
    return batch_size * (seq_len + 1) + seq_len


def largest_batch_that_fits(train_chars: int, seq_len: int) -> int:
    """The largest batch_size with at least one batch in `train_chars` characters (0 if none)."""
    return max(0, (train_chars - seq_len) // (seq_len + 1))


def split_sizes(num_chars: int, val_fraction: float) -> tuple[int, int]:
    """(training, validation) characters: the last `val_fraction` of the text is held out (data.split_train_val)."""
    n_val = int(num_chars * val_fraction)
    return num_chars - n_val, n_val


def too_few_training_chars(train_chars: int, batch_size: int, seq_len: int) -> str | None:
    needed = min_train_chars(batch_size, seq_len)
    if train_chars >= needed:
        return None
    fitting_batch = largest_batch_that_fits(train_chars, seq_len)
    fix = (f"batch_size={fitting_batch}" if fitting_batch >= 1
           else f"batch_size=1 and seq_len={max(1, (train_chars - 1) // 2)}")
    return (
        f"the training text has {train_chars:,} characters, too few for batch_size={batch_size} "
        f"and seq_len={seq_len} (needs at least {needed:,}). Upload more text, or lower "
        f"batch_size or seq_len (this text fits {fix})."
    )


def too_small_validation_split(num_chars: int, val_fraction: float) -> str | None:
    _, n_val = split_sizes(num_chars, val_fraction)
    if val_fraction <= 0 or n_val >= 2:
        return None
    return (
        f"val_fraction={val_fraction} holds out {n_val} character(s) of {num_chars:,}; at least 2 are needed. "
        "Raise val_fraction, set it to 0 (no validation), or upload more text."
    )


def batch_not_divisible(batch_size: int, gpus: int) -> str | None:
    if batch_size % gpus == 0:
        return None
    return (
        f"batch_size={batch_size} must be a multiple of gpus={gpus} (each process trains an equal share "
        f"of the streams); try batch_size={batch_size // gpus * gpus or gpus}"
    )
