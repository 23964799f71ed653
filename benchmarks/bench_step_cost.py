"""Per-step cost of an optimizer or window choice against the first kind, side by side: the engine's model
and training step (forward in bf16 autocast where the CPU has it, backward, clipping, optimizer step,
weight average), alternating rounds of N steps each, medians of the paired ratios of characters per
second. A kind is OPTIMIZER[+ema][@SEQ_LEN]: adamw, adamw-fused (torch's fused CPU kernel), muon; the
window is 64 characters unless @SEQ_LEN says otherwise (batch 32).

    .venv/bin/python benchmarks/bench_step_cost.py --hidden 384 --rounds 7 --steps 10
    .venv/bin/python benchmarks/bench_step_cost.py --hidden 384 --kind adamw@64 --kind adamw@32 --kind adamw@16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from worker.engine.averaging import WeightAverage
from worker.engine.config import ModelConfig
from worker.engine.model import CharRNN, autocast
from worker.engine.optim import BETAS, MuonWithAdamW, adamw, decay_groups


def make(kind: str, hidden: int):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=65, hidden_size=hidden, num_layers=2, embedding_dim=64))
    kind, _, seq_len = kind.partition("@")
    base = kind.split("+")[0]
    if base == "muon":
        opt = MuonWithAdamW(model, 3e-3, 0.01)
    elif base == "adamw-fused":
        opt = torch.optim.AdamW(decay_groups(model, 0.01, list(model.named_parameters())), lr=3e-3, betas=BETAS,
                                fused=True)
    else:
        opt = adamw(model, 3e-3, 0.01)
    average = WeightAverage(model, 0.99) if kind.endswith("+ema") else None
    return model, opt, average, int(seq_len or 64)


def time_steps(model, opt, average, seq_len: int, steps: int, bf16: bool) -> float:
    """Characters per second."""
    x = torch.randint(65, (32, seq_len + 1))
    started = time.perf_counter()
    for _ in range(steps):
        with autocast("cpu", torch.bfloat16 if bf16 else None):
            logits, _ = model(x[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if average:
            average.update(model)
    return steps * x[:, 1:].numel() / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--kind", action="append", default=None, help="adamw | muon | adamw+ema | muon+ema")
    args = parser.parse_args()
    kinds = args.kind or ["adamw", "muon", "adamw+ema"]
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    setups = {k: make(k, args.hidden) for k in kinds}
    for setup in setups.values():
        time_steps(*setup, 3, bf16)  # warm-up
    times = {k: [] for k in kinds}
    for r in range(args.rounds):
        for k in kinds if r % 2 == 0 else kinds[::-1]:
            times[k].append(time_steps(*setups[k], args.steps, bf16))
    for k in kinds:
        paired = [b / a for a, b in zip(times[kinds[0]], times[k], strict=True)]
        print(f"{k:14s} {statistics.median(times[k]):9,.0f} chars/s  speed vs {kinds[0]}: "
              f"{statistics.median(paired):.3f} (rounds {min(paired):.2f}-{max(paired):.2f})", flush=True)


if __name__ == "__main__":
    main()
