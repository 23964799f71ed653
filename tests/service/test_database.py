"""The database misbehaves and the service does not: SQLite locked past the busy timeout, PostgreSQL gone
read-only or away under busy workers, and a flood of metrics that must stay a bounded number of rows."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime

import httpx

from tests.harness import (
    KEY,
    POSTGRES_ADMIN_DSN,
    Service,
    database_service,
    small_corpus,
    wait_event,
    wait_for,
)


def database(svc: Service) -> sqlite3.Connection:
    return sqlite3.connect(svc.data_dir / "charrnn.db", timeout=60, isolation_level=None)


def count_rows(svc: Service, table: str, job_id: str, where: str = "") -> int:
    with database(svc) as db:
        return db.execute(f"SELECT count(*) FROM {table} WHERE job_id = ? {where}", (job_id,)).fetchone()[0]


def test_log_every_1_writes_every_point_and_a_bounded_live_feed(svc):
    """At log_every=1 every step reports: every point is a row (written in batches), while the "metrics" events
    that followers receive come at a bounded rate."""
    from worker.service.supervisor import LIVE_POINTS_BURST, LIVE_POINTS_PER_SECOND

    client = svc.client()
    corpus = svc.upload(client, small_corpus(30_000), name="flood")
    svc.start_worker()
    steps = 1500
    training = {"max_steps": steps, "log_every": 1, "eval_every": 500, "checkpoint_every": 500, "seed": 5}
    job = svc.wait_job(client, svc.create_job(client, corpus["id"], training=training)["id"], timeout=180)
    assert job["status"] == "succeeded" and job["progress"]["step"] == steps, job
    seconds = (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds()
    evaluations = steps // training["eval_every"]  # at steps 500, 1000 and 1500
    bound = LIVE_POINTS_BURST + LIVE_POINTS_PER_SECOND * seconds
    rows = count_rows(svc, "job_metrics", job["id"])
    events = count_rows(svc, "job_events", job["id"], "AND type = 'metrics'")
    print(f"{steps} steps at log_every=1 in {seconds:.1f}s: {rows} metric rows, {events} metrics events")
    assert rows == steps + evaluations, (rows, steps, evaluations)  # every point: the curve is complete
    assert {m["step"] for m in client.get(f"/jobs/{job['id']}/metrics").json()} == set(range(1, steps + 1))
    assert events <= bound, (events, bound)
    assert events < steps / 3  # the live feed was thinned
    assert job["progress"]["train_loss"] is not None  # progress still follows every report


BUSY_TIMEOUT_SECONDS = 4  # short, so the lock below outlasts it quickly (the default is 30 s)


def test_worker_survives_a_database_that_refuses_writes(tmp_path):
    """Another process holds the SQLite write lock longer than the busy timeout, so the worker's
    writes fail with "database is locked". The worker keeps training, /readyz stops counting it once its
    last written heartbeat is a lease old, and it comes back (and the job succeeds) when the lock is gone."""
    svc = Service(tmp_path, sqlite_busy_timeout_seconds=BUSY_TIMEOUT_SECONDS)
    svc.start_api()
    try:
        database_refuses_writes(svc)
    finally:
        svc.stop()


def database_refuses_writes(svc: Service) -> None:
    client = svc.client()
    corpus = svc.upload(client, small_corpus(30_000), name="locked")
    worker = svc.start_worker()
    training = {"max_steps": None, "max_seconds": 20, "eval_every": 200, "checkpoint_every": 200, "log_every": 50}
    job = svc.create_job(client, corpus["id"], training=training)
    wait_event(client, job["id"], lambda e: e["type"] == "metrics")

    locked, release = threading.Event(), threading.Event()

    def hold_lock():
        with database(svc) as db:
            db.execute("BEGIN EXCLUSIVE")
            locked.set()
            release.wait(60)
            db.execute("ROLLBACK")

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(30)
        lock_started = time.monotonic()
        readiness = []
        # Past the busy timeout writes fail rather than wait; a lease (3 s) later the worker is not live.
        while time.monotonic() - lock_started < BUSY_TIMEOUT_SECONDS + 8:
            r = httpx.get(svc.url + "/readyz", timeout=10)
            readiness.append((round(time.monotonic() - lock_started, 1), r.status_code, r.json().get("workers")))
            assert worker.poll() is None, "the worker died of a database error:\n" + svc.log_text()
            time.sleep(1)
    finally:
        release.set()
        holder.join()
    # The API reads without the write lock, so /readyz answered all along, and said the truth.
    assert any(w == 0 and code == 503 for _, code, w in readiness if _ > 5), readiness
    deadline = time.monotonic() + 30
    while svc.live_workers() == 0:
        assert time.monotonic() < deadline, "the worker never came back:\n" + svc.log_text()
        time.sleep(0.5)
    done = svc.wait_job(client, job["id"], timeout=120)
    assert done["status"] == "succeeded", (done, svc.log_text())
    assert worker.poll() is None
    log = svc.logs[1].read_text()
    assert "the database is unavailable" in log and "the database is back" in log
    assert log.count("the database is unavailable") <= 3, log  # once per outage and writer, not per try
    assert "Traceback" not in log, log


def test_worker_survives_a_postgres_database_gone_read_only(tmp_path, postgres_url):
    """The same on PostgreSQL: the database turns read-only (as after a failover to a replica) and every
    connection is cut. The worker's writes fail at once; it keeps training and waits, /readyz (a read)
    says it is not live once its last written heartbeat is a lease old, and all recovers after."""
    import psycopg

    
    name = postgres_url.rsplit("/", 1)[1]

    def admin(*statements: str) -> None:
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    cut = f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    svc = Service(tmp_path, database_url=postgres_url)
    svc.start_api()
    try:
        client = svc.client()
        corpus = svc.upload(client, small_corpus(30_000), name="read-only")
        worker = svc.start_worker()
        training = {"max_steps": None, "max_seconds": 15, "eval_every": 200, "checkpoint_every": 200}
        job = svc.create_job(client, corpus["id"], training=training)
        wait_event(client, job["id"], lambda e: e["type"] == "metrics")
        admin(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on', cut)
        try:
            deadline = time.monotonic() + 20
            while svc.live_workers() != 0:
                assert time.monotonic() < deadline, "a worker that cannot write still counts as live"
                time.sleep(0.5)
            time.sleep(3)
            assert worker.poll() is None, "the worker died of a database error:\n" + svc.log_text()
        finally:
            admin(f'ALTER DATABASE "{name}" RESET default_transaction_read_only', cut)
        deadline = time.monotonic() + 30
        while svc.live_workers() == 0:
            assert time.monotonic() < deadline, "the worker never came back:\n" + svc.log_text()
            time.sleep(0.5)
        done = svc.wait_job(client, job["id"], timeout=120)
        assert done["status"] == "succeeded", (done, svc.log_text())
        assert worker.poll() is None
        log = svc.logs[1].read_text()
        assert "the database is unavailable" in log and "the database is back" in log, log
        assert "Traceback" not in log, log
    finally:
        svc.stop()


HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def test_locked_database_answers_503_and_health_stays_prompt(tmp_path):
    with database_service(tmp_path, "sqlite", sqlite_busy_timeout_seconds=2) as svc, svc.client() as client:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(svc.data_dir / "charrnn.db"), "6"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert holder.stdout.readline().strip() == "locked"
            result = {}

            def upload():
                result["r"] = client.post(
                    "/corpora", content=small_corpus(5000).encode(), headers={"Content-Type": "text/plain"}
                )

            uploader = threading.Thread(target=upload)
            uploader.start()
            slowest = 0.0
            while uploader.is_alive():
                t0 = time.monotonic()
                assert httpx.get(svc.url + "/healthz", timeout=10).status_code == 200
                slowest = max(slowest, time.monotonic() - t0)
                time.sleep(0.1)
            uploader.join()
            assert slowest < 1.0, f"/healthz took {slowest:.1f}s while an upload waited for the lock"
            r = result["r"]
            # The lock outlasts the 2 s busy timeout: the answer is "come back", not a 500.
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] and "database" in r.json()["detail"]
            assert not list((svc.data_dir / "corpora").glob(".upload-*")), "the refused upload left its temp file"
        finally:
            holder.wait(timeout=30)
        # After the lock is gone, the same upload goes through.
        svc.upload(client, small_corpus(5000))


def test_postgres_gone_answers_503_then_recovers(tmp_path):
    
    with database_service(tmp_path, "postgres") as svc, svc.client() as client:
        import psycopg

        name = svc.env["CHARRNN_DATABASE_URL"].rsplit("/", 1)[1]
        assert client.get("/corpora").status_code == 200
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            try:
                text_body = {"content": b"some text", "headers": {"Content-Type": "text/plain"}}
                for r in (client.get("/corpora"), client.post("/corpora", **text_body)):
                    assert r.status_code == 503, r.text
                    assert r.headers["retry-after"] and "database" in r.json()["detail"]
            finally:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert client.get("/corpora").status_code == 200  # and back by itself


def database_outage(url: str, seconds: float) -> None:
    """What a PostgreSQL restart looks like to its clients, confined to this test's database: every
    connection is cut and new ones are refused for a while."""
    import psycopg

    
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        time.sleep(seconds)
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def test_postgres_going_away_under_three_workers_loses_and_repeats_no_job(tmp_path, postgres_url):
    svc = Service(tmp_path, database_url=postgres_url, job_lease_seconds=10)
    svc.start_api()
    try:
        client = svc.client()
        corpus = svc.upload(client, small_corpus(30_000), name="pg")
        svc.start_workers(3)
        training = {"max_steps": 400, "checkpoint_every": 100, "eval_every": 100, "log_every": 50, "seed": 11}
        jobs = [svc.create_job(client, corpus["id"], training=training, name=f"pg-{i}")["id"] for i in range(3)]
        wait_for(
            lambda: all(client.get(f"/jobs/{j}").json()["status"] == "running" for j in jobs), 60, "3 running jobs"
        )
        wait_event(client, jobs[0], lambda e: e["type"] == "metrics")

        # Probe the API throughout the outage, with a client that records 500s instead of raising.
        codes: list[int] = []
        stop = threading.Event()

        def probe():
            with httpx.Client(base_url=svc.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as c:
                while not stop.is_set():
                    try:
                        codes.append(c.get(f"/jobs/{jobs[0]}").status_code)
                    except httpx.TransportError:
                        codes.append(0)
                    time.sleep(0.1)

        prober = threading.Thread(target=probe)
        prober.start()
        database_outage(postgres_url, seconds=5)
        wait_for(lambda: codes and codes[-1] == 200, 30, "the API to recover by itself")
        stop.set()
        prober.join()
        still_running = [j for j in jobs if client.get(f"/jobs/{j}").json()["status"] == "running"]
        print("API answers during the outage:", {c: codes.count(c) for c in set(codes)}, "running:", still_running)
        assert still_running, "the outage hit running jobs"
        assert 503 in codes and 500 not in codes and 0 not in codes, sorted(set(codes))

        for job_id in jobs:
            job = svc.wait_job(client, job_id, timeout=180)
            assert job["status"] == "succeeded", (job, svc.log_text())
            events = client.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
            statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
            # Never run twice at once: every "running" after the first follows a "queued" (requeued).
            for before, after in zip(statuses, statuses[1:], strict=False):
                assert not (before == "running" and after == "running"), statuses
            assert job["attempts"] == statuses.count("running"), (job, statuses)  # no clean requeues here
            assert job["progress"]["step"] == training["max_steps"]
            print(job_id, "attempts", job["attempts"], statuses)
        assert all(w.poll() is None for w in svc.workers), "every worker rode it out"
    finally:
        svc.stop()
