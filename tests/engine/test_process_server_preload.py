"""The worker's process server (supervisor.PRELOAD) imports everything a training job needs, so that a job
forked from it starts training at once. torch imports some of its own modules on first use: torch.optim
pulls in torch._dynamo (and sympy, 2 s) when the first optimizer is built, which was 90% of a tiny job's
CPU while the server did not preload it."""

import json
import subprocess
import sys

from tests.harness import ROOT, TINY_MODEL, TINY_TRAINING

# Run in a fresh interpreter, as the server is: import PRELOAD, train a tiny job, print what it imported.
TRAIN_AFTER_PRELOAD = """
import importlib, json, sys, tempfile
from pathlib import Path
from worker.service.supervisor import PRELOAD
for name in PRELOAD:
    importlib.import_module(name)
from worker.engine.records import JobSpec
from worker.engine.training_run import build_trainer
spec = json.loads(sys.argv[1])
folder = Path(tempfile.mkdtemp())
(folder / "corpus.txt").write_text("To be, or not to be, that is the question. " * 200)
spec.update(corpus_path=str(folder / "corpus.txt"), run_dir=str(folder / "run"))
before = set(sys.modules)
build_trainer(JobSpec.model_validate(spec)).train()
print(json.dumps(sorted(set(sys.modules) - before)))
"""

HEAVY = ("sympy", "mpmath")
HEAVY_TORCH = ("torch._dynamo", "torch._inductor", "torch._functorch", "torch.fx")


def test_a_job_forked_from_the_process_server_imports_nothing_heavy():
    spec = {"model": TINY_MODEL, "training": {**TINY_TRAINING, "max_steps": 4, "eval_every": 2}}
    run = subprocess.run(
        [sys.executable, "-c", TRAIN_AFTER_PRELOAD, json.dumps(spec)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    imported = json.loads(run.stdout.strip().splitlines()[-1])
    # (A few small torch modules, such as the serializer's config, may still come on first use.)
    heavy = [name for name in imported if name.split(".")[0] in HEAVY or name.startswith(HEAVY_TORCH)]
    assert heavy == [], heavy
