"""How fast this machine trains a model of a given size: a few real training steps, timed.

A time budget buys as many characters as the machine can train in it; autoconfig.py turns that into
a model size. The probe takes well under a second per size on a CPU for the sizes a CPU budget picks
(autoconfig stops at the first size too big for the budget), and its time counts against the budget.
The run then re-checks it on its own first steps (SpeedRecheck) and may change the size once, before
its first evaluation or checkpoint.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from worker.engine.config import ModelConfig
from worker.engine.model import CharRNN, autocast
from worker.engine.optim import build_optimizer

WARMUP_STEPS = 2  # the first steps pay for allocations and kernel selection
TIMED_STEPS = 5


def robust_speed(step_seconds: list[float], chars_per_step: int) -> float:
    """Characters per second from each timed step's seconds: the median step, so that one step slowed by
    another process on a shared machine (or a late allocation) does not shrink the chosen model."""
    return chars_per_step / statistics.median(step_seconds)


class SpeedProbe:
    """`probe(hidden_size)`: characters per second of a training step of that size here (cached)."""

    def __init__(self, vocab_size: int, model_fields: dict, batch_size: int, seq_len: int,
                 device: torch.device, autocast_dtype: torch.dtype | None, optimizer: str = "adamw"):
        self.vocab_size, self.model_fields, self.optimizer = vocab_size, model_fields, optimizer
        self.batch_size, self.seq_len = batch_size, seq_len
        self.device, self.autocast_dtype = device, autocast_dtype
        self.seconds = 0.0  # spent probing, all sizes together
        self._speeds: dict[int, float] = {}

    def __call__(self, hidden_size: int) -> float:
        if hidden_size not in self._speeds:
            started = time.perf_counter()
            # The probe's models must not move the run's random numbers: its weights start the same
            # whatever was probed.
            with torch.random.fork_rng(devices=[]):
                self._speeds[hidden_size] = self._measure(hidden_size)
            self.seconds += time.perf_counter() - started
        return self._speeds[hidden_size]

    def _measure(self, hidden_size: int) -> float:
        fields = {**self.model_fields, "hidden_size": hidden_size}
        model = CharRNN(ModelConfig(vocab_size=self.vocab_size, **fields)).to(self.device).train()
        optimizer = build_optimizer(model, self.optimizer, lr=1e-3, weight_decay=0.0, device_type=self.device.type)
        x = torch.randint(self.vocab_size, (self.batch_size, self.seq_len + 1), device=self.device)
        inputs, targets = x[:, :-1], x[:, 1:]
        step_seconds = []
        for step in range(WARMUP_STEPS + TIMED_STEPS):
            started = time.perf_counter()
            with autocast(self.device.type, self.autocast_dtype):
                logits, _ = model(inputs)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()  # waits for a GPU to finish this step
            if step >= WARMUP_STEPS:
                step_seconds.append(time.perf_counter() - started)
        return robust_speed(step_seconds, self.batch_size * self.seq_len)


# The run re-checks the probe on its own steps: the first few pay for allocations, as the probe's do.
RECHECK_SKIP_STEPS = 3
RECHECK_STEPS = 20


class SpeedRecheck:
    """The run's own training speed over its first steps. The probe times bare steps on random text as
    the process starts; the run's steps also clip, carry their state and read batches, and a shared
    machine's speed drifts: a probe that read a quarter low chose 2x256 where the run's own speed
    called for 2x384 (benchmarks/RESULTS.md)."""

    def __init__(self, chars_per_step: int):
        self.chars_per_step = chars_per_step
        self.step_seconds: list[float] = []

    def add(self, step: int, seconds: float) -> float | None:
        """Time step `step` (1-based); the run's characters per second once RECHECK_STEPS are timed."""
        if step > RECHECK_SKIP_STEPS:
            self.step_seconds.append(seconds)
        if len(self.step_seconds) == RECHECK_STEPS:
            return robust_speed(self.step_seconds, self.chars_per_step)
        return None
