"""A killed training process is retried from its last checkpoint until CHARRNN_MAX_ATTEMPTS are spent;
a damaged checkpoint is refused as `init_from` when the job is created (409 naming it), on both faces."""

from __future__ import annotations

import os
import signal

import pytest

from tests.harness import Service, small_corpus, training_children, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    s = Service(tmp_path_factory.mktemp("retries"), max_attempts=2)
    s.start_api()
    s.start_worker()
    yield s
    s.stop()


def events(client, job_id: str) -> list[dict]:
    return client.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]


def test_a_killed_training_child_resumes_until_the_attempts_are_spent(svc):
    client = svc.client()
    corpus = svc.upload(client, small_corpus(), name="killed")
    worker = svc.workers[-1]
    training = {"max_steps": 100_000, "checkpoint_every": 20, "eval_every": 20, "log_every": 10}
    job = svc.create_job(client, corpus["id"], training=training)

    wait_for(lambda: any(e["type"] == "checkpoint" for e in events(client, job["id"])), 60, "a checkpoint")
    first = wait_for(lambda: training_children(worker.pid), 10, "the training child")
    for pid in first:
        os.kill(pid, signal.SIGKILL)  # an operator, or the out-of-memory killer after another's spike
    resumed = wait_for(
        lambda: [e for e in events(client, job["id"]) if e["message"].startswith("resumed from step")], 60,
        "the job to resume",
    )
    assert resumed[0]["data"]["resumed_from_step"] >= 20  # from its last checkpoint, not from scratch
    messages = [e["message"] for e in events(client, job["id"])]
    requeued = [m for m in messages if m.startswith("back in the queue")]
    assert len(requeued) == 1 and "SIGKILL" in requeued[0] and "attempt 1 of 2" in requeued[0], messages
    assert client.get(f"/jobs/{job['id']}").json()["attempts"] == 2

    second = wait_for(lambda: [p for p in training_children(worker.pid) if p not in first], 30, "a new training child")
    for pid in second:
        os.kill(pid, signal.SIGKILL)
    done = svc.wait_job(client, job["id"], timeout=60)
    assert done["status"] == "failed", done
    error = done["error"]["message"]
    assert "SIGKILL" in error and "2 attempts" in error and "CHARRNN_MAX_ATTEMPTS=2" in error, error
    assert worker.poll() is None  # the worker lives on


def test_init_from_a_damaged_checkpoint_is_refused_when_the_job_is_created(svc):
    client = svc.client()
    corpus = svc.upload(client, small_corpus(), name="parent")
    parent = svc.wait_job(client, svc.create_job(client, corpus["id"])["id"])
    assert parent["status"] == "succeeded", parent
    checkpoints = sorted(
        client.get(f"/jobs/{parent['id']}/checkpoints", params={"limit": 100}).json()["data"], key=lambda c: c["step"]
    )
    flipped, cut = checkpoints[0], checkpoints[1]
    runs = svc.data_dir / "runs" / parent["id"] / "checkpoints"
    path = runs / f"step-{flipped['step']:08d}.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the weights: the header still reads
    path.write_bytes(bytes(data))
    path = runs / f"step-{cut['step']:08d}.safetensors"
    path.write_bytes(path.read_bytes()[:-100])  # a copy cut short

    for checkpoint, problem in ((flipped, "sha256"), (cut, "bytes")):
        r = client.post("/jobs", json={"corpus_id": corpus["id"], "init_from": checkpoint["id"]})
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert checkpoint["id"] in detail and problem in detail and str(svc.root) not in detail, detail

        r = client.post("/v1/fine_tuning/jobs", json={"model": checkpoint["id"], "training_file": corpus["id"]})
        assert r.status_code == 409, r.text
        assert checkpoint["id"] in r.json()["error"]["message"], r.text

    # No job was queued for them; an intact checkpoint of the same job is still taken.
    intact = checkpoints[-1]
    r = client.post("/jobs", json={"corpus_id": corpus["id"], "init_from": intact["id"],
                                   "training": {"max_steps": 1, "seed": 1}})
    assert r.status_code == 201, r.text
