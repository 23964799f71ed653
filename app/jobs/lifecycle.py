"""The job lifecycle: every state transition of a job, its guard and the event it leaves, in one place.

    queued --claim--> running --succeeded / failed--> final
      ^                  |
      +---requeue--------+    a clean worker stop (the attempt does not count)
      +---reap-----------+    the worker went silent (failed instead, after max_attempts)
    queued or running --cancel (the owner)--> cancelled

While running, the worker writes progress, metrics, evaluations and checkpoints. Every write a worker
makes is guarded by `worker_id = me AND status = 'running'` in its WHERE clause (`_mine`), so a worker
that lost its lease (it was too slow, or the job was cancelled) changes nothing. The claim is one
statement - UPDATE ... WHERE id = (SELECT ... LIMIT 1 [FOR UPDATE SKIP LOCKED]) RETURNING - so two
workers can never both start one job, on SQLite (one writer at a time) or PostgreSQL (the row lock,
skipping rows another claim holds).

The functions take the caller's session and do not commit: what the caller groups in one transaction
commits together (a checkpoint's row, its is_best and its metrics, for instance).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, literal, select, update
from sqlalchemy.orm import Session

from app.db import UTCDateTime, utcnow
from app.ids import new_id
from app.jobs.schemas import PROGRESS_KEYS
from app.models import ACTIVE_STATUSES, Checkpoint, Job, JobEvent, JobMetric, JobStatus

# The events table stays bounded per job: older "metrics" events beyond this many are pruned (the
# job_metrics table keeps the curve; status, checkpoint, sample and log events are never pruned).
MAX_METRICS_EVENTS_PER_JOB = 500


def add_event(session: Session, *, job_id: str, type: str, message: str, data: dict | None = None) -> None:
    session.add(JobEvent(job_id=job_id, type=type, message=message, data=data or {}, created_at=utcnow()))


def _status_event(session: Session, job_id: str, status: JobStatus, message: str, **data) -> None:
    add_event(session, job_id=job_id, type="status", message=message, data={"status": status.value, **data})


def _mine(job_id: str, worker_id: str) -> tuple:
    """The guard of every worker write: this worker's job, still running."""
    return (Job.id == job_id, Job.worker_id == worker_id, Job.status == JobStatus.RUNNING)


def progress_from(snapshot: dict) -> dict:
    """The job's `progress` (the Progress schema's fields) from a trainer snapshot."""
    return {k: snapshot.get(k) for k in PROGRESS_KEYS}


# -- the owner's transitions ---------------------------------------------------------------------------


def queued(session: Session, job: Job) -> None:
    """A new job enters the queue."""
    job.status = JobStatus.QUEUED
    session.add(job)
    session.flush()
    _status_event(session, job.id, JobStatus.QUEUED, "queued")


def cancel(session: Session, *, owner: str, job_id: str) -> bool:
    """Cancel an active job; False when it has already finished (or is not this owner's)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.owner == owner, Job.status.in_(ACTIVE_STATUSES))
        .values(status=JobStatus.CANCELLED, finished_at=utcnow(), lease_expires_at=None)
    )
    if result.rowcount == 0:
        return False
    _status_event(session, job_id, JobStatus.CANCELLED, "cancelled")
    return True


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
    _status_event(
        session,
        job_id,
        JobStatus.RUNNING,
        f"running on worker {worker_id} (attempt {job.attempts})",
        worker_id=worker_id,
        attempt=job.attempts,
    )
    return job


def renew(session: Session, *, job_id: str, worker_id: str, lease_seconds: float, progress: dict | None = None) -> bool:
    """Extend the lease (and store progress); False means the job is no longer ours: stop touching it."""
    values = {"lease_expires_at": utcnow() + timedelta(seconds=lease_seconds)}
    if progress is not None:
        values["progress"] = progress
    result = session.execute(update(Job).where(*_mine(job_id, worker_id)).values(**values))
    return result.rowcount == 1


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint as the worker reports it (or finds it on disk on resume); path relative to the data dir."""

    step: int
    path: str
    size_bytes: int
    train_loss: float | None = None
    val_loss: float | None = None
    is_best: bool = False
    sha256: str | None = None  # of the file's bytes when written; checked whenever it is read


