"""Workers die; jobs survive. A kill -9 mid-job is taken over by another worker and ends exactly where an
uninterrupted twin does; with no worker left the API puts the job back in the queue; a worker that dies
under `serve` is restarted. (Every way of stopping `charrnn serve` itself is in test_stops.py.)"""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest
import sqlalchemy

from tests.harness import (
    Serve,
    Service,
    curve,
    require_postgres,
    small_corpus,
    throwaway_database,
    training_children,
    wait_event,
    wait_for,
)
from worker.service.child import process_alive

pytestmark = pytest.mark.slow


TRAINING = {"max_steps": 1200, "checkpoint_every": 100, "eval_every": 100, "log_every": 50, "seed": 11}


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    """Separate API and worker processes on PostgreSQL, as when scaled out (test_stops.py runs the same
    stops on `charrnn serve` and SQLite). Every checkpoint is kept (no retention), so that the one a job
    resumed from can be found afterwards."""
    require_postgres()
    with throwaway_database() as url:
        # The harness's 3 s lease: shorter ones lapse on a busy machine while a run writes its last checkpoint.
        s = Service(tmp_path_factory.mktemp("recovery"), keep_checkpoints=1000, database_url=url)
        s.start_api()
        yield s
        s.stop()


def delete_rows_of_step(svc: Service, job_id: str, step: int) -> None:
    """What a kill -9 between a checkpoint's files and its row leaves: files on disk, no row, no metric point."""
    url = svc.env.get("CHARRNN_DATABASE_URL") or f"sqlite:///{svc.data_dir / 'charrnn.db'}"
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as db:
        for table in ("checkpoints", "job_metrics"):
            query = sqlalchemy.text(f"DELETE FROM {table} WHERE job_id = :job AND step = :step")
            db.execute(query, {"job": job_id, "step": step})
    engine.dispose()


