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

from tests.harness import ROOT, TINY_MODEL, TINY_TRAINING

# What the server's child does first: unpickle its entry point (as the supervisor hands it to the process).
UNPICKLE_AFTER_PRELOAD = """
import base64, importlib, json, pickle, sys
from worker.service.supervisor import PRELOAD
for name in PRELOAD:
    importlib.import_module(name)
before = set(sys.modules)
pickle.loads(base64.b64decode(sys.argv[1]))
print(json.dumps(sorted(set(sys.modules) - before)))
"""

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


def last_line_json(code: str, argument: str) -> list[str]:
    run = subprocess.run([sys.executable, "-c", code, argument], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_training_childs_entry_point_needs_no_import():
    from worker.service import supervisor

    entry = base64.b64encode(pickle.dumps(supervisor.train_job)).decode()  # the Process target JobRun gives
    assert last_line_json(UNPICKLE_AFTER_PRELOAD, entry) == []


def test_a_job_forked_from_the_process_server_imports_nothing_heavy():
    spec = {"model": TINY_MODEL, "training": {**TINY_TRAINING, "max_steps": 4, "eval_every": 2}}
    imported = last_line_json(TRAIN_AFTER_PRELOAD, json.dumps(spec))
    # (A few small torch modules, such as the serializer's config, may still come on first use.)
    heavy = [name for name in imported if name.split(".")[0] in HEAVY or name.startswith(HEAVY_TORCH)]
    assert heavy == [], heavy
