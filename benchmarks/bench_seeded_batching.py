"""Can seeded requests share a batched step without changing their text? Measured on one sampling step.

A seeded request promises the same text every time, so its rows must come out of a batched step bit
for bit as they come out of a step of its own. For each model size this prints how many rows of a
batched step (one matrix product over all rows, what the batched sampler runs) differ from the same
row stepped alone, and the time per step of three ways to step `rows` rows:
  batched      the sampler's step on all rows at once (unseeded requests share this)
  per-row bmm  a batched matrix product of 1-row products: the same bits as a lone row, in one call
  one by one   each row stepped on its own (what seeded requests cost now, without the threads)

    .venv/bin/python benchmarks/bench_seeded_batching.py [--rows 32] [--repeats 300]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from worker.engine.data import Vocab
from worker.engine.model import CharRNN, ModelConfig
from worker.engine.sampler import Sampler


def per_row_step(sampler: Sampler, ids: torch.Tensor, state: list) -> torch.Tensor:
    """The LSTM step with every product a batch of 1-row products (batch-invariant by construction)."""
    x = torch.nn.functional.embedding(ids, sampler.embedding_weight)
    for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(sampler.layers):
        h, c = state[layer]
        rows = x.shape[0]
        gates = (torch.baddbmm(b_ih.expand(rows, 1, -1), x[:, None], w_ih.t().expand(rows, -1, -1))
                 + torch.baddbmm(b_hh.expand(rows, 1, -1), h[:, None], w_hh.t().expand(rows, -1, -1)))[:, 0]
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        state[layer] = (h, c)
        x = h
    return torch.baddbmm(sampler.head_bias.expand(x.shape[0], 1, -1), x[:, None],
                         sampler.head_weight.t().expand(x.shape[0], -1, -1))[:, 0]


def timed(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e6


@torch.inference_mode()
def measure(vocab: Vocab, hidden: int, rows: int, repeats: int) -> str:
    sampler = Sampler(CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=hidden)).eval(), vocab)
    state, _ = sampler.prime("The ", rows)
    state = [tuple(h + torch.randn_like(h) * 0.1 for h in layer) for layer in state]  # rows that differ
    ids = torch.randint(len(vocab), (rows,))

    def copy(which=slice(None)):
        return [tuple(h[which].clone() for h in layer) for layer in state]

    def alone(step):
        return torch.cat([step(ids[r : r + 1], copy(slice(r, r + 1))) for r in range(rows)])

    bmm_step = partial(per_row_step, sampler)
    differ = int((sampler.step(ids, copy()) != alone(sampler.step)).any(dim=-1).sum())
    bmm_differ = int((bmm_step(ids, copy()) != alone(bmm_step)).any(dim=-1).sum())
    t_batched = timed(lambda: sampler.step(ids, copy()), repeats)
    t_bmm = timed(lambda: bmm_step(ids, copy()), repeats)
    t_single = timed(lambda: alone(sampler.step), max(1, repeats // 10))
    return (f"| 2x{hidden} LSTM | {differ}/{rows} (per-row bmm: {bmm_differ}/{rows}) | "
            f"{t_batched:,.0f} µs | {t_bmm:,.0f} µs | {t_single:,.0f} µs |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the worker's generation thread runs on 2 cores
    torch.manual_seed(0)
    vocab = Vocab.from_text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\n-")
    print(f"{args.rows} rows, 1 thread, torch {torch.__version__}\n")
    print("| model | rows differing from a lone step | batched | per-row bmm | one by one |\n|---|---:|---:|---:|---:|")
    for hidden in (256, 384, 512):
        print(measure(vocab, hidden, args.rows, args.repeats))


if __name__ == "__main__":
    main()
