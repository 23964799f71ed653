"""The job lifecycle: every state transition of a job, its guard, values and the event it leaves.

    queued --claim--> running --succeeded / failed--> final
      ^                  |
      +---requeue--------+    a clean worker stop (the attempt does not count)
      +---reap-----------+    the worker went silent (failed instead, after max_attempts)
    queued or running --cancel (the owner)--> cancelled

Each transition is one guarded UPDATE and, only if it changed the row, one status event (`_transition`).
Every write a worker makes is guarded by `worker_id = me AND status = 'running'` (`mine`), so a worker
that lost its lease (it was too slow, or the job was cancelled) changes nothing; the reaper's guard is
`lease expired` instead. The claim is one statement - UPDATE ... WHERE id = (SELECT ... LIMIT 1
[FOR UPDATE SKIP LOCKED]) RETURNING - so two workers can never both start one job, on SQLite (one
writer at a time) or PostgreSQL (the row lock, skipping rows another claim holds).

What a running job reports (metrics, evaluations, checkpoints) is written by app.jobs.run_records and
app.checkpoints.repository. The functions take the caller's session and do not commit.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, literal, select, update
from sqlalchemy.orm import Session

from app.db import UTCDateTime, utcnow
from app.jobs.events import add_status_event
from app.models import ACTIVE_STATUSES, Job, JobStatus
from worker.engine.records import RunResult


def mine(job_id: str, worker_id: str) -> tuple:
    """The guard of every worker write: this worker's job, still running."""
    return (Job.id == job_id, Job.worker_id == worker_id, Job.status == JobStatus.RUNNING)


def _lost(job_id: str, worker_id: str, now: datetime) -> tuple:
    """The reaper's guard: still that worker's running job, whose lease ran out before `now`."""
    return (*mine(job_id, worker_id), Job.lease_expires_at < now)


def _transition(
    session: Session, *, job_id: str, guard: tuple, status: JobStatus, values: dict, message: str, **data
) -> bool:
    """Move the job to `status` with `values` where `guard` holds; its status event only if it did."""
    result = session.execute(update(Job).where(*guard).values(status=status, **values))
    if result.rowcount != 1:
        return False
    add_status_event(session, job_id=job_id, status=status, message=message, **data)
    return True


# -- the owner's transitions ---------------------------------------------------------------------------


def queued(session: Session, job: Job) -> None:
    """A new job enters the queue."""
    job.status = JobStatus.QUEUED
    session.add(job)
    session.flush()
    add_status_event(session, job_id=job.id, status=JobStatus.QUEUED, message="queued")


def cancel(session: Session, *, owner: str, job_id: str) -> bool:
    """Cancel an active job; False when it has already finished (or is not this owner's)."""
    return _transition(
        session,
        job_id=job_id,
        guard=(Job.id == job_id, Job.owner == owner, Job.status.in_(ACTIVE_STATUSES)),
        status=JobStatus.CANCELLED,
        values={"finished_at": utcnow(), "lease_expires_at": None},
        message="cancelled",
    )


# -- the worker's transitions ----------------------------------------------------------------------------


