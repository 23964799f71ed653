"""With real workers: retention as the job runs (the best and the last
CHARRNN_KEEP_CHECKPOINTS checkpoints, rows and files), an exact resume after a kill -9 although older
checkpoints were pruned, then DELETE /checkpoints/{id} of the best and DELETE /jobs/{id} of the job."""

from __future__ import annotations

import signal
import time

import pytest

from tests.harness import Service, small_corpus

KEEP = 2
TRAINING = {"max_steps": 1200, "checkpoint_every": 50, "eval_every": 50, "log_every": 50, "seed": 5}


@pytest.fixture
def svc(tmp_path):
    # A lease with room: a worker under load must not lose a finished job before its outcome is written.
    s = Service(tmp_path, job_lease_seconds=6, keep_checkpoints=KEEP)
    s.start_api()
    yield s
    s.stop()


def checkpoint_events(client, job_id: str) -> list[dict]:
    events = client.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    return [e for e in events if e["type"] == "checkpoint"]


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def kept(svc: Service, client, job_id: str) -> tuple[list[dict], set[str]]:
    """(the job's checkpoint rows by step, the step files in its run folder, relative to the data dir)."""
    rows = sorted(client.get(f"/jobs/{job_id}/checkpoints", params={"limit": 100}).json()["data"],
                  key=lambda c: c["step"])
    files = {str(p.relative_to(svc.data_dir)) for p in (svc.data_dir / "runs" / job_id / "checkpoints").glob(
        "step-*.safetensors")}
    return rows, files


def assert_retained(svc: Service, client, job_id: str, final_step: int) -> list[dict]:
    rows, files = kept(svc, client, job_id)
    steps = [r["step"] for r in rows]
    best = [r for r in rows if r["is_best"]]
    assert steps[-KEEP:] == sorted(steps)[-KEEP:] and steps[-1] == final_step, steps
    assert best and len(rows) <= KEEP + 1, steps  # the last KEEP, and the best when it is older
    assert len(rows) == KEEP + 1 or best[-1]["step"] in steps[-KEEP:], steps
    # Every row has its file and no pruned file is left behind.
    paths = {f"runs/{job_id}/checkpoints/step-{s:08d}.safetensors" for s in steps}
    assert files == paths, (files, paths)
    return rows


def test_retention_keeps_the_best_and_the_last_n_and_a_killed_job_resumes_exactly(svc):
    client = svc.client()
    corpus = svc.upload(client, small_corpus(30_000), name="retention")
    worker = svc.start_worker()
    job = svc.create_job(client, corpus["id"], training=TRAINING, name="pruned-then-killed")
    # Past the point where retention has pruned: more checkpoints written than are kept.
    wait_until(lambda: len(checkpoint_events(client, job["id"])) >= KEEP + 3, 120, "several checkpoints")
    rows, _files = kept(svc, client, job["id"])
    assert len(rows) <= KEEP + 1, rows  # pruned as the job runs, not at its end

    worker.send_signal(signal.SIGKILL)
    worker.wait()
    svc.start_worker(wait=False)
    resumed = wait_until(
        lambda: next((e for e in client.get(f"/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
                      if e["message"].startswith("resumed from step")), None),
        90, "the resume",
    )
    resumed_at = resumed["data"]["resumed_from_step"]
    assert resumed_at >= (KEEP + 2) * TRAINING["checkpoint_every"], resumed_at

    twin = svc.create_job(client, corpus["id"], training=TRAINING, name="twin")
    done = svc.wait_job(client, job["id"], timeout=180)
    twin = svc.wait_job(client, twin["id"], timeout=180)
    assert done["status"] == twin["status"] == "succeeded", (done, twin)
    for key in ("step", "train_loss", "val_loss", "best_val_loss"):
        assert done["progress"][key] == twin["progress"][key], key
    curve = lambda j: [(m["step"], m["train_loss"], m["val_loss"])  # noqa: E731
                       for m in client.get(f"/jobs/{j}/metrics").json()]
    assert [p for p in curve(job["id"]) if p[0] > resumed_at] == [p for p in curve(twin["id"]) if p[0] > resumed_at]

    rows = assert_retained(svc, client, job["id"], TRAINING["max_steps"])
    twin_rows = assert_retained(svc, client, twin["id"], TRAINING["max_steps"])
    assert [(r["step"], r["is_best"]) for r in rows] == [(r["step"], r["is_best"]) for r in twin_rows]

    # The best of an ended job may be deleted: generation then uses the best that remains.
    best = [r for r in rows if r["is_best"]][-1]
    assert client.delete(f"/checkpoints/{best['id']}").status_code == 204
    r = client.post("/generate", json={"model": job["id"], "length": 20, "seed": 1})
    assert r.status_code == 200 and r.json()["checkpoint_id"] != best["id"], r.text
    assert r.json()["checkpoint_id"] in {c["id"] for c in rows}

    # Deleting the job takes its rows, its files and its run folder; the twin is untouched.
    assert client.delete(f"/jobs/{job['id']}").status_code == 204
    assert client.get(f"/jobs/{job['id']}").status_code == 404
    assert not (svc.data_dir / "runs" / job["id"]).exists()
    assert client.post("/generate", json={"model": job["id"], "length": 5}).status_code == 404
    assert client.post("/generate", json={"model": twin["id"], "length": 5}).status_code == 200
