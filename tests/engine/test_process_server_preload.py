"""The worker's process server (supervisor.PRELOAD) imports everything a training job needs, so that a job
forked from it starts training at once. Two ways that went wrong: torch.optim pulls in torch._dynamo (and
sympy, 2 s) when the first optimizer is built, 90% of a tiny job's CPU while the server did not preload
it; and a child's entry point defined in supervisor.py made every child import that module, and with it
FastAPI and the database layer (another second)."""

import base64
import json
import pickle
import subprocess
import sys

import pytest

from tests.harness import ROOT, TINY_MODEL, TINY_TRAINING

# A fresh interpreter (starting one takes seconds: `make check` leaves this out) does what the server and
# its child do: import PRELOAD; then unpickle the child's entry point, as the supervisor hands it to the
# process, and train a tiny job; and prints what each of the two imported.
AFTER_PRELOAD = """
import base64, importlib, json, pickle, sys, tempfile
from pathlib import Path
from worker.service.supervisor import PRELOAD
for name in PRELOAD:
    importlib.import_module(name)
from worker.engine.records import JobSpec
from worker.engine.training_run import build_trainer
spec = json.loads(sys.argv[2])
folder = Path(tempfile.mkdtemp())
(folder / "corpus.txt").write_text("To be, or not to be, that is the question. " * 200)
spec.update(corpus_path=str(folder / "corpus.txt"), run_dir=str(folder / "run"))
imported = {}
before = set(sys.modules)
pickle.loads(base64.b64decode(sys.argv[1]))
imported["entry"], before = sorted(set(sys.modules) - before), set(sys.modules)
build_trainer(JobSpec.model_validate(spec)).train()
imported["training"] = sorted(set(sys.modules) - before)
print(json.dumps(imported))
"""
HEAVY = ("sympy", "mpmath")
HEAVY_TORCH = ("torch._dynamo", "torch._inductor", "torch._functorch", "torch.fx")


@pytest.mark.slow
def test_a_job_forked_from_the_process_server_imports_nothing_heavy():
    from worker.service import supervisor

    entry = base64.b64encode(pickle.dumps(supervisor.train_job)).decode()  # the Process target JobRun gives
    spec = {"model": TINY_MODEL, "training": {**TINY_TRAINING, "max_steps": 4, "eval_every": 2}}
    run = subprocess.run([sys.executable, "-c", AFTER_PRELOAD, entry, json.dumps(spec)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    imported = json.loads(run.stdout.strip().splitlines()[-1])
    assert imported["entry"] == []
    # (A few small torch modules, such as the serializer's config, may still come on first use.)
    heavy = [name for name in imported["training"] if name.split(".")[0] in HEAVY or name.startswith(HEAVY_TORCH)]
    assert heavy == [], heavy
