"""benchmarks/gpu_check.py on the CPU: every part of the GPU check that a CPU can run, with short
settings, so the script a GPU machine runs is known to work before it gets one."""

import json
import os
import subprocess
import sys

import pytest

from tests.harness import ROOT, SHAKESPEARE


@pytest.mark.slow
def test_the_gpu_check_passes_on_the_cpu():
    args = ["--device", "cpu", "--quick", "--corpus", str(SHAKESPEARE), "--train-seconds", "4",
            "--resume-steps", "6", "--streams", "8", "--chars", "60", "--serve-steps", "6"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARRNN_")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout.strip().splitlines()[-1])  # one JSON line, whatever the outcome
    assert report["failures"] == [] and done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert report["train"]["steps"] > 0 and report["train"]["val_loss"] is not None
    assert report["cpu_load"]["greedy_chars_agreeing"] == 200
    assert report["resume"]["same_weights"] and report["resume"]["resumed_from_step"] == 9
    assert report["generation"]["seeded_texts_differing_batched"] == 0 and report["generation"]["peak_rows"] > 1
    assert report["serve"]["job"] == "succeeded" and report["serve"]["job_device"] == "cpu"
    assert report["serve"]["generated_chars"] == 100


def test_a_failed_check_exits_non_zero_and_says_why():
    """No CUDA GPU here: asking for one is a failure, reported in the JSON line and the exit status."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cuda"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 1 and "no CUDA GPU" in report["failures"][0]
