"""Scale-out: several workers on PostgreSQL each run a share of the jobs, each job exactly once;
a job that asks for 2 GPUs trains data-parallel (2 gloo processes on a CPU worker) through the service."""

from __future__ import annotations

import pytest

from tests.harness import Service, small_corpus

pytestmark = pytest.mark.slow

QUICK = {"max_steps": 20, "eval_every": 20, "checkpoint_every": 20, "log_every": 10, "sample_length": 10}


def running_events(client, job_id: str) -> list[dict]:
    events = client.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    return [e for e in events if e["type"] == "status" and e["data"].get("status") == "running"]


def test_three_workers_on_postgres_run_every_job_exactly_once(tmp_path, postgres_url):
    svc = Service(tmp_path, database_url=postgres_url, job_lease_seconds=10)
    svc.start_api()
    try:
        svc.start_workers(3)
        with svc.client() as client:
            corpus = svc.upload(client, small_corpus(), name="many")
            jobs = [svc.create_job(client, corpus["id"], training={**QUICK, "seed": i}) for i in range(6)]
            done = [svc.wait_job(client, j["id"], timeout=180) for j in jobs]
            assert all(j["status"] == "succeeded" and j["attempts"] == 1 for j in done), done
            claims = [running_events(client, j["id"]) for j in done]
            assert all(len(c) == 1 for c in claims), "each job started exactly once"
            workers = {c[0]["data"]["worker_id"] for c in claims}
            assert len(workers) >= 2, "the jobs were shared between workers"
            r = client.post("/generate", json={"model": done[0]["id"], "length": 30, "seed": 2})
            assert r.status_code == 200 and len(r.json()["text"]) == 30
    finally:
        svc.stop()


def test_job_asking_for_two_gpus_trains_data_parallel_on_a_cpu_worker(service, client, corpus):
    job = service.create_job(client, corpus["id"], training={**QUICK, "gpus": 2, "batch_size": 4})
    done = service.wait_job(client, job["id"], timeout=180)
    assert done["status"] == "succeeded", (done, service.log_text())
    assert done["progress"]["step"] == QUICK["max_steps"]
    assert done["training"]["gpus"] == 2
    assert client.get(f"/jobs/{job['id']}/checkpoints").json()["data"], "rank 0 saved checkpoints"


def test_gpus_must_divide_the_batch(service, client, corpus):
    r = client.post("/jobs", json={"corpus_id": corpus["id"], "training": {"gpus": 3, "batch_size": 4}})
    assert r.status_code == 422
    assert "multiple of gpus=3" in r.json()["detail"]