def started(
    session: Session,
    *,
    job_id: str,
    owner: str,
    worker_id: str,
    info: dict,
    on_disk: list[CheckpointInfo] = (),
) -> None:
    """Training started (or resumed): record the device, and on resume put the record in line with the files.

    A resumed run redoes the steps after its checkpoint, so their first-time metrics go. A worker
    killed right after writing a checkpoint's files never wrote its row and metrics: `on_disk` (the
    run directory's checkpoints up to the resumed step) rebuilds what is missing from the files.
    """
    # The model as it runs: the fields the job left out are now chosen (autoconfig.py).
    model = {k: v for k, v in (info.get("model") or {}).items() if k != "vocab_size"}
    values = {"device": info.get("device"), **({"model": model} if model else {})}
    chosen_training = info.get("chosen_training") or {}
    if chosen_training:  # an epoch limit chosen with the size: the job's training says when it stops
        training = session.scalar(select(Job.training).where(Job.id == job_id)) or {}
        values["training"] = {**training, **chosen_training}
    session.execute(update(Job).where(*_mine(job_id, worker_id)).values(**values))
    resumed = info.get("resumed_from_step")
    if resumed is not None:
        session.execute(delete(JobMetric).where(JobMetric.job_id == job_id, JobMetric.step > resumed))
        for checkpoint in on_disk:
            if checkpoint.step <= resumed:
                adopt_checkpoint(session, job_id=job_id, owner=owner, checkpoint=checkpoint)
        add_event(
            session,
            job_id=job_id,
            type="log",
            message=f"resumed from step {resumed}",
            data={"resumed_from_step": resumed},
        )
    add_event(
        session,
        job_id=job_id,
        type="log",
        message=(
            f"training {info['num_parameters']:,} parameters on {info['device']} "
            f"({info['precision']}), {info['train_chars']:,} training characters"
            + "".join(f"; chose {reason}" for reason in info.get("chosen", []))
        ),
        data=info,
    )


def _add_metric_row(session: Session, job_id: str, snapshot: dict) -> None:
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


def record_metrics(session: Session, *, job_id: str, snapshot: dict) -> None:
    """A training-loss point: a metrics row and a "metrics" event (older ones pruned past the bound)."""
    _add_metric_row(session, job_id, snapshot)
    add_event(
        session,
        job_id=job_id,
        type="metrics",
        message=f"step {snapshot['step']}: train_loss {snapshot['train_loss']:.4f}",
        data=snapshot,
    )
    prune_metrics_events(session, job_id=job_id)


def prune_metrics_events(session: Session, *, job_id: str, keep: int = MAX_METRICS_EVENTS_PER_JOB) -> None:
    session.flush()  # the event just added counts
    oldest_kept = session.scalar(
        select(JobEvent.id)
        .where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
        .order_by(JobEvent.id.desc())
        .offset(keep - 1)
        .limit(1)
    )
    if oldest_kept is not None:
        session.execute(
            delete(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "metrics", JobEvent.id < oldest_kept)
        )


def record_evaluation(session: Session, *, job_id: str, snapshot: dict, sample: str) -> None:
    """An evaluation: a metrics row with the validation loss, and a "sample" event with the sample text."""
    _add_metric_row(session, job_id, snapshot)
    val = snapshot.get("val_loss")
    add_event(
        session,
        job_id=job_id,
        type="sample",
        message=f"step {snapshot['step']}: val_loss {val if val is None else round(val, 4)}",
        data={**snapshot, "sample": sample},
    )


def _checkpoint_id(session: Session, job_id: str, step: int) -> str | None:
    return session.scalar(select(Checkpoint.id).where(Checkpoint.job_id == job_id, Checkpoint.step == step))


def _upsert_checkpoint(session: Session, *, job_id: str, owner: str, checkpoint: CheckpointInfo) -> None:
    values = {
        "path": checkpoint.path,
        "train_loss": checkpoint.train_loss,
        "val_loss": checkpoint.val_loss,
        "is_best": checkpoint.is_best,
        "size_bytes": checkpoint.size_bytes,
        "sha256": checkpoint.sha256,
        "corrupt": False,  # a resumed run re-saving a step writes a fresh, good file
    }
    exists = _checkpoint_id(session, job_id, checkpoint.step)
    if exists:  # a resumed run re-saving a step the first attempt already recorded
        session.execute(update(Checkpoint).where(Checkpoint.id == exists).values(**values))
        return
    session.add(
        Checkpoint(id=new_id("ckpt"), job_id=job_id, owner=owner, step=checkpoint.step, created_at=utcnow(), **values)
    )


def record_checkpoint(session: Session, *, job_id: str, owner: str, checkpoint: CheckpointInfo) -> None:
    """A new checkpoint: its row (with is_best) and its event, in the caller's transaction."""
    _upsert_checkpoint(session, job_id=job_id, owner=owner, checkpoint=checkpoint)
    add_event(
        session,
        job_id=job_id,
        type="checkpoint",
        message=f"checkpoint at step {checkpoint.step}" + (" (new best)" if checkpoint.is_best else ""),
        data={
            "step": checkpoint.step,
            "train_loss": checkpoint.train_loss,
            "val_loss": checkpoint.val_loss,
            "is_best": checkpoint.is_best,
            "size_bytes": checkpoint.size_bytes,
        },
    )


