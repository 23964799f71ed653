"""The char-rnn model: embedding -> stacked RNN/LSTM/GRU -> linear projection to the vocabulary.

The recurrent core is torch's own fused nn.RNN / nn.LSTM / nn.GRU, so cuDNN runs it on a GPU and
oneDNN on a CPU; nothing here is hand-unrolled except the one-character sampling step (sampler.py)
and, for inspection only, an LSTM's elementwise cell-state recurrence (layer_states).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from worker.engine.config import ModelConfig
from worker.engine.errors import ConfigError, InputError

Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # (h,) for rnn/gru, (h, c) for lstm

CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.cell not in CELLS:
            raise ConfigError(f"cell must be one of {sorted(CELLS)}, got {config.cell!r}")
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
        # nn.RNNBase applies dropout between layers only (not after the last one): that is what we want.
        self.rnn = CELLS[config.cell](
            config.embedding_dim,
            config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        # Dropout with p=0 still draws a mask in training mode: skip it entirely.
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_hidden(self, batch_size: int, device: torch.device | str = "cpu") -> Hidden:
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        h = torch.zeros(shape, device=device)
        return (h, torch.zeros_like(h)) if self.config.cell == "lstm" else h

    def forward(self, x: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        """x: (B, T) character ids -> logits (B, T, V), new hidden state."""
        out, hidden = self.rnn(self.embedding(x), hidden)
        return self.head(self.drop(out)), hidden


def autocast(device_type: str, dtype: torch.dtype | None):
    """Autocast to `dtype`, or nothing at all for None: even a disabled torch.autocast costs about
    10% of an fp32 training step on a CPU (measured: 0.86x -> 0.98x of a plain loop without it)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)


def detach_hidden(hidden: Hidden) -> Hidden:
    """Truncated BPTT: keep the state's value, cut the graph that produced it."""
    if isinstance(hidden, tuple):
        return tuple(h.detach() for h in hidden)
    return hidden.detach()


def hidden_to_list(hidden: Hidden) -> list[torch.Tensor]:
    """The state as plain CPU tensors for a checkpoint, dtype kept so that a resume is bitwise exact."""
    return [h.detach().cpu() for h in (hidden if isinstance(hidden, tuple) else (hidden,))]


def hidden_from_list(tensors: list[torch.Tensor], cell: str, device: torch.device | str) -> Hidden:
    tensors = [t.to(device) for t in tensors]
    return tuple(tensors) if cell == "lstm" else tensors[0]


@torch.inference_mode()
def mean_cross_entropy(
    model: CharRNN,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    chunk_len: int = 256,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[float, int]:
    """Sum of the per-character cross-entropy over (S, L) streams, carried chunk by chunk.

    Returns (mean loss in nats per character, number of characters scored); targets of -100 are skipped.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    hidden, total, count = None, 0.0, 0
    for start in range(0, inputs.shape[1], chunk_len):
        x = inputs[:, start : start + chunk_len].to(device)
        y = targets[:, start : start + chunk_len].to(device)
        with autocast(device.type, autocast_dtype):
            logits, hidden = model(x, hidden)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum", ignore_index=-100).item()
        count += int((y != -100).sum())
    model.train(was_training)
    return total / max(count, 1), count


@torch.inference_mode()
def layer_states(model: CharRNN, x: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each step's hidden state h of `layer` (and an LSTM's cell state c), for one sequence x (T,) of ids,
    from a zero state: (T, hidden) each, c None for rnn/gru. For inspection, not training.

    The fused nn.LSTM/GRU/RNN returns only the last layer's per-step output and no per-step cell state,
    so the layers run fused one at a time (weights shared, not copied) and an LSTM's cell states are
    recomputed from its h: every step's gates at once, then only the cheap elementwise recurrence."""
    config = model.config
    if not 0 <= layer < config.num_layers:
        raise InputError(
            f"layer must be between 0 and {config.num_layers - 1} for this model, got {layer}", param="layer"
        )
    return each_layer_states(model, x, layer)[layer]


@torch.inference_mode()
def each_layer_states(model: CharRNN, x: torch.Tensor, last: int | None = None) -> list[tuple]:
    """layer_states of every layer up to `last` (default: all), each layer run once."""
    rnn, cell = model.rnn, model.config.cell
    last = model.config.num_layers - 1 if last is None else last
    out = model.embedding(x.unsqueeze(0))  # (1, T, E)
    states = []
    for index in range(last + 1):
        weights = [getattr(rnn, f"{name}_l{index}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        inputs, out = out, _single_layer(rnn, out, weights)
        states.append((out[0], _lstm_cell_states(inputs[0], out[0], *weights) if cell == "lstm" else None))
    return states


def _single_layer(rnn: nn.RNNBase, inputs: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """One layer of `rnn` over (1, T, in), fused, with that layer's own weights (functional_call: no copy)."""
    extra = {"nonlinearity": rnn.nonlinearity} if isinstance(rnn, nn.RNN) else {}
    single = type(rnn)(inputs.shape[-1], rnn.hidden_size, num_layers=1, batch_first=True, **extra).to(inputs.device)
    names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    return torch.func.functional_call(single, dict(zip(names, weights, strict=True)), (inputs,))[0]


def _lstm_cell_states(inputs: torch.Tensor, h: torch.Tensor, w_ih, w_hh, b_ih, b_hh) -> torch.Tensor:
    """An LSTM layer's cell state at every step, from its inputs (T, in) and its outputs h (T, H)."""
    h_before = torch.cat([torch.zeros_like(h[:1]), h[:-1]])  # the state each step starts from
    i, f, g, _ = (F.linear(inputs, w_ih, b_ih) + F.linear(h_before, w_hh, b_hh)).chunk(4, dim=1)
    forget, added = torch.sigmoid(f), torch.sigmoid(i) * torch.tanh(g)
    c = torch.zeros_like(h[0])
    cs = []
    for t in range(h.shape[0]):
        c = torch.addcmul(added[t], forget[t], c)
        cs.append(c)
    return torch.stack(cs)