def claim_statement(*, worker_id: str, lease_seconds: float, device: str | None, now):
    candidate = (
        select(Job.id)
        .where(Job.status == JobStatus.QUEUED)
        .order_by(Job.created_at, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite ignores it (it has one writer anyway)
        .scalar_subquery()
    )
    return (
        update(Job)
        .where(Job.id == candidate, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.RUNNING,
            worker_id=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=Job.attempts + 1,
            device=device,
            started_at=func.coalesce(Job.started_at, literal(now, UTCDateTime)),  # the first start, not the latest
            error_message=None,
        )
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )


def claim(session: Session, *, worker_id: str, lease_seconds: float, device: str | None = None) -> Job | None:
    statement = claim_statement(worker_id=worker_id, lease_seconds=lease_seconds, device=device, now=utcnow())
    job_id = session.execute(statement).scalar_one_or_none()
    if job_id is None:
        return None
    job = session.get(Job, job_id, populate_existing=True)
    add_status_event(
        session,
        job_id=job_id,
        status=JobStatus.RUNNING,
        message=f"running on worker {worker_id} (attempt {job.attempts})",
        worker_id=worker_id,
        attempt=job.attempts,
    )
    return job


def renew(session: Session, *, job_id: str, worker_id: str, lease_seconds: float, progress: dict | None = None) -> bool:
    """Extend the lease (and store progress); False means the job is no longer ours: stop touching it."""
    values = {"lease_expires_at": utcnow() + timedelta(seconds=lease_seconds)}
    if progress is not None:
        values["progress"] = progress
    result = session.execute(update(Job).where(*mine(job_id, worker_id)).values(**values))
    return result.rowcount == 1


def finish(
    session: Session,
    *,
    job_id: str,
    worker_id: str,
    status: JobStatus,
    message: str,
    error: str | None = None,
    progress: dict | None = None,
    reaped_at: datetime | None = None,
) -> bool:
    """End the job (succeeded or failed). With `reaped_at`, the reaper ends it: only if the worker's
    lease ran out before then."""
    values = {"finished_at": utcnow(), "error_message": error, "lease_expires_at": None}
    if progress is not None:
        values["progress"] = progress
    guard = _lost(job_id, worker_id, reaped_at) if reaped_at else mine(job_id, worker_id)
    return _transition(
        session, job_id=job_id, guard=guard, status=status, values=values, message=message,
        **({"error": error} if error else {}),
    )


def succeeded(session: Session, *, job_id: str, worker_id: str, result: RunResult, progress: dict) -> bool:
    """The trainer reached its stopping rule; `progress` is the job's last, completed with the result."""
    progress = {
        **progress,
        "step": result.steps,
        "max_steps": result.steps,
        "epoch": result.epoch,
        "train_loss": result.train_loss,
        "val_loss": result.val_loss,
        "best_val_loss": result.best_val_loss,
        "chars_per_second": result.chars_per_second,
        "eta_seconds": 0.0,
    }
    return finish(
        session,
        job_id=job_id,
        worker_id=worker_id,
        status=JobStatus.SUCCEEDED,
        progress=progress,
        message=f"succeeded after {result.steps} steps ({result.stopped_by}), val_loss {result.val_loss}",
    )


def failed(
    session: Session, *, job_id: str, worker_id: str, error: str, reaped_at: datetime | None = None
) -> bool:
    return finish(
        session, job_id=job_id, worker_id=worker_id, status=JobStatus.FAILED, error=error,
        message=f"failed: {error}", reaped_at=reaped_at,
    )


def requeue(
    session: Session, *, job_id: str, worker_id: str, reason: str, reaped_at: datetime | None = None
) -> bool:
    """Hand a job back to the queue: after a clean stop (worker shutdown) the attempt does not count
    against it; reaped (with `reaped_at`: the worker went silent), it does."""
    values = {"worker_id": None, "lease_expires_at": None}
    if reaped_at is None:
        values["attempts"] = Job.attempts - 1
    guard = _lost(job_id, worker_id, reaped_at) if reaped_at else mine(job_id, worker_id)
    return _transition(
        session, job_id=job_id, guard=guard, status=JobStatus.QUEUED, values=values,
        message=f"back in the queue: {reason}",
        **({"lost_worker_id": worker_id} if reaped_at else {}),
    )


def retry_or_fail(
    session: Session, *, job_id: str, worker_id: str, attempts: int, max_attempts: int, why: str
) -> JobStatus | None:
    """A training process that died without an outcome (a kill, often transient: an operator, another
    process's memory spike): back to the queue, where it resumes from its last checkpoint and the attempt
    counts; failed with `why` and the attempts it took once max_attempts are spent. None: not ours."""
    if attempts >= max_attempts:
        error = f"{why}; gave up after {attempts} attempts (CHARRNN_MAX_ATTEMPTS={max_attempts})"
        return JobStatus.FAILED if failed(session, job_id=job_id, worker_id=worker_id, error=error) else None
    requeued = _transition(
        session, job_id=job_id, guard=mine(job_id, worker_id), status=JobStatus.QUEUED,
        values={"worker_id": None, "lease_expires_at": None},
        message=f"back in the queue: {why} (attempt {attempts} of {max_attempts} used); "
        "it resumes from its last checkpoint",
        attempt=attempts,
    )
    return JobStatus.QUEUED if requeued else None


def reap_expired(session: Session, *, max_attempts: int) -> list[tuple[str, JobStatus]]:
    """Jobs whose worker went silent: back to the queue, or failed after max_attempts tries."""
    now = utcnow()
    expired = session.execute(
        select(Job.id, Job.worker_id, Job.attempts).where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
    )
    done = []
    for job_id, worker_id, attempts in list(expired):
        if attempts >= max_attempts:
            error = (
                f"the worker running this job stopped responding {attempts} time(s) (limit "
                f"CHARRNN_MAX_ATTEMPTS={max_attempts}); check the workers' logs, "
                "e.g. for running out of memory"
            )
            if failed(session, job_id=job_id, worker_id=worker_id, error=error, reaped_at=now):
                done.append((job_id, JobStatus.FAILED))
        else:
            reason = (
                f"worker {worker_id} stopped responding (attempt {attempts} of {max_attempts} used); "
                "it resumes from its last checkpoint"
            )
            if requeue(session, job_id=job_id, worker_id=worker_id, reason=reason, reaped_at=now):
                done.append((job_id, JobStatus.QUEUED))
    return done


def status_of(session: Session, *, job_id: str) -> JobStatus | None:
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    return JobStatus(status) if status else None
