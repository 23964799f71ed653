"""The model's and the run's configuration: plain dataclasses, importable without torch.

The API validates job requests against these defaults without importing torch (app/ never does),
so they live here rather than beside the code that uses them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from worker.engine.errors import ConfigError

Cell = Literal["lstm", "gru", "rnn"]

# With no stopping rule given, a run stops here: a few minutes on a laptop CPU, seconds on a GPU.
DEFAULT_MAX_STEPS = 2000


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    cell: Cell = "lstm"
    # Left out of a run's settings, the size and dropout are chosen for its budget and corpus
    # (autoconfig.py); these are the values for a model built directly.
    hidden_size: int = 384
    num_layers: int = 2
    embedding_dim: int = 64  # small: a character carries little information, the state carries the rest
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # The API bounds these more tightly (app/jobs/schemas.py); here the command line gets a message
        # naming the setting instead of torch's, whose words are its own.
        for name in ("hidden_size", "num_layers", "embedding_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: got {getattr(self, name)}; it must be at least 1")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout: got {self.dropout}; it must be at least 0 and below 1 (0.1 to 0.5 is usual)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class TrainConfig:
    # Characters of backprop per window; the carried state reaches further back. Shorter windows mean more
    # steps in the same time: after 2 minutes of tinyshakespeare at 2x384, 64 was 0.035 nats better than
    # 128 and 32 another 0.023 better than 64; 16 was worse, its steps dominated by the optimizer's fixed
    # cost (benchmarks/RESULTS.md).
    seq_len: int = 32
    batch_size: int = 32  # parallel streams
    learning_rate: float = 3e-3  # peak; LSTMs of this size tolerate a high rate with clipping
    # The linear decay ends at learning_rate * min_lr_ratio. To zero: after 3,000 steps of 2x384 (a 120 s
    # budget's), 0.011 nats better than ending at 10% (benchmarks/RESULTS.md, section 10).
    min_lr_ratio: float = 0.0
    # The share of the run, at its end, over which the rate decays; before it the rate holds at its peak
    # (warmup-stable-decay). 1 decays from the start.
    decay_fraction: float = 1.0
    warmup_steps: int = 0  # AdamW with clipping needs none here; 50 (with cosine decay) cost 0.010 nats
    # On the weight matrices only (optim.decay_groups). 0.1 was 0.010 nats better than 0.01 after those
    # 3,000 steps, and 0.3 0.006 better; dropout 0.1 on top was worse.
    weight_decay: float = 0.1
    # adamw, or muon: Muon for the recurrent core's weight matrices, AdamW for the rest (optim.py)
    optimizer: str = "adamw"
    # The weights evaluated, checkpointed and sampled from are their exponential moving average at this
    # decay (averaging.py); None trains and serves the raw weights.
    ema_decay: float | None = None
    grad_clip: float = 1.0  # max global gradient norm; RNN gradients spike, this keeps a step sane
    max_steps: int | None = None
    max_epochs: float | None = None
    max_seconds: float | None = None
    val_fraction: float = 0.1
    # None: about a dozen evaluations spaced over the budget, whatever stops it (trainer.EVALUATIONS_PER_RUN)
    eval_every: int | None = None
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


# -- memory: estimated before a job queues (the API) so the OOM killer never has to decide -------------

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
# Per parameter: fp32 weights, their gradients, and AdamW's two moment buffers.
BYTES_PER_PARAMETER = 4 * (1 + 1 + 2)
# Per gate value of the recurrent core, per character: the gate pre-activations and activations kept for
# backprop, the layer's outputs and (LSTM) cell states, and the fused kernels' workspace. A round factor
# over the bare gates*hidden, measured to err on the high side rather than to be exact.
ACTIVATION_FACTOR = 3
# Output logits per character: the logits, the softmax, and their gradient.
LOGIT_COPIES = 3


def num_parameters(vocab_size: int, cell: str, hidden_size: int, num_layers: int, embedding_dim: int) -> int:
    """Exactly model.CharRNN's parameter count: embedding, the stacked cell (two biases per layer), head."""
    gates = GATES[cell]
    recurrent = 0
    for layer in range(num_layers):
        inputs = embedding_dim if layer == 0 else hidden_size
        recurrent += gates * hidden_size * (inputs + hidden_size) + 2 * gates * hidden_size
    return vocab_size * embedding_dim + recurrent + hidden_size * vocab_size + vocab_size


def estimate_training_bytes(
    *,
    vocab_size: int,
    cell: str,
    hidden_size: int,
    num_layers: int,
    embedding_dim: int,
    batch_size: int,
    seq_len: int,
    gpus: int = 1,
) -> dict[str, int]:
    """The memory a training run needs, by part, in bytes (fp32; bf16 autocast needs less). Every one of
    `gpus` processes holds the model, its gradients and optimizer state; the batch is split between them."""
    params = num_parameters(vocab_size, cell, hidden_size, num_layers, embedding_dim)
    chars = batch_size * seq_len
    parts = {
        "parameters": params,
        "model_and_optimizer": params * BYTES_PER_PARAMETER * gpus,
        "activations": chars * (hidden_size * num_layers * GATES[cell] * ACTIVATION_FACTOR + embedding_dim) * 4,
        "logits": chars * vocab_size * 4 * LOGIT_COPIES,
    }
    parts["total"] = parts["model_and_optimizer"] + parts["activations"] + parts["logits"]
    return parts


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:,} bytes" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def too_much_memory(estimate: dict[str, int], limit: int) -> str | None:
    if estimate["total"] <= limit:
        return None
    per_char = "activations (batch_size x seq_len x hidden_size x num_layers)"
    biggest = max(("model_and_optimizer", "activations", "logits"), key=estimate.__getitem__)
    advice = {
        "model_and_optimizer": "lower hidden_size or num_layers (the weights, gradients and AdamW state dominate)",
        "activations": f"lower batch_size or seq_len first, then hidden_size or num_layers (the {per_char} dominate)",
        "logits": "lower batch_size or seq_len (the output logits, batch x seq_len x vocabulary, dominate)",
    }[biggest]
    return (
        f"this job would need about {_size(estimate['total'])} of memory to train "
        f"({estimate['parameters']:,} parameters: {_size(estimate['model_and_optimizer'])} for weights, gradients "
        f"and optimizer state; {_size(estimate['activations'])} of activations; {_size(estimate['logits'])} of "
        f"output logits), more than the worker's limit of {_size(limit)} (CHARRNN_WORKER_MEMORY_BYTES). "
        f"To fit, {advice}."
    )
