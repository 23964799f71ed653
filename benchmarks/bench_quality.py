"""Held-out quality in a fixed time: `charrnn train` against a plain PyTorch loop, alternating, in one run.

The protocol a new user would follow: `charrnn train FILE --out D --max-seconds S` on the whole file
(its default split holds out the last 10%), then the best checkpoint scored on that last 10%. The
reference is a plain loop on the same first 90% for the same S seconds: a 2x384 LSTM, embedding 64,
seq 64, batch 32, hidden state carried across windows, AdamW at 3e-3 decayed linearly to 10% over the
time budget, no weight decay, gradient clipping at 1.0, bf16 autocast where the CPU has it, no evaluation.
Both are scored by the same function (the engine's score_ids, fp32) on the same held-out text.

Corpora (built under benchmarks/out/corpora from what every Python install has, except the first):
  shakespeare  samples/tinyshakespeare.txt (1.1 MB)
  prose        a 100 KB slice of the English prose of Python's documentation (pydoc_data): over-fitting
  python       3 MB of the standard library's source, concatenated: a budget-limited, larger corpus
  or any PATH to a UTF-8 file.

    .venv/bin/python benchmarks/bench_quality.py [--corpus shakespeare --corpus prose --corpus python]
        [--seconds 120] [--rounds 1] [--variant NAME='--seq-len 64 --dropout 0.1' ...] [--no-default]
        [--reference NAME='schedule=cosine,warmup_steps=50' ...] [--no-reference]
        [--transformer NAME='n_layer=4,block_size=64' ...]

Each variant is `charrnn train` with those flags added; "defaults" (no flags) runs unless --no-default.
Each --reference is the plain loop with some of its settings changed (REFERENCE names them): the
ablation from the plain recipe towards the engine's, one change at a time. Each --transformer is the
small character-level transformer of char_transformer.py (`NAME=` for its defaults), trained the same
time on the same split and scored with every character given at least half a context of history.
Prints a Markdown table and appends every row to benchmarks/out/quality.jsonl as it finishes.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _support import ROOT, SAMPLE_CORPUS
from bench_engine import PlainLSTM
from char_transformer import TRANSFORMER, score_transformer, train_transformer
from torch import nn

from worker.engine.checkpoint import load_model
from worker.engine.config import split_sizes
from worker.engine.data import Vocab, read_text
from worker.engine.model import CharRNN, ModelConfig
from worker.engine.scoring import score_ids

OUT = Path(__file__).parent / "out"
VAL_FRACTION = 0.1
REFERENCE = {"hidden_size": 384, "num_layers": 2, "embedding_dim": 64, "seq_len": 64, "batch_size": 32,
             "learning_rate": 3e-3, "final_lr_ratio": 0.1, "grad_clip": 1.0,
             # the knobs an ablation turns, one at a time, towards the engine's recipe (--reference)
             "schedule": "linear", "warmup_steps": 0, "beta2": 0.999, "weight_decay": 0.0,
             "seed": 0}  # another seed: how far two runs of one recipe fall apart


# -- corpora ---------------------------------------------------------------------------------------------


def prose_corpus(size: int = 100_000) -> str:
    """English prose: Python's reference documentation topics, in a fixed order, the first `size` characters."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[name] for name in sorted(topics))
    return text[:size]


def python_corpus(size: int = 3_000_000) -> str:
    """The standard library's top-level modules, in name order, the first `size` characters."""
    import sysconfig

    lib = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(lib.glob("*.py")):
        source = path.read_text(encoding="utf-8", errors="replace")
        parts.append(source)
        total += len(source)
        if total >= size:
            break
    return "".join(parts)[:size]


def corpus_file(name: str) -> Path:
    if name == "shakespeare":
        return SAMPLE_CORPUS
    builders = {"prose": prose_corpus, "python": python_corpus}
    if name not in builders:
        return Path(name)
    path = OUT / "corpora" / f"{name}.txt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(builders[name](), encoding="utf-8")
    return path


# -- the reference: a plain loop -------------------------------------------------------------------------


def reference_lr(r: dict, step: int, progress: float) -> float:
    if step < r["warmup_steps"]:
        return r["learning_rate"] * (step + 1) / r["warmup_steps"]
    floor = r["final_lr_ratio"]
    if r["schedule"] == "cosine":
        return r["learning_rate"] * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
    return r["learning_rate"] * (1 - (1 - floor) * progress)


def reference_training(train: torch.Tensor, vocab_size: int, seconds: float, r: dict) -> tuple[nn.Module, dict]:
    torch.manual_seed(r["seed"])
    model = PlainLSTM(vocab_size, r)
    opt = torch.optim.AdamW(model.parameters(), lr=r["learning_rate"], weight_decay=r["weight_decay"],
                            betas=(0.9, r["beta2"]))
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    B, T = r["batch_size"], r["seq_len"]
    row = len(train) // B
    streams = train[: row * B].view(B, row)
    hidden, steps, pos, loss = None, 0, 0, None
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for group in opt.param_groups:
            group["lr"] = reference_lr(r, steps, elapsed / seconds)
        if pos + T + 1 > row:
            pos, hidden = 0, None
        x, y = streams[:, pos : pos + T], streams[:, pos + 1 : pos + T + 1]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, hidden = model(x, hidden)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), r["grad_clip"])
        opt.step()
        hidden = tuple(h.detach() for h in hidden)
        steps, pos = steps + 1, pos + T
    seconds_run = time.perf_counter() - start
    return model, {"steps": steps, "train_loss": loss.item(), "chars_per_second": steps * B * T / seconds_run,
                   "config": {**r, "bf16": bf16}}


