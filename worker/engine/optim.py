"""The optimizer: AdamW for every parameter, or Muon for the recurrent core's weight matrices with AdamW
for the rest (embedding, output head, biases).

Muon (torch.optim.Muon) orthogonalises each matrix's momentum, so every direction of the matrix moves
at the same rate; it is made for the hidden weight matrices only, never for an embedding or an output
layer. With `adjust_lr_fn="match_rms_adamw"` its steps have AdamW's size at the same learning rate, so
one schedule (trainer.lr_at) drives both halves.
"""

from __future__ import annotations

import torch

from worker.engine.model import CharRNN

BETAS = (0.9, 0.99)  # a short memory for the second moment suits short, noisy runs
OPTIMIZERS = ("adamw", "muon")


def decay_groups(model: CharRNN, weight_decay: float, params: list[tuple[str, torch.nn.Parameter]]) -> list[dict]:
    """Weight decay on matrices, none on biases and the embedding."""
    decay = [p for n, p in params if p.dim() >= 2 and "embedding" not in n]
    no_decay = [p for n, p in params if not (p.dim() >= 2 and "embedding" not in n)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(model: CharRNN, lr: float, weight_decay: float, params=None, device_type: str = "cpu"):
    return torch.optim.AdamW(
        decay_groups(model, weight_decay, params if params is not None else list(model.named_parameters())),
        lr=lr,
        betas=BETAS,
        # The fused kernel is for GPUs; on this CPU it measured slower than torch's default loop.
        fused=True if device_type == "cuda" else None,
    )


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer object for the trainer: its param_groups are AdamW's then Muon's (the trainer sets
    every group's learning rate), its state dict holds both halves."""

    def __init__(self, model: CharRNN, lr: float, weight_decay: float, device_type: str = "cpu",
                 muon_lr: float | None = None):
        named = list(model.named_parameters())
        matrices = [p for n, p in named if n.startswith("rnn.weight_")]
        rest = [(n, p) for n, p in named if not n.startswith("rnn.weight_")]
        self.adamw = adamw(model, lr, weight_decay, rest, device_type)
        self.muon = torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
        # A fixed multiple of the shared schedule's rate for the Muon half (1 by default).
        self.muon_multiplier = (muon_lr / lr) if muon_lr else 1.0
        # Not torch.optim.Optimizer.__init__: the halves own the state; this object only routes.
        self.defaults = {"lr": lr}
        self.state = {}

    @property
    def param_groups(self) -> list[dict]:
        return self.adamw.param_groups + self.muon.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.adamw.zero_grad(set_to_none=set_to_none)
        self.muon.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure=None):
        self.adamw.step()
        rates = [g["lr"] for g in self.muon.param_groups]
        for g in self.muon.param_groups:
            g["lr"] *= self.muon_multiplier
        self.muon.step()
        for g, rate in zip(self.muon.param_groups, rates, strict=True):
            g["lr"] = rate

    def state_dict(self) -> dict:
        return {"adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.adamw.load_state_dict(state["adamw"])
        self.muon.load_state_dict(state["muon"])


def build_optimizer(model: CharRNN, kind: str, lr: float, weight_decay: float, device_type: str = "cpu"):
    """The trainer's optimizer by name (TrainConfig.optimizer)."""
    if kind == "muon":
        return MuonWithAdamW(model, lr=lr, weight_decay=weight_decay, device_type=device_type)
    return adamw(model, lr, weight_decay, device_type=device_type)
