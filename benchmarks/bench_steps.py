"""Held-out loss after a FIXED number of steps: optimizer, schedule and averaging ablations that a
loaded machine cannot spoil (the loss after N steps at a fixed seed does not depend on the machine's
speed), and the per-step cost of each, timed side by side against the defaults.

Each run is the engine's own Trainer on the whole file (the last 10% held out, as `charrnn train`),
with the model size given (no probe), stopped at --steps, and scored on the held-out 10% (fp32). Every
run also keeps extra weight averages at the --ema decays (averages never change the training itself), so
one run scores its raw weights and each average.

    .venv/bin/python benchmarks/bench_steps.py --steps 1200 --hidden 256 --seed 1337 \
        --run "linear=" --run "wsd=schedule=wsd" --run "muon=optimizer=muon" --ema 0.99,0.995,0.998
    # per-step cost: alternating timed rounds of each run against the first, medians
    .venv/bin/python benchmarks/bench_steps.py --time --hidden 384 --run "adamw=" --run "muon=optimizer=muon"

A run's knobs (NAME=key=value,...): schedule (linear | constant | wsd), optimizer (adamw | muon |
sfadamw), lr, muon_lr, plus any TrainConfig field (batch_size, seq_len, ...) and model field
(num_layers, cell, embedding_dim, hidden_size). Rows are appended to benchmarks/out/steps.jsonl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _support import SAMPLE_CORPUS
from bench_quality import corpus_file

from worker.engine import trainer as trainer_module
from worker.engine.averaging import WeightAverage
from worker.engine.config import ModelConfig, TrainConfig
from worker.engine.data import read_text
from worker.engine.scoring import score_ids
from worker.engine.trainer import Trainer

OUT = Path(__file__).parent / "out"
MODEL_KEYS = {"num_layers", "cell", "embedding_dim", "hidden_size", "dropout"}


def schedule_fn(kind: str, wsd_decay: float = 0.2):
    """lr_at replacements: the engine's linear decay to min_lr_ratio, constant, or warmup-stable-decay
    (constant, then linear to min_lr_ratio over the last `wsd_decay` of the run)."""
    def lr_at(config: TrainConfig, step: int, progress: float) -> float:
        progress = min(progress, 1.0)
        floor = config.min_lr_ratio
        if kind == "constant":
            return config.learning_rate
        if kind == "wsd":
            start = 1 - wsd_decay
            if progress <= start:
                return config.learning_rate
            return config.learning_rate * (1 - (1 - floor) * (progress - start) / wsd_decay)
        return config.learning_rate * (1 - (1 - floor) * progress)
    return lr_at


def build_optimizer(model: torch.nn.Module, kind: str, lr: float, muon_lr: float, weight_decay: float):
    if kind == "adamw":
        return None  # the engine's own
    if kind == "sfadamw":
        import schedulefree

        return schedulefree.AdamWScheduleFree(model.parameters(), lr=lr, betas=(0.9, 0.99), warmup_steps=0,
                                              weight_decay=0.0)
    if kind == "muon":
        from worker.engine.optim import MuonWithAdamW

        return MuonWithAdamW(model, lr=lr, weight_decay=weight_decay, muon_lr=muon_lr)
    raise SystemExit(f"unknown optimizer {kind!r}")


class StepTrainer(Trainer):
    """The engine's Trainer keeping extra weight averages beside whatever it does itself."""

    def __init__(self, *args, ema_decays=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.averages = {d: WeightAverage(self.model, d) for d in ema_decays}

    def _train_step(self, x, y):
        out = super()._train_step(x, y)
        for average in self.averages.values():
            average.update(self.model)
        return out


def run_once(text: str, steps: int, seed: int, knobs: dict, ema: list[float], hidden: int) -> dict:
    knobs = dict(knobs)
    schedule = knobs.pop("schedule", "linear")
    optimizer = knobs.pop("optimizer", "adamw")
    muon_lr = float(knobs.pop("muon_lr", 0)) or None
    model_fields = {"hidden_size": hidden, "num_layers": 2, "embedding_dim": 64, "dropout": 0.0, "cell": "lstm"}
    train_fields = {}
    for key, value in knobs.items():
        if key == "lr":
            key = "learning_rate"
        target = model_fields if key in MODEL_KEYS else train_fields
        default = ModelConfig.__dataclass_fields__[key].default if key in MODEL_KEYS else \
            TrainConfig.__dataclass_fields__[key].default
        target[key] = value if isinstance(default, str) else type(default)(float(value))
    config = TrainConfig(max_steps=steps, seed=seed, eval_every=10**9, checkpoint_every=10**9, **train_fields)
    trainer_module.lr_at = schedule_fn(schedule)
    with tempfile.TemporaryDirectory(prefix="charrnn-steps-") as run_dir:
        t = StepTrainer(text, run_dir, model_config=model_fields, train_config=config, ema_decays=ema)
        own = build_optimizer(t.model, optimizer, config.learning_rate, muon_lr, config.weight_decay)
        if own is not None:
            t.optimizer = own
        if optimizer == "sfadamw":
            own.train()
        started = time.perf_counter()
        result = t.train()
        seconds = time.perf_counter() - started
        if optimizer == "sfadamw":
            own.eval()  # the averaged iterate: the weights schedule-free evaluates with
        scores = {"raw": score_ids(t.model, t.val_data)[0]}
        scores.update({f"ema{d:g}": score_ids(a.model, t.val_data)[0] for d, a in t.averages.items()})
    return {"scores": scores, "train_loss": result.train_loss, "seconds": seconds,
            "params": t.model.num_parameters, "model": model_fields, "training": config.to_dict(),
            "schedule": schedule, "optimizer": optimizer, "muon_lr": muon_lr}


def time_steps(text: str, knobs: dict, hidden: int, steps: int) -> float:
    """Seconds per step over `steps` steps after 5 of warm-up (the engine's loop, no evaluation)."""
    warm = run_once(text, 5, 0, knobs, [], hidden)["seconds"]
    total = run_once(text, 5 + steps, 0, knobs, [], hidden)["seconds"]
    return (total - warm) / steps


def parse_run(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition("=")
    return name, dict(kv.split("=", 1) for kv in rest.split(",") if kv)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", default="shakespeare")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--seed", type=int, action="append")
    parser.add_argument("--run", action="append", required=True, help="NAME=key=value,...")
    parser.add_argument("--ema", default="", help="comma-separated decays of extra weight averages")
    parser.add_argument("--time", action="store_true", help="time each run's steps against the first, alternating")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--time-steps", type=int, default=40)
    args = parser.parse_args()
    text = read_text(corpus_file(args.corpus) if args.corpus != "shakespeare" else SAMPLE_CORPUS)
    runs = [parse_run(s) for s in args.run]
    OUT.mkdir(exist_ok=True)
    log = OUT / "steps.jsonl"
    if args.time:
        per_step = {name: [] for name, _ in runs}
        for round_index in range(args.rounds):
            order = runs if round_index % 2 == 0 else runs[::-1]
            for name, knobs in order:
                per_step[name].append(time_steps(text, knobs, args.hidden, args.time_steps))
        base = statistics.median(per_step[runs[0][0]])
        for name, _ in runs:
            ratios = [b / s for b, s in zip(per_step[runs[0][0]], per_step[name], strict=True)]
            med = statistics.median(per_step[name])
            row = {"kind": "time", "corpus": args.corpus, "hidden": args.hidden, "run": name,
                   "seconds_per_step": per_step[name], "median": med, "speed_vs_first": base / med,
                   "paired_ratios": ratios}
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{name:24s} {med * 1000:7.1f} ms/step  speed vs {runs[0][0]}: {base / med:.3f} "
                  f"(paired {min(ratios):.2f}-{max(ratios):.2f})", flush=True)
        return
    ema = [float(d) for d in args.ema.split(",") if d]
    for seed in args.seed or [1337]:
        for name, knobs in runs:
            info = run_once(text, args.steps, seed, knobs, ema, args.hidden)
            row = {"kind": "steps", "corpus": args.corpus, "steps": args.steps, "hidden": args.hidden, "seed": seed,
                   "run": name, "knobs": knobs, **info}
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            scores = "  ".join(f"{k} {v:.4f}" for k, v in info["scores"].items())
            print(f"seed {seed} {name:20s} {scores}  train {info['train_loss']:.3f}  {info['seconds']:.0f}s",
                  flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)


if __name__ == "__main__":
    main()
