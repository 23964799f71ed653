"""Workers and `charrnn serve` die and stop; jobs survive. A kill -9 mid-job is taken over by another worker
and ends exactly where an uninterrupted twin does; a SIGTERM checkpoints and hands the job back; a worker
that dies under `serve` is restarted."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy

from tests.harness import (
    TINY_MODEL,
    TINY_TRAINING,
    Serve,
    Service,
    children_of,
    curve,
    require_postgres,
    small_corpus,
    throwaway_database,
    wait_event,
    wait_for,
)

pytestmark = pytest.mark.slow


TRAINING = {"max_steps": 1200, "checkpoint_every": 100, "eval_every": 100, "log_every": 50, "seed": 11}
SERVE_TRAINING = {"max_steps": 600, "checkpoint_every": 100, "eval_every": 100, "log_every": 50, "seed": 11}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def svc(request, tmp_path_factory):
    """The recovery story on both databases: SQLite (embedded) and PostgreSQL (scaled out). Every checkpoint
    is kept (no retention), so that the one a job resumed from can be found afterwards."""
    settings = {"keep_checkpoints": 1000}
    with contextlib.ExitStack() as stack:
        if request.param == "postgres":
            require_postgres()
            settings["database_url"] = stack.enter_context(throwaway_database())
        # The harness's 3 s lease: shorter ones lapse on a busy machine while a run writes its last checkpoint.
        s = Service(tmp_path_factory.mktemp(f"recovery-{request.param}"), **settings)
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
    trainers = [p for p in children_of(a.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]
    assert trainers, "training runs in a child process of the worker"

    a.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    a.wait()
    time.sleep(0.5)
    assert not [
        p
        for p in trainers
        if os.path.exists(f"/proc/{p}") and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
    ], "the training child died with its worker"
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


def kill_9(serve: Serve) -> None:
    """SIGKILL to serve's whole process group: API, worker and training child at once."""
    os.killpg(serve.proc.pid, signal.SIGKILL)
    serve.proc.wait()

    def group_alive() -> bool:  # zombies count as gone: they hold no lease, file or port
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == serve.proc.pid and fields[0] != "Z":
                return True
        return False

    wait_for(lambda: not group_alive(), 10, "every process of serve to die")


def test_serve_stopped_by_sigterm_then_killed_whole_resumes_its_job_exactly(tmp_path):
    """`kill -TERM -<pgid>` (systemd, most supervisors) reaches the training child too: the child ignores it,
    the worker checkpoints and requeues, and the stop does not count as an attempt. Then kill -9 to the
    whole group (a power cut, an OOM-killed cgroup): the next `serve` takes the job back once its lease runs
    out. The job ends exactly where an uninterrupted twin does."""
    serve = Serve(tmp_path / "data")
    serve.start()
    client = serve.client()
    try:
        corpus = serve_upload(client)
        body = {"corpus_id": corpus["id"], "model": TINY_MODEL, "training": {**TINY_TRAINING, **SERVE_TRAINING}}
        job = client.post("/jobs", json={**body, "name": "interrupted"}).json()
        seen = wait_event(client, job["id"], lambda e: e["type"] == "checkpoint", timeout=90)

        assert serve.signal_group(signal.SIGTERM) in (0, -signal.SIGTERM), serve.output()
        serve.start()
        client = serve.client()  # (a new port)
        events = client.get(f"/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
        statuses = [e["data"].get("status") for e in events if e["type"] == "status"]
        assert "failed" not in statuses, events
        back = [e for e in events if e["message"].startswith("back in the queue: worker shut down")]
        assert len(back) == 1, events
        stopped_at = int(back[0]["message"].rsplit(" ", 1)[1])
        assert stopped_at >= seen["data"]["step"]  # checkpointed where it stopped
        wait_event(client, job["id"], lambda e: e["message"] == f"resumed from step {stopped_at}")

        wait_event(client, job["id"], lambda e: e["type"] == "checkpoint" and e["data"]["step"] > stopped_at)
        kill_9(serve)
        serve.start()  # same data dir: the job's lease runs out, and the new worker takes it back
        client = serve.client()
        resumed = wait_event(
            client, job["id"], lambda e: e["message"].startswith("resumed from step")
            and e["data"]["resumed_from_step"] > stopped_at, timeout=60,
        )
        resumed_at = resumed["data"]["resumed_from_step"]
        assert resumed_at < SERVE_TRAINING["max_steps"], resumed
        twin = client.post("/jobs", json={**body, "name": "twin"}).json()

        def finished(job_id):
            job = client.get(f"/jobs/{job_id}").json()
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None

        done = wait_for(lambda: finished(job["id"]), 180, "the resumed job to finish")
        twin = wait_for(lambda: finished(twin["id"]), 180, "the twin to finish")
        assert done["status"] == twin["status"] == "succeeded", (done, twin, serve.output())
        assert done["attempts"] == 2 and twin["attempts"] == 1  # the kill counts, the clean stop does not
        for key in ("step", "train_loss", "val_loss", "best_val_loss"):
            assert done["progress"][key] == twin["progress"][key], (key, done["progress"], twin["progress"])
        mine, theirs = curve(client, job["id"]), curve(client, twin["id"])
        assert [r for r in mine if r[0] > resumed_at] == [r for r in theirs if r[0] > resumed_at]
        r = client.post("/generate", json={"model": job["id"], "length": 10, "seed": 1})
        assert r.status_code == 200, r.text
    finally:
        serve.stop()


def serve_upload(client) -> dict:
    r = client.post(
        "/corpora", params={"name": "c"}, content=small_corpus(30_000).encode(), headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 201, r.text
    return r.json()


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
