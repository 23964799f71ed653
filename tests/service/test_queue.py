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
from tests.harness import queue_dummy_jobs


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


def test_metrics_events_stay_bounded_per_job_and_other_events_are_kept(database):
    """A flood of metrics keeps only the latest metrics events; never status events."""
    from sqlalchemy import func, select

    from app.db import session_scope
    from app.jobs import events, run_records
    from app.models import JobEvent, JobMetric
    from worker.engine.records import Snapshot

    job_a, job_b = queue_dummy_jobs(2)
    with session_scope() as s:
        events.add_event(s, job_id=job_a, type="status", message="queued", data={"status": "queued"})
        for step in range(1, 31):
            run_records.record_metrics(s, job_id=job_a, snapshot=Snapshot(step=step, train_loss=1.0 / step))
            if step % 10 == 0:
                run_records.record_evaluation(s, job_id=job_a, snapshot=Snapshot(step=step, val_loss=2.0), sample="x")
        run_records.record_metrics(s, job_id=job_b, snapshot=Snapshot(step=1, train_loss=1.0))
        events.prune_metrics_events(s, job_id=job_a, keep=5)

    def count(job_id, type_):
        with session_scope() as s:
            return s.scalar(select(func.count()).where(JobEvent.job_id == job_id, JobEvent.type == type_))

    assert count(job_a, "metrics") == 5 and count(job_a, "status") == 1 and count(job_a, "sample") == 3
    assert count(job_b, "metrics") == 1  # another job's events are its own
    with session_scope() as s:
        kept = s.scalars(select(JobEvent.data).where(JobEvent.job_id == job_a, JobEvent.type == "metrics")).all()
        assert sorted(d["step"] for d in kept) == [26, 27, 28, 29, 30]  # the latest
        assert s.scalar(select(func.count()).where(JobMetric.job_id == job_a)) == 33  # the curve is not pruned


def test_a_checkpoint_found_on_disk_is_listed_with_its_is_best_and_its_metric_point(database):
    """At the database level: a resume adopts the files its predecessor wrote but never
    recorded, with is_best and the loss point from the checkpoint itself (not is_best=False, no point)."""
    from sqlalchemy import select

    from app.checkpoints import repository as checkpoints
    from app.db import session_scope
    from app.jobs import lifecycle, run_records
    from app.models import Checkpoint, JobMetric
    from worker.engine.records import CheckpointRecord, RunStarted, Snapshot

    (job_id,) = queue_dummy_jobs(1)
    with session_scope() as s:
        lifecycle.claim(s, worker_id="wrk_a", lease_seconds=60)
        old = CheckpointRecord(step=20, path="runs/x/20", size_bytes=1, sha256="0" * 64, val_loss=2.5, is_best=True)
        checkpoints.record(s, job_id=job_id, owner="o", checkpoint=old)
        run_records.record_evaluation(s, job_id=job_id, snapshot=Snapshot(step=20, val_loss=2.5), sample="")
    lost = CheckpointRecord(step=40, path="runs/x/40", size_bytes=1, sha256="0" * 64, train_loss=2.1, val_loss=2.2,
                            is_best=True)
    info = RunStarted(resumed_from_step=40, num_parameters=1, vocab_size=2, device="cpu", precision="fp32",
                      train_chars=1, val_chars=0, batches_per_epoch=1, model={})
    with session_scope() as s:  # the next worker resumes from step 40, whose row was never written
        run_records.started(s, job_id=job_id, owner="o", worker_id="wrk_a", info=info, on_disk=[old, lost])
    with session_scope() as s:
        rows = {c.step: c for c in s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id))}
        assert sorted(rows) == [20, 40] and rows[40].is_best and rows[40].val_loss == 2.2
        points = s.execute(select(JobMetric.step, JobMetric.train_loss, JobMetric.val_loss)
                           .where(JobMetric.job_id == job_id).order_by(JobMetric.step)).all()
        assert [tuple(p) for p in points] == [(20, None, 2.5), (40, 2.1, 2.2)]
        best = s.scalar(select(Checkpoint.step).where(Checkpoint.job_id == job_id)
                        .order_by(Checkpoint.is_best.desc(), Checkpoint.step.desc()).limit(1))
        assert best == 40
