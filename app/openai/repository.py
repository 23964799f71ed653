"""The few queries the /v1 mapping needs that the native repositories don't have; all filtered by owner."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import ACTIVE_STATUSES, Checkpoint, Corpus, Job, JobEvent, JobStatus
from app.pagination import PageParams, paginate


def files_page(session: Session, *, owner: str, params: PageParams, descending: bool) -> tuple[list[Corpus], bool]:
    return paginate(session, select(Corpus).where(Corpus.owner == owner), Corpus.id, params, descending=descending)


def active_jobs_validating_on(session: Session, *, owner: str, corpus_id: str) -> list[str]:
    query = select(Job.id).where(
        Job.owner == owner, Job.validation_corpus_id == corpus_id, Job.status.in_(ACTIVE_STATUSES)
    )
    return list(session.scalars(query))


def events_newest_first(session: Session, *, owner: str, job_id: str, before: int | None, limit: int) -> list[JobEvent]:
    """OpenAI lists a job's events newest first; `after` (here `before`) continues to older ones."""
    query = select(JobEvent).join(Job, Job.id == JobEvent.job_id).where(JobEvent.job_id == job_id, Job.owner == owner)
    if before is not None:
        query = query.where(JobEvent.id < before)
    return list(session.scalars(query.order_by(JobEvent.id.desc()).limit(limit)))


def checkpoint_at_step(session: Session, *, owner: str, job_id: str, step: int) -> Checkpoint | None:
    query = select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.owner == owner, Checkpoint.step == step)
    return session.scalar(query)


def fine_tuned_jobs(session: Session, *, owner: str) -> list[Job]:
    """The owner's fine-tuned models: succeeded jobs whose model was not deleted, newest first."""
    query = select(Job).where(Job.owner == owner, Job.status == JobStatus.SUCCEEDED, Job.model_deleted_at.is_(None))
    return list(session.scalars(query.order_by(Job.id.desc())))
