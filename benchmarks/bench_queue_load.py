"""Load: 3 workers on PostgreSQL run 50 small jobs; every job must run exactly once.

    .venv/bin/python benchmarks/bench_queue_load.py [--jobs 50] [--workers 3] [--corpus PATH]

Starts a throwaway database on the local PostgreSQL server, the API and N real worker processes,
submits the jobs through the HTTP API, and reports jobs per minute, the time from submission to claim
(queue wait), the claim statement's own latency, and the exactly-once check (attempts and
"running" status events per job). Writes benchmarks/out/queue_load.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _support import Service, add_corpus_argument, queue_dummy_jobs, throwaway_database, write_results

JOB_MODEL = {"cell": "gru", "hidden_size": 32, "num_layers": 1, "embedding_dim": 16}
JOB_TRAINING = {"seq_len": 16, "batch_size": 4, "max_steps": 20, "eval_every": 20, "checkpoint_every": 20,
                "log_every": 10, "sample_length": 20}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def claim_latencies(database_url: str, n: int) -> list[float]:
    """Seconds per claim statement, measured directly against the database with n queued rows."""
    import os

    os.environ["CHARRNN_DATABASE_URL"] = database_url
    from app.db import session_scope
    from app.jobs import lifecycle

    queue_dummy_jobs(n)
    latencies = []
    for _ in range(n):
        start = time.perf_counter()
        with session_scope() as session:
            if lifecycle.claim(session, worker_id="wrk_bench", lease_seconds=60) is None:
                break
        latencies.append(time.perf_counter() - start)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--workers", type=int, default=3)
    add_corpus_argument(parser)
    args = parser.parse_args()
    text = args.corpus.read_bytes()[:20_000].decode("utf-8", "ignore")  # each job trains on its first 20 kB

    with throwaway_database() as database_url, tempfile.TemporaryDirectory() as tmp:
        # One thread each (three workers share the machine's cores), a 10 s lease, and one owner queues all.
        svc = Service(Path(tmp), test_defaults=False, database_url=database_url, job_lease_seconds=10, device="cpu",
                      train_threads=1, generation_threads=1, max_active_jobs_per_owner=max(10, args.jobs))
        svc.start_api()
        for _ in range(args.workers):
            svc.start_worker()
        try:
            with svc.client() as client:
                corpus = svc.upload(client, text, name="load")
                start = time.monotonic()
                jobs = [svc.create_job(client, corpus["id"], model=JOB_MODEL, training={**JOB_TRAINING, "seed": i})
                        for i in range(args.jobs)]
                finished = [svc.wait_job(client, job["id"], timeout=1800) for job in jobs]
                elapsed = time.monotonic() - start
                waits, running_events = [], []
                for job in finished:
                    events = client.get(f"/jobs/{job['id']}/events", params={"limit": 100}).json()["data"]
                    starts = [e for e in events if e["type"] == "status" and e["data"].get("status") == "running"]
                    running_events.append(len(starts))
                    created = job["created_at"]
                    waits.append(_seconds_between(created, starts[0]["created_at"]) if starts else float("nan"))
            # The claim statement alone, on the same database, with the service stopped.
        finally:
            svc.stop()
        latencies = claim_latencies(database_url, 200)

    ok = all(j["status"] == "succeeded" for j in finished)
    once = all(j["attempts"] == 1 for j in finished) and all(n == 1 for n in running_events)
    result = {
        "jobs": args.jobs,
        "workers": args.workers,
        "all_succeeded": ok,
        "every_job_ran_exactly_once": once,
        "wall_seconds": elapsed,
        "jobs_per_minute": args.jobs / elapsed * 60,
        "queue_wait_median_s": statistics.median(waits),
        "queue_wait_p99_s": percentile(waits, 0.99),
        "claim_latency_median_ms": statistics.median(latencies) * 1000,
        "claim_latency_p99_ms": percentile(latencies, 0.99) * 1000,
    }
    print(json.dumps(result, indent=2))
    write_results("queue_load", result)
    if not (ok and once):
        sys.exit(1)


def _seconds_between(a: str, b: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


if __name__ == "__main__":
    main()