def adopt_checkpoint(session: Session, *, job_id: str, owner: str, checkpoint: CheckpointInfo) -> bool:
    """List a checkpoint found on disk that has no row (its worker died before writing it), with the
    metric point it was saved at; True if it was missing."""
    exists = _checkpoint_id(session, job_id, checkpoint.step)
    if exists:
        return False
    record_checkpoint(session, job_id=job_id, owner=owner, checkpoint=checkpoint)
    has_metric = session.scalar(
        select(JobMetric.id).where(JobMetric.job_id == job_id, JobMetric.step == checkpoint.step).limit(1)
    )
    if not has_metric and (checkpoint.train_loss is not None or checkpoint.val_loss is not None):
        point = {"step": checkpoint.step, "train_loss": checkpoint.train_loss, "val_loss": checkpoint.val_loss}
        _add_metric_row(session, job_id, point)
    return True


def finish(
    session: Session,
    *,
    job_id: str,
    worker_id: str,
    status: JobStatus,
    message: str,
    error: str | None = None,
    progress: dict | None = None,
) -> bool:
    values = {"status": status, "finished_at": utcnow(), "error_message": error, "lease_expires_at": None}
    if progress is not None:
        values["progress"] = progress
    result = session.execute(update(Job).where(*_mine(job_id, worker_id)).values(**values))
    if result.rowcount != 1:
        return False
    _status_event(session, job_id, status, message, **({"error": error} if error else {}))
    return True


def succeeded(session: Session, *, job_id: str, worker_id: str, result: dict, progress: dict) -> bool:
    """The trainer reached its stopping rule; `result` is the engine's TrainResult as a dict."""
    progress = {
        **progress,
        **progress_from(result | {"step": result["steps"], "max_steps": result["steps"]}),
        "eta_seconds": 0.0,
    }
    return finish(
        session,
        job_id=job_id,
        worker_id=worker_id,
        status=JobStatus.SUCCEEDED,
        progress=progress,
        message=f"succeeded after {result['steps']} steps ({result['stopped_by']}), val_loss {result['val_loss']}",
    )


def failed(session: Session, *, job_id: str, worker_id: str, error: str) -> bool:
    return finish(
        session, job_id=job_id, worker_id=worker_id, status=JobStatus.FAILED, error=error, message=f"failed: {error}"
    )


def requeue(session: Session, *, job_id: str, worker_id: str, reason: str) -> bool:
    """Hand a job back after a clean stop (worker shutdown); the attempt does not count against it."""
    result = session.execute(
        update(Job)
        .where(*_mine(job_id, worker_id))
        .values(status=JobStatus.QUEUED, worker_id=None, lease_expires_at=None, attempts=Job.attempts - 1)
    )
    if result.rowcount != 1:
        return False
    _status_event(session, job_id, JobStatus.QUEUED, f"back in the queue: {reason}")
    return True


def reap_expired(session: Session, *, max_attempts: int) -> list[tuple[str, JobStatus]]:
    """Jobs whose worker went silent: back to the queue, or failed after max_attempts tries."""
    now = utcnow()
    expired = list(
        session.execute(
            select(Job.id, Job.worker_id, Job.attempts).where(
                Job.status == JobStatus.RUNNING, Job.lease_expires_at < now
            )
        )
    )
    done = []
    for job_id, worker_id, attempts in expired:
        still = (
            Job.id == job_id,
            Job.status == JobStatus.RUNNING,
            Job.worker_id == worker_id,
            Job.lease_expires_at < now,
        )
        if attempts >= max_attempts:
            error = (
                f"the worker running this job stopped responding {attempts} time(s) (limit "
                f"CHARRNN_MAX_ATTEMPTS={max_attempts}); check the workers' logs, "
                "e.g. for running out of memory"
            )
            values = {"status": JobStatus.FAILED, "error_message": error, "finished_at": now, "worker_id": None}
            if session.execute(update(Job).where(*still).values(**values, lease_expires_at=None)).rowcount:
                _status_event(session, job_id, JobStatus.FAILED, f"failed: {error}", error=error)
                done.append((job_id, JobStatus.FAILED))
        else:
            values = {"status": JobStatus.QUEUED, "worker_id": None, "lease_expires_at": None}
            if session.execute(update(Job).where(*still).values(**values)).rowcount:
                _status_event(
                    session,
                    job_id,
                    JobStatus.QUEUED,
                    f"worker {worker_id} stopped responding; back in the queue (attempt {attempts} "
                    f"of {max_attempts} used), it resumes from its last checkpoint",
                    lost_worker_id=worker_id,
                )
                done.append((job_id, JobStatus.QUEUED))
    return done


def status_of(session: Session, *, job_id: str) -> JobStatus | None:
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    return JobStatus(status) if status else None
