"""An exponential moving average of the weights: what evaluation, checkpoints and generation use.

The raw weights of a run that ends on a still-high learning rate (or is stopped early, or is evaluated
mid-run) jitter around the basin they are in; their average sits nearer its floor. The average costs one
fused lerp over the parameters per step, and it is part of the training state, so a resumed run
continues it bitwise.
"""

from __future__ import annotations

import copy

import torch

from worker.engine.model import CharRNN


class WeightAverage:
    """`decay` is the weight of the past at each step; early on the average forgets faster
    ((1 + t) / (10 + t), the usual warm-up), so that a short run's average is not its random start."""

    def __init__(self, model: CharRNN, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    def decay_at(self, updates: int) -> float:
        return min(self.decay, (1 + updates) / (10 + updates))

    @torch.no_grad()
    def update(self, model: CharRNN) -> None:
        weight = 1 - self.decay_at(self.updates)
        averaged = list(self.model.parameters())
        torch._foreach_lerp_(averaged, [p.detach() for p in model.parameters()], weight)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"updates": self.updates, "weights": {k: v.detach().clone() for k, v in self.model.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        self.model.load_state_dict(state["weights"])
