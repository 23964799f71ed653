"""The job queue: claim, lease, progress and finish, as the worker does them.

Every write a worker makes to a job is guarded by `worker_id = me AND status = 'running'` in its WHERE
clause, so a worker that lost its lease (it was too slow, or the job was cancelled) changes nothing.
The claim is one statement - UPDATE ... WHERE id = (SELECT ... LIMIT 1 [FOR UPDATE SKIP LOCKED])
RETURNING - so two workers can never both start one job, on SQLite (one writer at a time) or
PostgreSQL (the row lock, skipping rows another claim holds).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, func, literal, select, update
from sqlalchemy.orm import Session

from app.db import UTCDateTime, utcnow
from app.models import Job, JobEvent, JobMetric


def add_event(session: Session, *, job_id: str, type: str, message: str, data: dict | None = None) -> None:
    session.add(JobEvent(job_id=job_id, type=type, message=message, data=data or {}, created_at=utcnow()))


def claim_statement(*, worker_id: str, lease_seconds: float, device: str | None, now):
    candidate = (
        select(Job.id)
        .where(Job.status == "queued")
        .order_by(Job.created_at, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite ignores it (it has one writer anyway)
        .scalar_subquery()
    )
    return (
        update(Job)
        .where(Job.id == candidate, Job.status == "queued")
        .values(
            status="running",
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
    add_event(
        session,
        job_id=job_id,
        type="status",
        message=f"running on worker {worker_id} (attempt {job.attempts})",
        data={"status": "running", "worker_id": worker_id, "attempt": job.attempts},
    )
    return job


def _mine(job_id: str, worker_id: str):
    return (Job.id == job_id, Job.worker_id == worker_id, Job.status == "running")


def renew(session: Session, *, job_id: str, worker_id: str, lease_seconds: float, progress: dict | None = None) -> bool:
    """Extend the lease (and store progress); False means the job is no longer ours: stop touching it."""
    values = {"lease_expires_at": utcnow() + timedelta(seconds=lease_seconds)}
    if progress is not None:
        values["progress"] = progress
    result = session.execute(update(Job).where(*_mine(job_id, worker_id)).values(**values))
    return result.rowcount == 1


def forget_metrics_after(session: Session, *, job_id: str, step: int) -> None:
    """A resumed run redoes the steps after its checkpoint; drop their first-time metrics."""
    session.execute(delete(JobMetric).where(JobMetric.job_id == job_id, JobMetric.step > step))


def add_metric(session: Session, *, job_id: str, snapshot: dict) -> None:
    session.add(
        JobMetric(
            job_id=job_id,
            step=snapshot["step"],
            train_loss=snapshot.get("train_loss"),
            val_loss=snapshot.get("val_loss"),
            learning_rate=snapshot.get("learning_rate"),
            chars_per_second=snapshot.get("chars_per_second"),
            time=utcnow(),
        )
    )


def finish(
    session: Session,
    *,
    job_id: str,
    worker_id: str,
    status: str,
    message: str,
    error: str | None = None,
    progress: dict | None = None,
) -> bool:
    values = {"status": status, "finished_at": utcnow(), "error_message": error, "lease_expires_at": None}
    if progress is not None:
        values["progress"] = progress
    result = session.execute(update(Job).where(*_mine(job_id, worker_id)).values(**values))
    if result.rowcount == 1:
        add_event(
            session,
            job_id=job_id,
            type="status",
            message=message,
            data={"status": status, **({"error": error} if error else {})},
        )
        return True
    return False


def requeue(session: Session, *, job_id: str, worker_id: str, reason: str) -> bool:
    """Hand a job back after a clean stop (worker shutdown); the attempt does not count against it."""
    result = session.execute(
        update(Job)
        .where(*_mine(job_id, worker_id))
        .values(status="queued", worker_id=None, lease_expires_at=None, attempts=Job.attempts - 1)
    )
    if result.rowcount == 1:
        add_event(
            session,
            job_id=job_id,
            type="status",
            message=f"back in the queue: {reason}",
            data={"status": "queued"},
        )
        return True
    return False


def reap_expired(session: Session, *, max_attempts: int) -> list[tuple[str, str]]:
    """Jobs whose worker went silent: back to the queue, or failed after max_attempts tries."""
    now = utcnow()
    expired = list(
        session.execute(
            select(Job.id, Job.worker_id, Job.attempts).where(Job.status == "running", Job.lease_expires_at < now)
        )
    )
    done = []
    for job_id, worker_id, attempts in expired:
        still = (
            Job.id == job_id,
            Job.status == "running",
            Job.worker_id == worker_id,
            Job.lease_expires_at < now,
        )
        if attempts >= max_attempts:
            error = (
                f"the worker running this job stopped responding {attempts} time(s) (limit "
                f"CHARRNN_MAX_ATTEMPTS={max_attempts}); check the workers' logs, "
                "e.g. for running out of memory"
            )
            result = session.execute(
                update(Job)
                .where(*still)
                .values(
                    status="failed",
                    error_message=error,
                    finished_at=now,
                    worker_id=None,
                    lease_expires_at=None,
                )
            )
            if result.rowcount:
                add_event(
                    session,
                    job_id=job_id,
                    type="status",
                    message=f"failed: {error}",
                    data={"status": "failed", "error": error},
                )
                done.append((job_id, "failed"))
        else:
            result = session.execute(
                update(Job).where(*still).values(status="queued", worker_id=None, lease_expires_at=None)
            )
            if result.rowcount:
                add_event(
                    session,
                    job_id=job_id,
                    type="status",
                    message=f"worker {worker_id} stopped responding; back in the queue (attempt {attempts} "
                    f"of {max_attempts} used), it resumes from its last checkpoint",
                    data={"status": "queued", "lost_worker_id": worker_id},
                )
                done.append((job_id, "queued"))
    return done


def status_of(session: Session, *, job_id: str) -> str | None:
    return session.scalar(select(Job.status).where(Job.id == job_id))


def add_checkpoint(session: Session, *, job_id: str, owner: str, checkpoint_id: str, info: dict, path: str) -> None:
    from app.models import Checkpoint

    exists = session.scalar(select(Checkpoint.id).where(Checkpoint.job_id == job_id, Checkpoint.step == info["step"]))
    if exists:  # a resumed run re-saving a step the first attempt already recorded
        session.execute(
            update(Checkpoint)
            .where(Checkpoint.id == exists)
            .values(
                path=path,
                train_loss=info.get("train_loss"),
                val_loss=info.get("val_loss"),
                is_best=bool(info.get("is_best")),
                size_bytes=info["size_bytes"],
            )
        )
        return
    session.add(
        Checkpoint(
            id=checkpoint_id,
            job_id=job_id,
            owner=owner,
            step=info["step"],
            path=path,
            train_loss=info.get("train_loss"),
            val_loss=info.get("val_loss"),
            is_best=bool(info.get("is_best")),
            size_bytes=info["size_bytes"],
            created_at=utcnow(),
        )
    )
