"""Per-owner limits hold across API processes that share one database.

Two real `charrnn api` processes on one database (a SQLite file; PostgreSQL when marked postgres) take
concurrent requests from one owner: exactly the limit is admitted in total, not the limit per process.
Generations are held in flight by a worker the test stands in for (a real HTTP server registered in the
workers table that answers only when the test lets it), so "in flight" lasts exactly as long as the test
needs; a killed API process's slots are freed once their lease runs out.
"""

from __future__ import annotations

import json
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.harness import KEY, Service, small_corpus, wait_for

LIMIT = 3
REQUESTS_PER_API = 4


class HeldWorker:
    """A generation server that holds every request until `let_go()`, then answers 409 with a detail."""

    def __init__(self):
        self.arrived = 0
        self.lock = threading.Lock()
        self.go = threading.Event()
        held = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the stdlib's name)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with held.lock:
                    held.arrived += 1
                held.go.wait(60)
                body = json.dumps({"detail": "answered by the test's worker"}).encode()
                self.send_response(409)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def let_go(self) -> None:
        self.go.set()

    def close(self) -> None:
        self.go.set()
        self.server.shutdown()


def two_apis(root: Path, database_url: str | None = None, **settings) -> tuple[Service, Service]:
    if database_url:
        settings["database_url"] = database_url
    # A long worker lease: the test's worker row is written once and must stay live.
    first = Service(root, job_lease_seconds=600, **settings)
    first.start_api()
    second = Service(root, job_lease_seconds=600, **settings)  # same data dir and database, its own port
    second.start_api()
    return first, second


def database_url(service: Service) -> str:
    return service.env.get("CHARRNN_DATABASE_URL") or f"sqlite:///{service.data_dir / 'charrnn.db'}"


def add_model_and_worker(url: str, worker_url: str) -> str:
    """A checkpoint row of the key's owner and a live worker row at `worker_url`; the checkpoint's id."""
    from app.db import make_engine, utcnow
    from app.ids import new_id
    from app.keys.service import hash_key
    from app.models import ApiKey, Checkpoint, Job, Worker

    engine = make_engine(url)
    try:
        with Session(engine) as session, session.begin():
            owner = session.scalar(select(ApiKey.name).where(ApiKey.key_hash == hash_key(KEY)))
            job = Job(id=new_id("job"), owner=owner, corpus_id="corpus_none", status="succeeded", model={},
                      training={}, progress={}, attempts=1, created_at=utcnow())
            session.add(job)
            session.flush()
            checkpoint_id = new_id("ckpt")
            checkpoint = Checkpoint(id=checkpoint_id, job_id=job.id, owner=owner, step=1, path="runs/x.safetensors",
                                    size_bytes=1, created_at=utcnow())
            session.add(checkpoint)
            now = utcnow()
            session.add(Worker(id=new_id("wrk"), hostname="test", pid=1, url=worker_url, started_at=now,
                               heartbeat_at=now))
        return checkpoint_id
    finally:
        engine.dispose()


def clients(apis) -> list[httpx.Client]:
    return [httpx.Client(base_url=a.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=90) for a in apis]


