"""Worker faults, for real: corrupt checkpoint files, a training child that dies, a worker started without
its dependencies, a disk that fills up mid-job, and more data-parallel processes than the worker has."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT, Service, small_corpus, wait_event

pytestmark = pytest.mark.slow

TRAINING = {"max_steps": 60, "eval_every": 20, "checkpoint_every": 20, "log_every": 10, "seed": 5}


def checkpoints_of(client, job_id: str) -> list[dict]:
    return sorted(
        client.get(f"/jobs/{job_id}/checkpoints", params={"limit": 100}).json()["data"], key=lambda c: c["step"]
    )


def weights_file(svc: Service, job_id: str, step: int) -> Path:
    return svc.data_dir / "runs" / job_id / "checkpoints" / f"step-{step:08d}.safetensors"


def test_corrupt_checkpoints_answer_409_and_a_jobs_best_falls_back(svc):
    client = svc.client()
    corpus = svc.upload(client, small_corpus(), name="integrity")
    worker = svc.start_worker()
    job = svc.wait_job(client, svc.create_job(client, corpus["id"], training=TRAINING)["id"])
    assert job["status"] == "succeeded", job
    steps = checkpoints_of(client, job["id"])
    assert [c["step"] for c in steps] == [20, 40, 60], steps

    # The digest header: the file's sha256, hex and RFC 3230 base64, so a client can check what it got.
    first = client.get(f"/checkpoints/{steps[0]['id']}/download")
    assert first.status_code == 200
    digest = hashlib.sha256(first.content).digest()
    assert first.headers["x-checksum-sha256"] == digest.hex()
    assert first.headers["digest"] == "sha-256=" + base64.b64encode(digest).decode()
    assert steps[0]["sha256"] == digest.hex() and steps[0]["size_bytes"] == len(first.content)

    best = client.post("/generate", json={"model": job["id"], "length": 5, "seed": 1}).json()["checkpoint_id"]
    assert best == steps[-1]["id"]  # (loaded now: the corruption below must be caught on a fresh load)
    # Corrupt the two newest: one truncated to 100 bytes (the probe), one with a byte flipped
    # (same size: only the sha256 can tell).
    newest, middle = weights_file(svc, job["id"], 60), weights_file(svc, job["id"], 40)
    newest.write_bytes(newest.read_bytes()[:100])
    data = bytearray(middle.read_bytes())
    data[-1] ^= 0xFF
    middle.write_bytes(bytes(data))
    # A new worker, so that nothing is cached: it must load, and check, the files.
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)
    worker = svc.start_worker()

    # From the job id: the worker finds the best damaged, and generation falls back to the last good one.
    r = client.post("/generate", json={"model": job["id"], "length": 20, "seed": 1})
    assert r.status_code == 200, r.text
    assert r.json()["checkpoint_id"] == steps[0]["id"] and len(r.json()["text"]) == 20
    r = client.post("/generate", json={"model": job["id"], "length": 20, "seed": 1, "stream": True})
    assert r.status_code == 200 and "event: done" in r.text

    # By checkpoint id: a clear 409 naming it, with no server path.
    for checkpoint in steps[1:]:
        r = client.post("/generate", json={"model": checkpoint["id"], "length": 5})
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert checkpoint["id"] in detail and "corrupt" in detail and str(svc.root) not in detail, detail
        r = client.get(f"/checkpoints/{checkpoint['id']}/download")
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert checkpoint["id"] in detail and "corrupt" in detail and str(svc.root) not in detail, detail
    assert client.get(f"/checkpoints/{steps[0]['id']}/download").status_code == 200

    # The worker lived through all of it, and still serves.
    assert worker.poll() is None and svc.live_workers() >= 1
    r = client.post("/generate", json={"model": steps[0]["id"], "length": 5, "seed": 2})
    assert r.status_code == 200, r.text


def test_the_death_message_quotes_the_childs_last_error(tmp_path):
    """A child that dies without reporting (a crash in its bootstrap, a C library's abort) leaves its
    stderr in the run directory; the job's error quotes the exception, not a guess about memory."""
    from worker.service.exits import death_message, stderr_tail

    log = tmp_path / "stderr.log"
    log.write_text(
        "Traceback (most recent call last):\n"
        '  File "/usr/lib/python3.11/multiprocessing/spawn.py", line 120, in spawn_main\n'
        "    exitcode = _main(fd, parent_sentinel)\n"
        "ModuleNotFoundError: No module named 'safetensors'\n"
    )
    message = death_message(1, stderr_tail(log))
    assert message == "the training process exited with code 1: ModuleNotFoundError: No module named 'safetensors'"
    assert "SIGSEGV" in death_message(-signal.SIGSEGV, ["Fatal Python error: Segmentation fault", "  File x"])
    assert "without an error message" in death_message(1, stderr_tail(tmp_path / "absent.log"))


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_worker_and_serve_refuse_to_start_without_torch(tmp_path, command):
    # `sys.modules["torch"] = None` is how Python spells "not installed": find_spec says None, import fails.
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARRNN_")}
    env.update(PYTHONPATH=str(shim), CHARRNN_DATA_DIR=str(tmp_path / "data"))
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", command, *(["--port", "1"] if command == "serve" else [])],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "torch not installed" in result.stderr, result.stderr
    assert "pip install -e '.[worker]'" in result.stderr and "pip install torch==2.13.0" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # refused before anything else: no database made


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a ballast file until the filesystem is full."""
    ballast = directory / "ballast"
    with open(ballast, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while f.write(b"\0" * 65536):  # unbuffered: the error comes from this write, not from close
            pass
    return ballast


def test_disk_full_at_a_checkpoint_keeps_the_previous_one_and_fails_saying_so(tmp_path):
    from worker.engine.checkpoint import load_model

    db = tmp_path / "db"
    db.mkdir()
    svc = Service(tmp_path, database_url=f"sqlite:///{db}/charrnn.db")
    with small_tmpfs(svc.data_dir / "runs", "4m") as runs:
        svc.start_api()
        try:
            client = svc.client()
            corpus = svc.upload(client, small_corpus(), name="disk-full")
            svc.start_worker()
            training = {**TRAINING, "max_steps": 100_000, "eval_every": 10_000}
            job = svc.create_job(client, corpus["id"], training=training)
            wait_event(client, job["id"], lambda e: e["type"] == "checkpoint")
            ballast = fill(runs)
            job = svc.wait_job(client, job["id"], timeout=60)
            assert job["status"] == "failed", job
            error = job["error"]["message"]
            assert error.startswith("disk full: no space left") and str(svc.root) not in error, error

            run_dir = runs / job["id"]
            last = json.loads((run_dir / "last.json").read_text())
            assert f"the checkpoint of step {last['step']} is kept" in error
            weights = run_dir / "checkpoints" / f"step-{last['step']:08d}.safetensors"
            load_model(weights, expected_sha256=last["sha256"])  # complete, and what was recorded
            assert not list(run_dir.rglob("*.tmp")), "no half-written file is left behind"
            counted = [c["step"] for c in checkpoints_of(client, job["id"])]
            assert counted and max(counted) == last["step"], (counted, last)
            ballast.unlink()
            assert svc.workers[-1].poll() is None
        finally:
            svc.stop()


@pytest.mark.skipif((os.cpu_count() or 1) >= 64, reason="this machine could run 64 CPU ranks")
def test_more_data_parallel_processes_than_the_worker_has_fails_before_starting_any(svc):
    """`gpus: 64` on a CPU worker is refused before any gloo process starts: 64 of them would take the machine."""
    svc.start_worker()
    with svc.client() as client:
        corpus = svc.upload(client, small_corpus(), name="ranks")
        job = svc.create_job(client, corpus["id"], training={"gpus": 64, "batch_size": 64, "seq_len": 8})
        done = svc.wait_job(client, job["id"])
    assert done["status"] == "failed", done
    cores = os.cpu_count() or 1
    assert f"training.gpus=64, but this worker has {cores} CPU cores" in done["error"]["message"], done
    assert not list((svc.data_dir / "runs" / job["id"] / "checkpoints").glob("*.safetensors"))


# Planted in every process of the worker (sitecustomize runs at interpreter start, the training children's
# process server included): once worker.engine.trainer is imported, its learning-rate function raises at
# step 5 a ValueError in a run seeded PLANTED_SEED (a bug: nothing the user sent is wrong), and a
# CorpusError in one seeded PLANTED_SEED + 1 (an EngineError: the user's problem, in the engine's words).
PLANTED_SEED = 4242
PLANTED_BUG = f'''
import importlib.abc, importlib.machinery, sys

class PlantBug(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "worker.engine.trainer":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            lr_at = module.lr_at

            def broken_lr_at(config, step, progress):
                if config.seed == {PLANTED_SEED} and step == 5:
                    raise ValueError("planted bug: lr_at cannot read /srv/charrnn/secret at step 5")
                if config.seed == {PLANTED_SEED + 1} and step == 5:
                    from worker.engine.errors import CorpusError
                    raise CorpusError("planted user error: this corpus cannot be trained on; upload another")
                return lr_at(config, step, progress)

            module.lr_at = broken_lr_at

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, PlantBug())
'''


def test_a_bugs_value_error_in_training_fails_the_job_as_an_internal_error_logged_with_its_traceback(svc, tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(PLANTED_BUG)
    svc.env["PYTHONPATH"] = str(shim)
    svc.start_worker()
    with svc.client() as client:
        corpus = svc.upload(client, small_corpus(), name="planted")
        job = svc.wait_job(client, svc.create_job(client, corpus["id"], training={"seed": PLANTED_SEED})["id"])
        # The user's problem, raised in the same place, still reads as theirs.
        theirs = svc.create_job(client, corpus["id"], training={"seed": PLANTED_SEED + 1})
        theirs = svc.wait_job(client, theirs["id"])
    assert job["status"] == "failed", job
    error = job["error"]["message"]
    # Not shown as the user's mistake: no exception text, no path; an id to quote to the operator.
    assert error.startswith("internal error err_") and "planted" not in error and "/srv" not in error, error
    error_id = error.split()[2].rstrip(":")
    log = svc.logs[-1].read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{") and error_id in line]
    [logged] = [line for line in lines if line.get("error_id") == error_id]
    assert logged["level"] == "error" and logged["job_id"] == job["id"], logged
    trace = logged["message"]
    assert "Traceback (most recent call last)" in trace and "in broken_lr_at" in trace, trace
    assert "ValueError: planted bug: lr_at cannot read /srv/charrnn/secret at step 5" in trace, trace
    assert theirs["status"] == "failed", theirs
    assert theirs["error"]["message"] == "planted user error: this corpus cannot be trained on; upload another"
    assert theirs["id"] not in "".join(line for line in log.splitlines() if "internal error" in line)
