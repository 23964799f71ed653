"""Checkpoint rows: the owner's queries (filtered by owner), and the worker's writes (a checkpoint
recorded when written, adopted from its file on resume, marked corrupt when its file no longer matches).

The worker's writes take the caller's session and do not commit: a checkpoint's row, its is_best and
its metrics commit in one transaction.
"""

from __future__ import annotations

from sqlalchemy import Row, case, select, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.ids import new_id
from app.jobs.events import add_event
from app.models import Checkpoint, Job
from app.pagination import PageParams, paginate
from worker.engine.records import CheckpointRecord


def get(session: Session, *, owner: str, checkpoint_id: str) -> Checkpoint | None:
    return session.scalar(select(Checkpoint).where(Checkpoint.id == checkpoint_id, Checkpoint.owner == owner))


def for_job(session: Session, *, owner: str, job_id: str, params: PageParams):
    query = select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.owner == owner)
    return paginate(session, query, Checkpoint.id, params)


# The best first: the latest checkpoint that was a new best; when those are gone (deleted), the lowest
# validation loss among the rest; without a validation split, the latest.
BEST_FIRST = (
    Checkpoint.is_best.desc(),
    case((Checkpoint.is_best, Checkpoint.step), else_=0).desc(),
    Checkpoint.val_loss.asc().nulls_last(),
    Checkpoint.step.desc(),
)


# Generation looks a checkpoint up on every request, so these two select only the columns it needs:
# loading whole ORM objects (a job's JSON columns included) was most of the lookup's cost.


def path_of(session: Session, *, owner: str, checkpoint_id: str) -> str | None:
    return session.scalar(select(Checkpoint.path).where(Checkpoint.id == checkpoint_id, Checkpoint.owner == owner))


def best_of_job(session: Session, *, owner: str, job_id: str) -> Row | None:
    """(job_status, checkpoint_id, checkpoint_path) in one statement; None when there is no such job, and
    checkpoint_id None while the job has no checkpoint. The best is the latest checkpoint that was a new
    best; with no validation split, the latest one. A checkpoint found corrupt is passed over: the job's
    best falls back to its previous good one."""
    query = (
        select(Job.status.label("job_status"), Checkpoint.id.label("checkpoint_id"),
               Checkpoint.path.label("checkpoint_path"))
        .outerjoin(Checkpoint, (Checkpoint.job_id == Job.id) & Checkpoint.corrupt.is_(False))
        .where(Job.id == job_id, Job.owner == owner)
        .order_by(*BEST_FIRST)
        .limit(1)
    )
    return session.execute(query).one_or_none()


def best_id(session: Session, *, job_id: str) -> str | None:
    """The job's best checkpoint (as best_of_job picks it), any owner's: what retention always keeps."""
    query = (
        select(Checkpoint.id)
        .where(Checkpoint.job_id == job_id, Checkpoint.corrupt.is_(False))
        .order_by(*BEST_FIRST)
        .limit(1)
    )
    return session.scalar(query)


def file_record(session: Session, *, checkpoint_id: str) -> Row | None:
    """(path, sha256, size_bytes) of any owner's checkpoint: for a worker's generation server, whose callers
    (the API, holding the worker secret) have already checked that the checkpoint is their user's."""
    query = select(Checkpoint.path, Checkpoint.sha256, Checkpoint.size_bytes).where(Checkpoint.id == checkpoint_id)
    return session.execute(query).one_or_none()


def _id_of_step(session: Session, job_id: str, step: int) -> str | None:
    return session.scalar(select(Checkpoint.id).where(Checkpoint.job_id == job_id, Checkpoint.step == step))


def record(session: Session, *, job_id: str, owner: str, checkpoint: CheckpointRecord) -> None:
    """A checkpoint written (path relative to the data dir): its row, with is_best, and its event.
    A resumed run re-saving a step the first attempt already recorded updates that row."""
    values = {
        **checkpoint.model_dump(exclude={"step"}),
        "corrupt": False,  # a re-saved step is a fresh, good file
    }
    exists = _id_of_step(session, job_id, checkpoint.step)
    if exists:
        session.execute(update(Checkpoint).where(Checkpoint.id == exists).values(**values))
    else:
        session.add(Checkpoint(id=new_id("ckpt"), job_id=job_id, owner=owner, step=checkpoint.step,
                               created_at=utcnow(), **values))
    add_event(
        session,
        job_id=job_id,
        type="checkpoint",
        message=f"checkpoint at step {checkpoint.step}" + (" (new best)" if checkpoint.is_best else ""),
        data=checkpoint.model_dump(exclude={"path", "sha256"}),
    )


def adopt(session: Session, *, job_id: str, owner: str, checkpoint: CheckpointRecord) -> bool:
    """Record a checkpoint found on disk that has no row (its worker died before writing it); True if
    it was missing."""
    if _id_of_step(session, job_id, checkpoint.step):
        return False
    record(session, job_id=job_id, owner=owner, checkpoint=checkpoint)
    return True


def mark_corrupt(session: Session, *, checkpoint_id: str) -> None:
    """Its file no longer matches what was recorded: a job's best passes over it from now on."""
    session.execute(update(Checkpoint).where(Checkpoint.id == checkpoint_id).values(corrupt=True))
