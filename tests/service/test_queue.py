"""The queue at the database level: one claim per job under a race, leases, takeover, give-up."""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from app import db as app_db
from app import settings as app_settings
from tests.conftest import queue_dummy_jobs


def _reset_caches():
    app_settings.get_settings.cache_clear()
    app_db.get_engine.cache_clear()
    app_db.get_sessionmaker.cache_clear()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(tmp_path))
    if request.param == "postgres":
        monkeypatch.setenv("CHARRNN_DATABASE_URL", request.getfixturevalue("postgres_url"))
    else:
        monkeypatch.delenv("CHARRNN_DATABASE_URL", raising=False)
    _reset_caches()
    from app.cli import upgrade_database

    upgrade_database()
    yield tmp_path
    app_db.get_engine().dispose()
    _reset_caches()


def _claim_all(data_dir: str, worker_id: str, out: str, barrier) -> None:
    os.environ["CHARRNN_DATA_DIR"] = data_dir
    from app.db import session_scope
    from app.jobs import lifecycle

    with session_scope() as session:  # connect before the start line
        session.execute(text("SELECT 1"))
    barrier.wait(timeout=60)  # everyone starts at once
    claimed = []
    while True:
        with session_scope() as session:
            job = lifecycle.claim(session, worker_id=worker_id, lease_seconds=60)
        if job is None:
            break
        claimed.append(job.id)
        time.sleep(random.random() / 500)  # a worker does something between claims
    Path(out).write_text("\n".join(claimed))


def test_two_workers_never_run_one_job(database):
    ids = queue_dummy_jobs(60)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [
        ctx.Process(target=_claim_all, args=(str(database), f"wrk_{i}", str(database / f"claimed-{i}"), barrier))
        for i in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    claims = [line for i in range(4) for line in (database / f"claimed-{i}").read_text().split("\n") if line]
    assert sorted(claims) == sorted(ids), "every job claimed exactly once"
    assert sum(1 for i in range(4) if (database / f"claimed-{i}").read_text()) >= 2, "the race really happened"

    from sqlalchemy import func, select

    from app.db import session_scope
    from app.models import Job, JobEvent

    with session_scope() as session:
        assert session.scalar(select(func.count()).where(Job.status == "running", Job.attempts == 1)) == 60
        assert session.scalar(select(func.count()).select_from(JobEvent)) == 60  # one "running" event each


def test_claim_is_one_statement_that_skips_locked_rows_on_postgres():
    from sqlalchemy.dialects import postgresql, sqlite

    from app.db import utcnow
    from app.jobs.lifecycle import claim_statement

    statement = claim_statement(worker_id="w", lease_seconds=30, device=None, now=utcnow())
    pg = str(statement.compile(dialect=postgresql.dialect()))
    assert pg.startswith("UPDATE jobs") and "FOR UPDATE SKIP LOCKED" in pg and "RETURNING jobs.id" in pg
    lite = str(statement.compile(dialect=sqlite.dialect()))
    assert "SKIP LOCKED" not in lite and "RETURNING" in lite


def test_a_worker_that_lost_its_lease_changes_nothing(database):
    from app.db import session_scope
    from app.jobs import lifecycle
    from app.models import Job, JobStatus

    (job_id,) = queue_dummy_jobs(1)
    with session_scope() as s:
        assert lifecycle.claim(s, worker_id="wrk_a", lease_seconds=0.2).id == job_id
    time.sleep(0.3)
    with session_scope() as s:
        assert lifecycle.reap_expired(s, max_attempts=3) == [(job_id, "queued")]
    with session_scope() as s:
        assert lifecycle.claim(s, worker_id="wrk_b", lease_seconds=60).attempts == 2
    with session_scope() as s:  # worker A wakes up: every write it tries is refused
        assert not lifecycle.renew(s, job_id=job_id, worker_id="wrk_a", lease_seconds=60, progress={"step": 999})
        assert not lifecycle.finish(s, job_id=job_id, worker_id="wrk_a", status=JobStatus.SUCCEEDED, message="done")
        assert not lifecycle.requeue(s, job_id=job_id, worker_id="wrk_a", reason="x")
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert (job.status, job.worker_id, job.progress) == ("running", "wrk_b", {})
        assert lifecycle.renew(s, job_id=job_id, worker_id="wrk_b", lease_seconds=60, progress={"step": 5})


def test_too_many_lost_workers_fail_the_job_with_a_reason(database):
    from app.db import session_scope
    from app.jobs import lifecycle
    from app.models import Job

    (job_id,) = queue_dummy_jobs(1)
    for attempt in range(1, 3):
        with session_scope() as s:
            lifecycle.claim(s, worker_id=f"wrk_{attempt}", lease_seconds=0.05)
        time.sleep(0.1)
        with session_scope() as s:
            outcome = lifecycle.reap_expired(s, max_attempts=2)
        assert outcome == [(job_id, "queued" if attempt < 2 else "failed")]
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job.status == "failed" and "stopped responding 2 time(s)" in job.error_message
        assert job.finished_at is not None


def test_shutdown_requeue_does_not_count_as_an_attempt(database):
    from app.db import session_scope
    from app.jobs import lifecycle
    from app.models import Job

    (job_id,) = queue_dummy_jobs(1)
    with session_scope() as s:
        lifecycle.claim(s, worker_id="wrk_a", lease_seconds=60)
    with session_scope() as s:
        assert lifecycle.requeue(s, job_id=job_id, worker_id="wrk_a", reason="shutdown")
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert (job.status, job.attempts, job.worker_id) == ("queued", 0, None)
