"""Workers die and stop; jobs survive. A kill -9 mid-job is taken over by another worker and ends
exactly where an uninterrupted twin does; a SIGTERM checkpoints and hands the job back."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import Service, small_corpus

pytestmark = pytest.mark.slow

TRAINING = {"max_steps": 1200, "checkpoint_every": 100, "eval_every": 100, "log_every": 50, "seed": 11}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def svc(request, tmp_path_factory):
    """The recovery story on both databases: SQLite (embedded) and PostgreSQL (scaled out)."""
    settings = {"job_lease_seconds": 2}
    with contextlib.ExitStack() as stack:
        if request.param == "postgres":
            from tests.postgres import require_postgres, throwaway_database

            require_postgres()
            settings["database_url"] = stack.enter_context(throwaway_database())
        s = Service(tmp_path_factory.mktemp(f"recovery-{request.param}"), **settings)
        s.start_api()
        yield s
        s.stop()


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def wait_event(client, job_id: str, predicate, timeout: float = 60) -> dict:
    deadline, after = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        for event in client.get(f"/jobs/{job_id}/events", params={"after": after, "limit": 1000}).json()["data"]:
            after = event["id"]
            if predicate(event):
                return event
        time.sleep(0.05)
    raise AssertionError(f"no such event for {job_id} within {timeout}s")


def curve(client, job_id):
    return [(m["step"], m["train_loss"], m["val_loss"]) for m in client.get(f"/jobs/{job_id}/metrics").json()]


def test_kill_9_mid_job_resumes_exactly(svc):
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

    svc.start_worker(wait=False)
    resumed = wait_event(client, job["id"], lambda e: e["message"].startswith("resumed from step"))
    recovery = time.monotonic() - killed_at
    print(f"kill -9 -> training resumed on another worker: {recovery:.1f}s (lease 2s); {resumed['message']}")
    assert 100 <= resumed["data"]["resumed_from_step"] < TRAINING["max_steps"], "killed mid-job"

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


def test_sigterm_checkpoints_and_requeues(svc):
    client = svc.client()
    for w in svc.workers:  # the previous test's worker: stop it, so the next job lands on ours
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
            w.wait(30)
    corpus = client.get("/corpora").json()["data"][0]
    w = svc.start_worker()
    job = svc.create_job(
        client,
        corpus["id"],
        training={**TRAINING, "max_steps": 100_000, "checkpoint_every": 10_000},
        name="sigterm",
    )
    wait_event(client, job["id"], lambda e: e["type"] == "metrics" and e["data"]["step"] >= 30)
    w.send_signal(signal.SIGTERM)
    assert w.wait(30) == 0
    stopped = client.get(f"/jobs/{job['id']}").json()
    assert stopped["status"] == "queued" and stopped["attempts"] == 0, stopped
    checkpoints = client.get(f"/jobs/{job['id']}/checkpoints").json()["data"]
    assert checkpoints and checkpoints[0]["step"] >= 30  # saved where it stopped
    assert svc.live_workers() == 0
    assert client.get("/readyz").status_code == 503
    r = client.post("/generate", json={"model": job["id"], "length": 5})
    assert r.status_code == 503 and "no worker" in r.json()["detail"]

    svc.start_worker()
    wait_event(client, job["id"], lambda e: e["message"] == f"resumed from step {checkpoints[0]['step']}")
    cancelled = client.post(f"/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
