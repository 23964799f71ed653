"""Worker faults from issue 13, for real: a kill -9 between a checkpoint's files and its row (item 8), a
flood of metrics (item 14), a database that stops taking writes (item 7), and SIGTERM to the whole
process group of `charrnn serve` (item 5)."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from datetime import datetime

import httpx
import pytest

from tests.conftest import Serve, Service, small_corpus
from tests.service.test_recovery import wait_event

pytestmark = pytest.mark.slow


@pytest.fixture
def svc(tmp_path):
    s = Service(tmp_path)
    s.start_api()
    yield s
    s.stop()


def database(svc: Service) -> sqlite3.Connection:
    return sqlite3.connect(svc.data_dir / "charrnn.db", timeout=60, isolation_level=None)


def count_rows(svc: Service, table: str, job_id: str, where: str = "") -> int:
    with database(svc) as db:
        return db.execute(f"SELECT count(*) FROM {table} WHERE job_id = ? {where}", (job_id,)).fetchone()[0]


def test_kill_9_between_a_checkpoints_files_and_its_row_is_rebuilt_on_resume(svc):
    """Item 8: the files of step N are on disk, its row, is_best and metric point are not (the worker was
    killed in between). The next worker resumes from N and lists it as the best, with its loss point."""
    from worker.engine.header import read_metadata
    from worker.engine.records import CheckpointStats

    client = svc.client()
    corpus = svc.upload(client, small_corpus(30_000), name="faults")
    worker = svc.start_worker()
    training = {"max_steps": 400, "eval_every": 20, "checkpoint_every": 20, "log_every": 20, "seed": 3}
    job = svc.create_job(client, corpus["id"], training=training)
    wait_event(client, job["id"], lambda e: e["type"] == "checkpoint" and e["data"]["step"] >= 40)
    worker.send_signal(signal.SIGKILL)
    worker.wait()

    # The state a kill -9 right after the file write leaves: the newest checkpoint has files, no row.
    run_dir = svc.data_dir / "runs" / job["id"]
    step = json.loads((run_dir / "last.json").read_text())["step"]
    stats = CheckpointStats.from_file_metadata(read_metadata(run_dir / "checkpoints" / f"step-{step:08d}.safetensors"))
    assert stats.is_best, stats  # early in a run every evaluation is a new best
    with database(svc) as db:
        db.execute("DELETE FROM checkpoints WHERE job_id = ? AND step = ?", (job["id"], step))
        db.execute("DELETE FROM job_metrics WHERE job_id = ? AND step = ?", (job["id"], step))

    svc.start_worker(wait=False)  # (the dead one still counts as live until its heartbeat ages out)
    wait_event(client, job["id"], lambda e: e["message"] == f"resumed from step {step}")
    checkpoints = client.get(f"/jobs/{job['id']}/checkpoints", params={"limit": 100}).json()["data"]
    adopted = [c for c in checkpoints if c["step"] == step]
    assert adopted and adopted[0]["is_best"], checkpoints
    assert adopted[0]["val_loss"] == stats.val_loss
    points = [m for m in client.get(f"/jobs/{job['id']}/metrics").json() if m["step"] == step]
    assert points and points[0]["val_loss"] == stats.val_loss
    assert points[0]["train_loss"] == stats.train_loss
    client.post(f"/jobs/{job['id']}/cancel")


def test_log_every_1_writes_a_bounded_number_of_rows_a_second(svc):
    """Item 14: before, every step of a log_every=1 job was a metrics row and an event (26k a minute)."""
    from worker.service.supervisor import METRICS_BURST, METRICS_PER_SECOND

    client = svc.client()
    corpus = svc.upload(client, small_corpus(30_000), name="flood")
    svc.start_worker()
    steps = 1500
    training = {"max_steps": steps, "log_every": 1, "eval_every": 500, "checkpoint_every": 500, "seed": 5}
    job = svc.wait_job(client, svc.create_job(client, corpus["id"], training=training)["id"], timeout=180)
    assert job["status"] == "succeeded" and job["progress"]["step"] == steps, job
    seconds = (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds()
    evaluations = steps // training["eval_every"] + 1
    bound = METRICS_BURST + METRICS_PER_SECOND * seconds + evaluations
    rows = count_rows(svc, "job_metrics", job["id"])
    events = count_rows(svc, "job_events", job["id"], "AND type = 'metrics'")
    print(f"{steps} steps at log_every=1 in {seconds:.1f}s: {rows} metric rows, {events} metrics events")
    assert rows <= bound and events <= bound, (rows, events, bound)
    assert rows < steps / 3  # it did coalesce
    assert job["progress"]["train_loss"] is not None  # progress still follows every report


BUSY_TIMEOUT_SECONDS = 4  # short, so the lock below outlasts it quickly (the default is 30 s)


def test_worker_survives_a_database_that_refuses_writes(tmp_path):
    """Item 7: another process holds the SQLite write lock longer than the busy timeout, so the worker's
    writes fail with "database is locked". Before, that traceback killed the worker. Now it keeps
    training, /readyz stops counting it once its last written heartbeat is a lease old, and it comes
    back (and the job succeeds) when the lock is gone."""
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
    training = {"max_steps": None, "max_seconds": 30, "eval_every": 200, "checkpoint_every": 200, "log_every": 50}
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
        while time.monotonic() - lock_started < BUSY_TIMEOUT_SECONDS + 10:
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
    """Item 7 on PostgreSQL: the database turns read-only (as after a failover to a replica) and every
    connection is cut. The worker's writes fail at once; it keeps training and waits, /readyz (a read)
    says it is not live once its last written heartbeat is a lease old, and all recovers after."""
    import psycopg

    from tests.postgres import ADMIN_DSN

    name = postgres_url.rsplit("/", 1)[1]

    def admin(*statements: str) -> None:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    cut = f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    svc = Service(tmp_path, database_url=postgres_url)
    svc.start_api()
    try:
        client = svc.client()
        corpus = svc.upload(client, small_corpus(30_000), name="read-only")
        worker = svc.start_worker()
        training = {"max_steps": None, "max_seconds": 25, "eval_every": 200, "checkpoint_every": 200}
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


def test_sigterm_to_serves_process_group_requeues_the_job_and_the_next_serve_finishes_it(tmp_path):
    """Item 5: `kill -TERM -<pgid>` (systemd, most supervisors) reaches the training child too. The child
    ignores it; the worker checkpoints and requeues; the next `serve` resumes and finishes the job.
    Twice in a row, so the job is interrupted after a resume as well."""
    serve = Serve(tmp_path / "data")

    def sigterm_group() -> None:
        assert serve.signal_group(signal.SIGTERM) in (0, -signal.SIGTERM), serve.output()

    serve.start()
    client = serve.client()
    try:
        r = client.post("/corpora", params={"name": "c"}, content=small_corpus(30_000).encode(),
                        headers={"Content-Type": "text/plain"})
        corpus_id = r.json()["id"]
        training = {"seq_len": 16, "batch_size": 4, "max_steps": 1500, "checkpoint_every": 100, "eval_every": 100,
                    "log_every": 50, "seed": 9}
        model = {"cell": "lstm", "hidden_size": 32, "num_layers": 1, "embedding_dim": 16}
        job_id = client.post("/jobs", json={"corpus_id": corpus_id, "model": model, "training": training}).json()["id"]
        resumed_from = None
        for round_ in range(2):
            if resumed_from is not None:
                resumed = f"resumed from step {resumed_from}"
                wait_event(client, job_id, lambda e, resumed=resumed: e["message"] == resumed)
            after = resumed_from or 0
            seen = wait_event(
                client, job_id, lambda e, after=after: e["type"] == "checkpoint" and e["data"]["step"] > after
            )
            sigterm_group()
            serve.start()
            client = serve.client()
            events = client.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
            statuses = [e["data"].get("status") for e in events if e["type"] == "status"]
            assert "failed" not in statuses, events
            back = [e for e in events if e["message"].startswith("back in the queue: worker shut down")]
            assert len(back) == round_ + 1, events
            resumed_from = int(back[-1]["message"].rsplit(" ", 1)[1])
            assert resumed_from >= seen["data"]["step"]
        wait_event(client, job_id, lambda e: e["message"] == f"resumed from step {resumed_from}")
        job = client.get(f"/jobs/{job_id}").json()
        deadline = time.monotonic() + 180
        while job["status"] not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
            job = client.get(f"/jobs/{job_id}").json()
        assert job["status"] == "succeeded" and job["progress"]["step"] == training["max_steps"], job
        assert job["attempts"] == 1  # the two clean stops did not count as attempts
    finally:
        serve.stop()
