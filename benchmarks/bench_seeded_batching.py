"""Can seeded requests share a batched step without changing their text? Measured on one sampling step.

A seeded request promises the same text every time, so its rows must come out of a batched step bit
for bit as they come out of a step of its own. For each model size this prints how many rows of a
batched step (one matrix product over all rows, what the batched sampler runs) differ from the same
row stepped alone, and the time per step of three ways to step `rows` rows:
  batched      the sampler's step on all rows at once (unseeded requests share this)
  per-row bmm  Sampler.seeded_step, a batch of 1-row products: the same bits as a lone row, in one call
  one by one   each row stepped on its own (what seeded requests cost sampled alone, without the threads)

Then the aggregate rate of `--streams` concurrent seeded requests (a thread each, as the worker's server
runs them) against one: each sampled alone by the plain Sampler, and all in one seeded batch
(BatchedSampler(seeded=True), what the worker runs).

    .venv/bin/python benchmarks/bench_seeded_batching.py [--rows 32] [--repeats 300] [--streams 16] [--chars 400]
"""

from __future__ import annotations

import argparse
import threading
import time

import torch

from worker.engine.batching import BatchedSampler
from worker.engine.data import Vocab
from worker.engine.model import CharRNN, ModelConfig
from worker.engine.sampler import Sampler, SampleRequest


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

    bmm_step = sampler.seeded_step
    differ = int((sampler.step(ids, copy()) != alone(sampler.step)).any(dim=-1).sum())
    bmm_differ = int((bmm_step(ids, copy()) != alone(bmm_step)).any(dim=-1).sum())
    t_batched = timed(lambda: sampler.step(ids, copy()), repeats)
    t_bmm = timed(lambda: bmm_step(ids, copy()), repeats)
    t_single = timed(lambda: alone(sampler.step), max(1, repeats // 10))
    return (f"| 2x{hidden} LSTM | {differ}/{rows} (per-row bmm: {bmm_differ}/{rows}) | "
            f"{t_batched:,.0f} µs | {t_bmm:,.0f} µs | {t_single:,.0f} µs |")


def aggregate_rate(generate, streams: int, chars: int) -> float:
    """Characters per second of `streams` concurrent seeded requests, a thread each."""
    threads = [threading.Thread(target=generate, args=(SampleRequest(prompt="The ", length=chars, seed=i),))
               for i in range(streams)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return streams * chars / (time.perf_counter() - start)


@torch.inference_mode()
def concurrent(vocab: Vocab, hidden: int, streams: int, chars: int) -> str:
    sampler = Sampler(CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=hidden)).eval(), vocab)
    batched = BatchedSampler(sampler, seeded=True)
    aggregate_rate(sampler.generate, 2, 50)  # warm up
    one = aggregate_rate(sampler.generate, 1, chars)
    alone = aggregate_rate(sampler.generate, streams, chars)
    together = aggregate_rate(batched.generate, streams, chars)
    batched.close()
    # Its stepping thread ends once closed: wait for it, or the interpreter may exit while the thread is still
    # inside torch, which aborts the process ("terminate called without an active exception").
    if batched._thread is not None:
        batched._thread.join(timeout=30)
    return (f"| 2x{hidden} LSTM | {one:,.0f} | {alone:,.0f} ({alone / one:.2f}x) | "
            f"{together:,.0f} ({together / one:.2f}x) |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--chars", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the worker's generation thread runs on 2 cores
    torch.manual_seed(0)
    vocab = Vocab.from_text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\n-")
    print(f"{args.rows} rows, 1 thread, torch {torch.__version__}\n")
    print("| model | rows differing from a lone step | batched | per-row bmm | one by one |\n|---|---:|---:|---:|---:|")
    for hidden in (256, 384, 512):
        print(measure(vocab, hidden, args.rows, args.repeats))
    print(f"\n{args.streams} concurrent seeded requests of {args.chars} characters, chars/s in aggregate\n")
    print(f"| model | 1 request | {args.streams}, each sampled alone | {args.streams}, in a seeded batch |")
    print("|---|---:|---:|---:|")
    for hidden in (256, 512):
        print(concurrent(vocab, hidden, args.streams, args.chars))


if __name__ == "__main__":
    main()
