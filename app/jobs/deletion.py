"""Deleting an ended job: its rows (checkpoints, metrics, events, the job) and its files (the run folder,
every checkpoint file). One function for both faces: DELETE /jobs/{id} and /v1's DELETE /v1/models/{model}."""

from __future__ import annotations

import logging

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.checkpoints.service import remove_files
from app.db import after_commit
from app.errors import ApiError, not_found
from app.jobs import repository
from app.models import ACTIVE_STATUSES, Checkpoint, Job, JobEvent, JobMetric
from app.settings import Settings
from app.storage import StoreError, get_store, run_prefix

log = logging.getLogger("charrnn.api")


def delete_job(session: Session, *, owner: str, settings: Settings, job_id: str) -> None:
    """Delete an ended job with everything it made. 409 for a queued or running job: cancel it first (its
    worker would otherwise keep writing to what is deleted). The files are removed once the caller's
    transaction commits."""
    job = repository.get(session, owner=owner, job_id=job_id)
    if job is None:
        raise not_found("job", job_id)
    if job.status in ACTIVE_STATUSES:
        raise ApiError(
            409,
            f"job {job_id} is {job.status}; cancel it first (POST /jobs/{job_id}/cancel), then delete it",
        )
    checkpoints = session.execute(select(Checkpoint.id, Checkpoint.path).where(Checkpoint.job_id == job_id)).all()
    starting = select(Job.id).where(
        Job.init_from.in_([c.id for c in checkpoints]), Job.owner == owner, Job.status.in_(ACTIVE_STATUSES)
    )
    users = list(session.scalars(starting))
    if users:
        raise ApiError(
            409,
            f"queued or running job(s) {', '.join(users[:5])} start from a checkpoint of job {job_id}; cancel "
            "them or wait for them to finish, then delete it",
        )
    paths = [c.path for c in checkpoints]
    # Explicit rather than left to ON DELETE CASCADE, which SQLite applies only with its foreign_keys pragma.
    for table in (Checkpoint, JobMetric, JobEvent):
        session.execute(delete(table).where(table.job_id == job_id))
    session.execute(delete(Job).where(Job.id == job_id, Job.owner == owner))

    def remove() -> None:  # the files go only once their rows are gone for good
        remove_files(get_store(settings), paths)
        remove_run_folder(settings, job_id)

    after_commit(session, remove)


def remove_run_folder(settings: Settings, job_id: str) -> None:
    """Every object under the job's run prefix: its checkpoints, best weights, training state, journal,
    and whatever its worker wrote that no row names (a write racing the delete, see supervisor.py)."""
    try:
        get_store(settings).delete_prefix(run_prefix(job_id))
    except StoreError as exc:  # the rows are gone; the orphan sweep (app/storage/sweep.py) retries
        log.warning("could not remove the run of job %s: %s", job_id, exc.message)
