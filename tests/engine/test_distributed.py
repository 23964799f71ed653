"""Data-parallel training: 2 gloo processes under torchrun take the same steps as 1 process."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tests.harness import SHAKESPEARE
from worker.engine.trainer import TrainConfig, Trainer

MODEL = {"cell": "lstm", "hidden_size": 32, "num_layers": 2, "embedding_dim": 16, "dropout": 0.0}
# fp32 on CPU: the only differences are the order of float additions in the gradient all-reduce.
TOLERANCE = 1e-4

# Real processes: torchrun and two gloo ranks, each importing torch (about 25 s of CPU for the two tests on
# a 2-core machine, the most of any engine file); `make test` runs them, `make check` leaves them out.
pytestmark = pytest.mark.slow


def test_two_gloo_ranks_match_one_process_with_the_same_global_batch(tmp_path):
    text_path = tmp_path / "corpus.txt"
    text_path.write_text(SHAKESPEARE.read_text()[:30_000])
    training = TrainConfig(seq_len=16, batch_size=8, learning_rate=1e-2, warmup_steps=5, max_steps=30,
                           eval_every=15, checkpoint_every=15, seed=3, device="cpu", precision="fp32").to_dict()
    single = Trainer(text_path.read_text(), tmp_path / "single", MODEL, TrainConfig.from_dict(training)).train()

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"corpus_path": str(text_path), "run_dir": str(tmp_path / "ddp"),
                                "model": MODEL, "training": training}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run_ranks() -> subprocess.CompletedProcess:
        shutil.rmtree(tmp_path / "ddp", ignore_errors=True)
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
             "-m", "worker.engine.training_run", str(spec)],
            capture_output=True, text=True, env=env, timeout=240,
        )

    proc = run_ranks()
    # gloo can still abort a rank in its own teardown, after the barrier (about one run in four on a loaded
    # 2-core machine, in torch 2.13): that is torch's exit, not our training, so it gets one more run.
    if proc.returncode != 0 and "terminate called without an active exception" in proc.stderr:
        proc = run_ranks()
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads(proc.stdout.strip().splitlines()[-1])

    assert ddp["steps"] == single.steps == 30
    assert ddp["train_loss"] == pytest.approx(single.train_loss, abs=TOLERANCE)
    assert ddp["val_loss"] == pytest.approx(single.val_loss, abs=TOLERANCE)
    a, b = load_file(single.last_checkpoint), load_file(ddp["last_checkpoint"])
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3
    # the checkpoint holds all 8 streams' state, so one process can resume what two started
    resumed = Trainer(text_path.read_text(), tmp_path / "ddp", MODEL,
                      TrainConfig.from_dict({**training, "max_steps": 40}))
    assert resumed.resumed_from_step == 30 and resumed.hidden[0].shape[1] == 8
    assert resumed.train().steps == 40


def test_charrnn_train_with_gpus_trains_data_parallel_as_one_process_does(tmp_path):
    """`--gpus N` on the command line, as `training.gpus` in a job: N gloo ranks on a CPU, the same steps."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SHAKESPEARE.read_text()[:30_000])
    options = ["--hidden-size", "32", "--num-layers", "2", "--embedding-dim", "16", "--dropout", "0", "--seq-len", "16",
               "--batch-size", "8", "--learning-rate", "0.01", "--max-steps", "20", "--eval-every", "10",
               "--checkpoint-every", "10", "--log-every", "5", "--sample-length", "20", "--seed", "3",
               "--device", "cpu", "--precision", "fp32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def train(out: str, *extra: str) -> subprocess.CompletedProcess:
        shutil.rmtree(tmp_path / out, ignore_errors=True)
        return subprocess.run([sys.executable, "-m", "worker.cli", "train", str(corpus), "--out", str(tmp_path / out),
                               *options, *extra], capture_output=True, text=True, env=env, timeout=240)

    single = train("one")
    ranks = train("two", "--gpus", "2")
    if ranks.returncode != 0 and "terminate called without an active exception" in ranks.stderr:
        ranks = train("two", "--gpus", "2")  # gloo's own teardown (see above)
    assert single.returncode == 0 and ranks.returncode == 0, (single.stderr[-2000:], ranks.stderr[-2000:])
    one, two = (json.loads(p.stdout.strip().splitlines()[-1]) for p in (single, ranks))
    assert one["steps"] == two["steps"] == 20
    assert two["train_loss"] == pytest.approx(one["train_loss"], abs=TOLERANCE)
    assert json.loads((tmp_path / "two" / "run.json").read_text())["training"]["gpus"] == 2
