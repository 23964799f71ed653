"""Deleting checkpoints: one by the owner (DELETE /checkpoints/{id}), or a job's older ones by retention.

Retention keeps, for each job, its best checkpoint and its last CHARRNN_KEEP_CHECKPOINTS; the worker
applies it after each checkpoint it writes (so a job's disk use stays bounded while it runs) and resume
uses the last checkpoint, which retention always keeps. Rows go in the caller's transaction; the files
are removed only after it commits (remove_files), so no row is ever left without its file.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.checkpoints import repository
from app.db import after_commit
from app.errors import ApiError, not_found
from app.models import ACTIVE_STATUSES, Checkpoint, Job
from app.settings import Settings
from app.storage import Store, StoreError, get_store

log = logging.getLogger("charrnn.api")


def to_prune(session: Session, *, job_id: str, keep: int) -> list[Checkpoint]:
    """The job's checkpoints that retention removes: all but its best and its last `keep` (by step), and
    never one that a queued or running job starts from (init_from)."""
    rows = list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)))
    kept = {c.id for c in rows[-keep:]}
    best = repository.best_id(session, job_id=job_id)
    if best is not None:
        kept.add(best)
    candidates = [c for c in rows if c.id not in kept]
    if not candidates:
        return []
    starting_from = set(
        session.scalars(
            select(Job.init_from).where(
                Job.init_from.in_([c.id for c in candidates]), Job.status.in_(ACTIVE_STATUSES)
            )
        )
    )
    return [c for c in candidates if c.id not in starting_from]


def prune(session: Session, *, job_id: str, keep: int) -> list[str]:
    """Delete the rows retention removes (in the caller's transaction); their files' paths, to remove
    with remove_files once the transaction has committed."""
    doomed = to_prune(session, job_id=job_id, keep=keep)
    if doomed:
        session.execute(delete(Checkpoint).where(Checkpoint.id.in_([c.id for c in doomed])))
    return [c.path for c in doomed]


def remove_files(store: Store, paths: list[str]) -> None:
    """Remove the files (objects) of rows whose delete has committed."""
    if not paths:
        return
    try:
        store.delete(paths)
    except StoreError as exc:  # the rows are gone, so they no longer count or serve; the orphan sweep retries
        log.warning("could not remove %d checkpoint file(s) from %s: %s", len(paths), store.describe, exc.message)


def delete_checkpoint(session: Session, *, owner: str, settings: Settings, checkpoint_id: str) -> None:
    """Delete one checkpoint, its file and its row.

    Refused (409) for the last checkpoint of a queued or running job (the job resumes from it after a
    restart) and for a checkpoint a queued or running job starts from (init_from). Any checkpoint of an
    ended job may go, its best included: generation from the job then uses the best that remains."""
    checkpoint = repository.get(session, owner=owner, checkpoint_id=checkpoint_id)
    if checkpoint is None:
        raise not_found("checkpoint", checkpoint_id)
    job = session.get(Job, checkpoint.job_id)
    if job is not None and job.status in ACTIVE_STATUSES:
        last = session.scalar(
            select(Checkpoint.id).where(Checkpoint.job_id == job.id).order_by(Checkpoint.step.desc()).limit(1)
        )
        if last == checkpoint_id:
            raise ApiError(
                409,
                f"checkpoint {checkpoint_id} is the last of job {job.id} ({job.status}), which resumes from it "
                f"if it is interrupted; cancel the job first (POST /jobs/{job.id}/cancel), or delete an older "
                "checkpoint",
            )
    starting = select(Job.id).where(
        Job.init_from == checkpoint_id, Job.owner == owner, Job.status.in_(ACTIVE_STATUSES)
    )
    users = list(session.scalars(starting))
    if users:
        raise ApiError(
            409,
            f"checkpoint {checkpoint_id} is where queued or running job(s) {', '.join(users[:5])} start from; "
            "cancel them or wait for them to finish, then delete it",
        )
    session.execute(delete(Checkpoint).where(Checkpoint.id == checkpoint_id))
    after_commit(session, lambda: remove_files(get_store(settings), [checkpoint.path]))
