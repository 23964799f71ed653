"""A worker killed whole after a checkpoint's files were written, but before the points up to it reached
the database: the resumed run starts after that checkpoint, and its loss curve must still equal an
unbroken twin's, row for row (the run's metric journal, worker/service/journal.py, fills the gap)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from app import db as app_db
from app import settings as app_settings
from tests.harness import TINY_TRAINING, queue_dummy_jobs, small_corpus

pytestmark = pytest.mark.slow

# Steps of tens of milliseconds: the supervisor relays every half second, and the kill must land before
# the child has run on past the next checkpoint (a tiny model's 20 steps take less than one relay).
MODEL = {"cell": "lstm", "hidden_size": 256, "num_layers": 2, "embedding_dim": 64}
TRAINING = {**TINY_TRAINING, "seq_len": 64, "batch_size": 32, "max_steps": 60, "checkpoint_every": 20,
            "eval_every": 20, "log_every": 5, "device": "cpu"}
WRITTEN_UP_TO = 30  # the database got the reports up to this step; the checkpoint at 40 is on disk only
KILLED_AT_CHECKPOINT = 40


@pytest.fixture
def database(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CHARRNN_DATABASE_URL", raising=False)
    # One training thread, as the harness's services have (TEST_SETTINGS): the default, every core, makes
    # torch's threads spin-wait for each other beside the other test processes on a shared machine.
    monkeypatch.setenv("CHARRNN_TRAIN_THREADS", "1")
    for cached in (app_settings.get_settings, app_db.get_engine, app_db.get_sessionmaker):
        cached.cache_clear()
    from app.cli import upgrade_database

    upgrade_database()
    yield tmp_path
    app_db.get_engine().dispose()
    for cached in (app_settings.get_settings, app_db.get_engine, app_db.get_sessionmaker):
        cached.cache_clear()


class WorkerKilled(Exception):
    """Stands for the kill -9 of the worker: nothing after it is written."""


def run(job_id: str, worker_id: str, supervisor_class) -> None:
    from app.db import session_scope
    from app.jobs import lifecycle
    from app.settings import get_settings
    from worker.service.runner import Worker

    with session_scope() as s:
        job = lifecycle.claim(s, worker_id=worker_id, lease_seconds=60)
        assert job is not None and job.id == job_id
        s.expunge(job)
    settings = get_settings()
    spec = Worker(settings).spec_for(job)
    supervisor_class(job, spec, settings=settings, worker_id=worker_id, stopping=lambda: False,
                     keep_alive=lambda: None).supervise()


def curve(job_id: str) -> list[tuple]:
    from app.db import session_scope
    from app.models import JobMetric

    with session_scope() as s:
        rows = s.execute(select(JobMetric.step, JobMetric.train_loss, JobMetric.val_loss)
                         .where(JobMetric.job_id == job_id).order_by(JobMetric.id))
        return [tuple(r) for r in rows]


def test_a_run_killed_after_a_checkpoint_resumes_with_every_metric_row(database):
    from app.db import session_scope, utcnow
    from app.jobs import lifecycle
    from app.models import Job, JobEvent
    from worker.service.reports import CheckpointSaved, Evaluated, Metrics
    from worker.service.supervisor import JobRun

    class KilledAfterTheCheckpointFiles(JobRun):
        """The real supervisor, whose reports after WRITTEN_UP_TO had not reached the database when the
        whole worker was killed, right after the child wrote the checkpoint files of step 40."""

        def relay(self, session, report):
            if isinstance(report, CheckpointSaved) and report.checkpoint.step == KILLED_AT_CHECKPOINT:
                # The reports before it reached the database: a fast child's 40 steps can arrive in one
                # relay batch, whose transaction the kill would otherwise roll back whole.
                session.commit()
                self.child.kill()
                self.child.join()
                raise WorkerKilled
            if isinstance(report, Metrics | Evaluated) and report.snapshot.step > WRITTEN_UP_TO:
                return
            super().relay(session, report)

    (database / "corpora").mkdir()
    (database / "corpora" / "x.txt").write_text(small_corpus(20_000))  # queue_dummy_jobs' corpus path
    interrupted, twin = queue_dummy_jobs(2)
    with session_scope() as s:
        s.execute(update(Job).values(model=MODEL, training=TRAINING))

    with pytest.raises(WorkerKilled):
        run(interrupted, "wrk_killed", KilledAfterTheCheckpointFiles)
    assert max(step for step, *_ in curve(interrupted)) <= WRITTEN_UP_TO
    with session_scope() as s:  # its lease runs out: the reaper hands it back
        s.execute(update(Job).where(Job.id == interrupted).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        assert lifecycle.reap_expired(s, max_attempts=3) == [(interrupted, "queued")]
    run(interrupted, "wrk_next", JobRun)
    run(twin, "wrk_twin", JobRun)

    with session_scope() as s:
        assert [s.get(Job, j).status for j in (interrupted, twin)] == ["succeeded", "succeeded"]
        events = s.scalars(select(JobEvent).where(JobEvent.job_id == interrupted)).all()
        resumed = [e.data for e in events if e.message.startswith("resumed from")]
    assert resumed == [{"resumed_from_step": KILLED_AT_CHECKPOINT}]
    assert curve(interrupted) == curve(twin)  # no hole at 35 and 40, no duplicate
