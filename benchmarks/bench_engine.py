"""Engine speed, side by side with plain PyTorch in one run.

Training: charrnn's Trainer against a plain loop (nn.Embedding -> nn.LSTM -> nn.Linear, AdamW,
gradient clipping, hidden state carried and detached) on the same config, in fp32 and in bf16 autocast.
Sampling: charrnn's Sampler against a naive loop that calls nn.LSTM, softmax and multinomial once
per character, both on the same weights, single stream.

    .venv/bin/python benchmarks/bench_engine.py [--seconds 10] [--rounds 3] [--chars 3000] [--corpus PATH]

Prints a Markdown table (the one in the README) and writes benchmarks/out/engine.json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from _support import add_corpus_argument, write_results
from torch import nn

from worker.engine.data import Vocab
from worker.engine.device import resolve_precision
from worker.engine.model import CharRNN, ModelConfig
from worker.engine.sampler import Sampler, SampleRequest
from worker.engine.trainer import TrainConfig, Trainer

MODEL = {"cell": "lstm", "hidden_size": 256, "num_layers": 2, "embedding_dim": 64, "dropout": 0.0}
SEQ_LEN, BATCH = 64, 32


class PlainLSTM(nn.Module):
    """Embedding -> nn.LSTM -> linear, nothing else (also bench_quality.py's reference). The engine's
    attribute names, so that the engine's scoring code can load these weights into a CharRNN."""

    def __init__(self, vocab_size: int, model: dict = MODEL):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, model["embedding_dim"])
        self.rnn = nn.LSTM(model["embedding_dim"], model["hidden_size"], model["num_layers"], batch_first=True)
        self.head = nn.Linear(model["hidden_size"], vocab_size)

    def forward(self, x, hidden=None):
        y, hidden = self.rnn(self.embedding(x), hidden)
        return self.head(y), hidden


def plain_training(data: torch.Tensor, vocab_size: int, seconds: float, bf16: bool) -> float:
    """Characters per second of a straightforward TBPTT loop."""
    torch.manual_seed(0)
    model = PlainLSTM(vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    row = len(data) // BATCH
    streams = data[: row * BATCH].view(BATCH, row)
    hidden, steps, pos = None, 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        if pos + SEQ_LEN + 1 > row:
            pos, hidden = 0, None
        x, y = streams[:, pos : pos + SEQ_LEN], streams[:, pos + 1 : pos + SEQ_LEN + 1]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, hidden = model(x, hidden)
        loss = F.cross_entropy(logits.float().reshape(-1, vocab_size), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        hidden = tuple(h.detach() for h in hidden)
        loss.item()
        steps, pos = steps + 1, pos + SEQ_LEN
    return steps * BATCH * SEQ_LEN / (time.perf_counter() - start)


def charrnn_training(text: str, seconds: float, precision: str) -> float:
    run_dir = tempfile.mkdtemp(prefix="charrnn-bench-")
    try:
        config = TrainConfig(seq_len=SEQ_LEN, batch_size=BATCH, max_seconds=seconds, eval_every=10**9,
                             checkpoint_every=10**9, precision=precision, device="cpu", val_fraction=0.1)
        return Trainer(text, run_dir, MODEL, config).train().chars_per_second
    finally:
        shutil.rmtree(run_dir)


@torch.inference_mode()
def naive_sampling(model: CharRNN, vocab: Vocab, n_chars: int) -> float:
    """One nn.LSTM call, one softmax and one multinomial per character."""
    generator = torch.Generator().manual_seed(0)
    x, hidden = torch.tensor([[0]]), None
    start = time.perf_counter()
    out = []
    for _ in range(n_chars):
        y, hidden = model.rnn(model.embedding(x), hidden)
        probs = F.softmax(model.head(y[:, -1]), dim=-1)
        x = torch.multinomial(probs, 1, generator=generator)
        out.append(vocab.chars[x.item()])
    return n_chars / (time.perf_counter() - start)


def charrnn_sampling(model: CharRNN, vocab: Vocab, n_chars: int) -> float:
    sampler = Sampler(model, vocab)
    start = time.perf_counter()
    sampler.generate(SampleRequest(length=n_chars, seed=0))
    return n_chars / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10, help="per training measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurements of each")
    parser.add_argument("--chars", type=int, default=3000, help="per sampling measurement")
    add_corpus_argument(parser)
    args = parser.parse_args()
    text = args.corpus.read_text()
    vocab = Vocab.from_text(text)
    data = vocab.encode(text)[: int(len(text) * 0.9)]

    rows = []
    # bf16 where this CPU has it (the engine's own test of that): fp32 alone elsewhere, said in the output.
    precisions = ("fp32", "bf16") if resolve_precision("auto", torch.device("cpu")) == torch.bfloat16 else ("fp32",)
    if len(precisions) == 1:
        print("this CPU has no bf16 support: fp32 only")
    for precision in precisions:
        # Alternate the two, several rounds, and take each one's median: a shared 2-core machine
        # drifts by 10-20% from one minute to the next.
        plain, ours = [], []
        for _ in range(args.rounds):
            ours.append(charrnn_training(text, args.seconds, precision))
            plain.append(plain_training(data, len(vocab), args.seconds, bf16=precision == "bf16"))
        rows.append((f"training chars/s, {precision}", statistics.median(plain), statistics.median(ours)))

    model = CharRNN(ModelConfig(vocab_size=len(vocab), **MODEL)).eval()
    naive_sampling(model, vocab, 200)  # warm up both paths once
    charrnn_sampling(model, vocab, 200)
    rows.append(("sampling chars/s, 1 stream", naive_sampling(model, vocab, args.chars),
                 charrnn_sampling(model, vocab, args.chars)))

    print(f"2x{MODEL['hidden_size']} LSTM, embedding {MODEL['embedding_dim']}, seq {SEQ_LEN}, batch {BATCH}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| measurement | plain PyTorch | charrnn | ratio |\n|---|---:|---:|---:|")
    for name, ref, ours in rows:
        print(f"| {name} | {ref:,.0f} | {ours:,.0f} | {ours / ref:.2f}x |")
    write_results("engine", [{"name": name, "plain": ref, "charrnn": ours} for name, ref, ours in rows])


if __name__ == "__main__":
    main()