def generations_in_flight_hold_across_apis(root: Path, url: str | None) -> None:
    worker = HeldWorker()
    apis = two_apis(root, url, max_concurrent_generations_per_owner=LIMIT, generation_slot_lease_seconds=3)
    cs = clients(apis)
    try:
        checkpoint_id = add_model_and_worker(database_url(apis[0]), worker.url)
        body = {"model": checkpoint_id, "prompt": "a", "length": 5}
        with ThreadPoolExecutor(2 * REQUESTS_PER_API) as pool:
            futures = [pool.submit(cs[i % 2].post, "/generate", json=body) for i in range(2 * REQUESTS_PER_API)]
            # Every request past the limit is answered at once (429); the admitted ones wait at the worker.
            wait_for(lambda: sum(f.done() for f in futures) == 2 * REQUESTS_PER_API - LIMIT, 60, "the refusals")
            refused = [f.result() for f in futures if f.done()]
            waiting = [f for f in futures if not f.done()]
            assert all(r.status_code == 429 for r in refused), [r.text for r in refused]
            assert "CHARRNN_MAX_CONCURRENT_GENERATIONS_PER_OWNER = 3" in refused[0].json()["detail"]
            assert worker.arrived == LIMIT  # exactly the limit reached the worker, from the two APIs together
            worker.let_go()
            answered = [f.result() for f in waiting]
        assert sorted(r.status_code for r in answered).count(409) == LIMIT

        # Released when each request ended: both APIs admit again.
        for c in cs:
            r = wait_for(lambda c=c: (r := c.post("/generate", json=body)).status_code == 409 and r, 30,
                         "a slot freed by the ended requests")
            assert "the test's worker" in r.json()["detail"]

        # An API process killed while holding slots: its slots expire with their lease, the other admits again.
        worker.go.clear()
        before = worker.arrived
        with ThreadPoolExecutor(LIMIT) as pool:
            held = [pool.submit(cs[0].post, "/generate", json=body) for _ in range(LIMIT)]
            wait_for(lambda: worker.arrived == before + LIMIT, 60, "the first API to hold every slot")
            assert cs[1].post("/generate", json=body).status_code == 429
            apis[0].api_proc.send_signal(signal.SIGKILL)
            apis[0].api_proc.wait()
            worker.let_go()
            for f in held:
                with pytest.raises(httpx.TransportError):
                    f.result()
        wait_for(lambda: cs[1].post("/generate", json=body).status_code == 409, 60, "the killed API's slots to expire")
    finally:
        for c in cs:
            c.close()
        for a in apis:
            a.stop()
        worker.close()


def active_jobs_and_stored_bytes_hold_across_apis(root: Path, url: str | None) -> None:
    corpus_text = small_corpus(4_000)
    apis = two_apis(root, url, max_active_jobs_per_owner=LIMIT, max_corpus_bytes_per_owner=LIMIT * 4_000 + 100)
    cs = clients(apis)
    try:
        # Stored bytes: different texts (so no content is shared), each 4,000 bytes; room for LIMIT of them.
        texts = [corpus_text[:-4] + f"{i:04d}" for i in range(2 * REQUESTS_PER_API)]
        with ThreadPoolExecutor(len(texts)) as pool:
            uploads = list(pool.map(
                lambda i: cs[i % 2].post("/corpora", content=texts[i].encode(),
                                         headers={"Content-Type": "text/plain"}),
                range(len(texts)),
            ))
        codes = sorted(r.status_code for r in uploads)
        assert codes == [201] * LIMIT + [429] * (len(texts) - LIMIT), [r.text for r in uploads]
        stored = cs[0].get("/corpora").json()["data"]
        assert len(stored) == LIMIT

        # Active jobs: no worker runs, so every admitted job stays queued.
        body = {"corpus_id": stored[0]["id"], "model": {"hidden_size": 16, "num_layers": 1},
                "training": {"max_steps": 5, "batch_size": 4, "seq_len": 16}}
        with ThreadPoolExecutor(2 * REQUESTS_PER_API) as pool:
            jobs = list(pool.map(lambda i: cs[i % 2].post("/jobs", json=body), range(2 * REQUESTS_PER_API)))
        codes = sorted(r.status_code for r in jobs)
        assert codes == [201] * LIMIT + [429] * (2 * REQUESTS_PER_API - LIMIT), [r.text for r in jobs]
        assert len(cs[1].get("/jobs", params={"status": "queued"}).json()["data"]) == LIMIT
    finally:
        for c in cs:
            c.close()
        for a in apis:
            a.stop()


def test_generations_in_flight_are_limited_across_two_apis_on_sqlite(tmp_path):
    generations_in_flight_hold_across_apis(tmp_path, None)


def test_active_jobs_and_stored_bytes_are_limited_across_two_apis_on_sqlite(tmp_path):
    active_jobs_and_stored_bytes_hold_across_apis(tmp_path, None)


@pytest.mark.postgres
def test_generations_in_flight_are_limited_across_two_apis_on_postgres(tmp_path, postgres_url):
    generations_in_flight_hold_across_apis(tmp_path, postgres_url)


@pytest.mark.postgres
def test_active_jobs_and_stored_bytes_are_limited_across_two_apis_on_postgres(tmp_path, postgres_url):
    active_jobs_and_stored_bytes_hold_across_apis(tmp_path, postgres_url)
