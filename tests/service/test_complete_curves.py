"""A fast job's loss curve is complete and the same as its twin's, even after a kill -9 of the whole service.

The job is tiny and logs every other step, so it reports hundreds of points a second: more than the live
feed carries (supervisor.LiveBudget). Every point must still become a row; and with `charrnn serve`'s whole
process group killed mid-run and started again, the resumed job (its journal fills what the kill lost) ends
with exactly the rows of a twin that ran unbroken.
"""

from __future__ import annotations

import signal

import pytest

from tests.harness import TINY_MODEL, TINY_TRAINING, Serve, curve, small_corpus, wait_for

pytestmark = pytest.mark.slow

TRAINING = {**TINY_TRAINING, "max_steps": 1500, "log_every": 2, "eval_every": 500, "checkpoint_every": 250,
            "seed": 11}
POINTS = TRAINING["max_steps"] // TRAINING["log_every"] + TRAINING["max_steps"] // TRAINING["eval_every"]
KILL_AT_STEP = 400  # after the checkpoint at 250, well before the end


def run_job(client, corpus_id: str, name: str) -> str:
    r = client.post("/jobs", json={"corpus_id": corpus_id, "model": TINY_MODEL, "training": TRAINING, "name": name})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def ended(client, job_id: str) -> dict:
    wait_for(lambda: client.get(f"/jobs/{job_id}").json()["status"] in ("succeeded", "failed", "cancelled"), 120,
             f"job {job_id} to end")
    return client.get(f"/jobs/{job_id}").json()


def test_a_fast_jobs_rows_equal_its_twins_after_kill_9_of_the_group(tmp_path):
    serve = Serve(tmp_path / "data")
    serve.start()
    try:
        with serve.client() as client:
            r = client.post("/corpora", params={"name": "fast"}, content=small_corpus(20_000).encode(),
                            headers={"Content-Type": "text/plain"})
            assert r.status_code == 201, r.text
            corpus_id = r.json()["id"]
            twin_id = run_job(client, corpus_id, "twin")
            assert ended(client, twin_id)["status"] == "succeeded"
            twin = curve(client, twin_id)
            job_id = run_job(client, corpus_id, "killed")
            wait_for(lambda: client.get(f"/jobs/{job_id}").json()["progress"].get("step", 0) >= KILL_AT_STEP, 60,
                     f"job {job_id} to reach step {KILL_AT_STEP}")
        serve.signal_group(signal.SIGKILL)  # the API, the worker and its training child, all at once
        serve.start()
        with serve.client() as client:
            job = ended(client, job_id)
            killed = curve(client, job_id)
            events = client.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    finally:
        serve.stop()

    assert len(twin) == POINTS, (len(twin), POINTS)  # every log_every point and evaluation is a row
    assert job["status"] == "succeeded", job
    resumed = [e["data"]["resumed_from_step"] for e in events if e["message"].startswith("resumed from")]
    # The kill landed mid-run (a job that had already finished would prove nothing).
    assert len(resumed) == 1 and resumed[0] < TRAINING["max_steps"], resumed
    assert killed == twin  # row for row: no hole, no duplicate
