"""The model's and the run's configuration: plain dataclasses, importable without torch.

The API validates job requests against these defaults without importing torch (app/ never does),
so they live here rather than beside the code that uses them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Cell = Literal["lstm", "gru", "rnn"]


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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def min_train_chars(batch_size: int, seq_len: int) -> int:
    """The fewest training characters that make one batch of `batch_size` streams (data.StreamBatcher)."""
    return batch_size * (seq_len + 1) + seq_len


def largest_batch_that_fits(train_chars: int, seq_len: int) -> int:
    """The largest batch_size with at least one batch in `train_chars` characters (0 if none)."""
    return max(0, (train_chars - seq_len) // (seq_len + 1))