def score_reference(model: PlainLSTM, vocab: Vocab, held_out: str, r: dict) -> float:
    engine_model = CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=r["hidden_size"],
                                       num_layers=r["num_layers"], embedding_dim=r["embedding_dim"]))
    engine_model.load_state_dict(model.state_dict())
    return score_ids(engine_model, vocab.encode(held_out))[0]


# -- charrnn, as a user runs it --------------------------------------------------------------------------


def charrnn_training(path: Path, seconds: float, flags: str, held_out: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="charrnn-quality-") as run_dir:
        # This checkout's code (cwd first on the path), whichever checkout the virtual environment was built in.
        command = [sys.executable, "-m", "worker.cli", "train", str(path), "--out", run_dir,
                   "--max-seconds", str(seconds), *shlex.split(flags)]
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        first_lines = done.stderr.splitlines()[:4]
        # The validation curve, from the evaluation lines ("step 500 val 1.4567 sample: ...").
        curve = [(int(step), float(val)) for step, val in re.findall(r"step (\d+) val ([\d.]+) sample", done.stderr)]
        loaded = load_model(Path(run_dir) / "best.safetensors")
        held = score_ids(loaded.model, loaded.vocab.encode(held_out))[0]
        run = json.loads((Path(run_dir) / "run.json").read_text())
    return {"held_out_loss": held, "steps": summary["steps"], "train_loss": summary["train_loss"],
            "chars_per_second": summary["chars_per_second"], "best_val_loss": summary["best_val_loss"],
            "val_loss_at_end": summary["val_loss"], "model": run["model"], "training": run["training"],
            "cli_first_lines": first_lines, "val_curve": curve}


def parse_settings(knobs: str, defaults: dict, option: str) -> dict:
    settings = {}
    for text in filter(None, knobs.split(",")):
        key, value = text.split("=", 1)
        if key not in defaults:
            raise SystemExit(f"{option}: no setting {key!r} (one of {', '.join(defaults)})")
        kind = type(defaults[key])
        settings[key] = value if kind is str else kind(float(value)) if kind is int else float(value)
    return {**defaults, **settings}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", action="append", help="shakespeare | prose | python | PATH (repeatable)")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variant", action="append", default=[], help="NAME='charrnn train flags'")
    parser.add_argument("--no-default", action="store_true", help="skip the run with charrnn's defaults")
    parser.add_argument("--no-reference", action="store_true", help="skip the plain loop")
    parser.add_argument("--reference", action="append", default=[],
                        help="NAME='key=value,...': the plain loop with these of its settings changed (an ablation)")
    parser.add_argument("--transformer", action="append", default=[],
                        help="NAME='key=value,...': the character-level transformer (NAME= for its defaults)")
    args = parser.parse_args()
    variants = ([] if args.no_default else [("defaults", "")]) + [tuple(v.split("=", 1)) for v in args.variant]
    # (name, kind, settings): the plain loop and the transformer take a dict, charrnn its flags.
    planned = ([] if args.no_reference else [("reference", "plain", REFERENCE)])
    planned += [(n, "plain", parse_settings(k, REFERENCE, "--reference")) for n, k in
                (v.split("=", 1) for v in args.reference)]
    planned += [(n, "transformer", parse_settings(k, TRANSFORMER, "--transformer")) for n, k in
                (v.split("=", 1) for v in args.transformer)]
    planned += [(n, "charrnn", flags) for n, flags in variants]
    OUT.mkdir(exist_ok=True)
    log = OUT / "quality.jsonl"
    rows = []
    for round_index in range(args.rounds):
        for name in args.corpus or ["shakespeare", "prose", "python"]:
            path = corpus_file(name)
            text = read_text(path)
            n_train, _ = split_sizes(len(text), VAL_FRACTION)
            held_out = text[n_train:]
            vocab = Vocab.from_text(text)
            train_ids = vocab.encode(text[:n_train])  # the plain loop's and the transformer's
            # Alternate which side goes first from round to round: the machine's speed drifts.
            runs = planned[::-1] if round_index % 2 else planned
            for variant, kind, settings in runs:
                started = time.time()
                if kind == "plain":
                    model, info = reference_training(train_ids, len(vocab), args.seconds, settings)
                    info["held_out_loss"] = score_reference(model, vocab, held_out, settings)
                elif kind == "transformer":
                    model, info = train_transformer(train_ids, len(vocab), args.seconds, settings)
                    info["held_out_loss"] = score_transformer(model, vocab.encode(held_out))
                else:
                    info = charrnn_training(path, args.seconds, settings, held_out)
                    info["flags"] = settings
                row = {"corpus": name, "chars": len(text), "variant": variant, "round": round_index,
                       "seconds": args.seconds, "wall_seconds": time.time() - started, **info}
                rows.append(row)
                with log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{name:12s} {variant:20s} held-out {row['held_out_loss']:.4f} steps {row['steps']} "
                      f"{row['chars_per_second']:,.0f} chars/s", file=sys.stderr, flush=True)

    print(f"\n{args.seconds:g} s each, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| corpus | run | held-out loss | vs plain loop | steps | chars/s |\n|---|---|---:|---:|---:|---:|")
    for row in rows:
        refs = [r["held_out_loss"] for r in rows
                if r["variant"] == "reference" and r["corpus"] == row["corpus"] and r["round"] == row["round"]]
        delta = f"{row['held_out_loss'] - refs[0]:+.3f}" if refs and row["variant"] != "reference" else ""
        print(f"| {row['corpus']} | {row['variant']} | {row['held_out_loss']:.3f} | {delta} | {row['steps']} | "
              f"{row['chars_per_second']:,.0f} |")
    if any(not math.isfinite(r["held_out_loss"]) for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