def test_kill_9_mid_job_resumes_exactly(svc):
    """Killed right after its newest checkpoint's files were written and before their row: the next worker
    takes the job over from that checkpoint, lists it as the best with its loss point, and ends exactly
    where an uninterrupted twin does."""
    from worker.engine.header import read_metadata
    from worker.engine.records import CheckpointStats

    client = svc.client()
    corpus = svc.upload(client, small_corpus(30_000), name="recovery")
    a = svc.start_worker()
    job = svc.create_job(client, corpus["id"], training=TRAINING, name="interrupted")
    wait_event(client, job["id"], lambda e: e["type"] == "checkpoint", timeout=60)
    trainers = training_children(a.pid)
    assert trainers, "training runs in a child process of the worker"

    a.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    a.wait()
    wait_for(lambda: not [p for p in trainers if process_alive(p)], 5, "the training child to die with its worker")
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "running"  # until the lease runs out

    run_dir = svc.data_dir / "runs" / job["id"]
    step = json.loads((run_dir / "last.json").read_text())["step"]
    stats = CheckpointStats.from_file_metadata(read_metadata(run_dir / "checkpoints" / f"step-{step:08d}.safetensors"))
    assert stats.is_best, stats  # early in a run every evaluation is a new best
    delete_rows_of_step(svc, job["id"], step)

    svc.start_worker(wait=False)  # (the dead one still counts as live until its heartbeat ages out)
    resumed = wait_event(client, job["id"], lambda e: e["message"].startswith("resumed from step"), timeout=120)
    recovery = time.monotonic() - killed_at
    print(f"kill -9 -> training resumed on another worker: {recovery:.1f}s (lease 3s); {resumed['message']}")
    assert resumed["data"]["resumed_from_step"] == step, (resumed, step)
    assert 100 <= step < TRAINING["max_steps"], "killed mid-job"
    checkpoints = client.get(f"/jobs/{job['id']}/checkpoints", params={"limit": 100}).json()["data"]
    adopted = [c for c in checkpoints if c["step"] == step]
    assert adopted and adopted[0]["is_best"], checkpoints
    assert adopted[0]["val_loss"] == stats.val_loss
    points = [m for m in client.get(f"/jobs/{job['id']}/metrics").json() if m["step"] == step]
    # The evaluation's point, beside the step's training point (which carries the previous val_loss).
    assert (stats.train_loss, stats.val_loss) in [(m["train_loss"], m["val_loss"]) for m in points], points

    twin = svc.create_job(client, corpus["id"], training=TRAINING, name="twin")
    done = svc.wait_job(client, job["id"], timeout=120)
    twin = svc.wait_job(client, twin["id"], timeout=120)
    assert done["status"] == twin["status"] == "succeeded", (done, twin)
    assert done["attempts"] == 2 and twin["attempts"] == 1
    assert done["progress"]["step"] == twin["progress"]["step"] == TRAINING["max_steps"]
    assert done["progress"]["val_loss"] == twin["progress"]["val_loss"]
    assert done["progress"]["best_val_loss"] == twin["progress"]["best_val_loss"]
    # Not just the end: the loss curve matches point for point after the resume, with no duplicates
    # from the lost attempt. Points reported in the instant between the last write and the kill may
    # be missing, but only up to the step it resumed from.
    resumed_at = resumed["data"]["resumed_from_step"]
    mine, theirs = curve(client, job["id"]), curve(client, twin["id"])
    assert [r for r in mine if r[0] > resumed_at] == [r for r in theirs if r[0] > resumed_at]
    assert len(set(mine)) == len(mine) and set(mine) <= set(theirs)
    steps = [c["step"] for c in client.get(f"/jobs/{job['id']}/checkpoints", params={"limit": 100}).json()["data"]]
    assert resumed_at in steps and len(steps) == len(set(steps))
    messages = [e["message"] for e in client.get(f"/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]]
    assert any("stopped responding" in m for m in messages)

    # Generation still works from the taken-over job.
    r = client.post("/generate", json={"model": job["id"], "length": 20, "seed": 1})
    assert r.status_code == 200 and len(r.json()["text"]) == 20


def test_with_no_worker_left_the_api_puts_a_dead_workers_job_back_in_the_queue(svc):
    for earlier in svc.workers:  # the only worker must be the one that dies
        earlier.send_signal(signal.SIGTERM)
        earlier.wait()
    client = svc.client()
    corpus = svc.upload(client, small_corpus(30_000), name="orphan")
    worker = svc.start_worker()
    job = svc.create_job(client, corpus["id"], training=TRAINING, name="orphaned")
    wait_event(client, job["id"], lambda e: e["type"] == "metrics")
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    requeued = wait_event(client, job["id"], lambda e: "stopped responding" in e["message"], timeout=30)
    assert requeued["data"]["status"] == "queued"
    assert svc.live_workers() == 0  # so the API did it
    job = client.get(f"/jobs/{job['id']}").json()
    assert job["status"] == "queued" and job["attempts"] == 1
    client.post(f"/jobs/{job['id']}/cancel").raise_for_status()  # leave the queue empty for the next test


def readiness(url: str) -> tuple[int, dict]:
    try:
        response = httpx.get(url + "/readyz", timeout=2)
    except httpx.TransportError:
        return 0, {}
    return response.status_code, response.json()


@pytest.mark.slow
def test_serve_restarts_a_worker_that_dies_and_readyz_says_so(tmp_path):
    serve = Serve(tmp_path / "data")
    serve.start()
    url = serve.url
    try:
        _, first = wait_for(lambda: (r := readiness(url))[0] == 200 and r, 60, "serve to be ready")
        assert first["embedded_worker"]["status"] == "running"
        assert first["embedded_worker"]["restarts"] == 0
        old_pid = first["embedded_worker"]["pid"]

        os.kill(old_pid, signal.SIGKILL)  # the OOM killer, a segfault: anything but a requested stop
        # The first restart waits 1 s: long enough to see readiness say so.
        code, body = wait_for(
            lambda: (r := readiness(url))[1].get("embedded_worker", {}).get("status") == "restarting" and r,
            30,
            "serve to notice the dead worker",
        )
        assert code == 503 and body["embedded_worker"]["last_exit"] == -signal.SIGKILL

        def ready_with_new_worker():
            code, body = readiness(url)
            worker = body.get("embedded_worker", {})
            return code == 200 and worker.get("pid") != old_pid and worker.get("status") == "running" and body

        body = wait_for(ready_with_new_worker, 60, "a restarted worker to register")
        assert body["embedded_worker"]["restarts"] == 1
        assert body["embedded_worker"]["last_exit"] == -signal.SIGKILL
        assert body["workers"] >= 1
    finally:
        code = serve.signal_group(signal.SIGINT)
    assert code in (0, -signal.SIGINT, 130)
