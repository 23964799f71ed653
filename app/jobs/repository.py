"""Job reads for the API; every query is filtered by owner."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import BigInteger, literal, select
from sqlalchemy.orm import Session

from app.models import Job, JobEvent, JobMetric
from app.pagination import PageParams, paginate


def get(session: Session, *, owner: str, job_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id, Job.owner == owner))


def list_page(session: Session, *, owner: str, params: PageParams, status: str | None = None):
    query = select(Job).where(Job.owner == owner)
    if status:
        query = query.where(Job.status == status)
    return paginate(session, query, Job.id, params)


def events(session: Session, *, owner: str, job_id: str, after: int, limit: int) -> list[JobEvent]:
    # The join on Job.owner keeps another owner's events out even if the job id leaks.
    query = (
        select(JobEvent)
        .join(Job, Job.id == JobEvent.job_id)
        # `after` comes from the client (up to 18 digits): bound as a 64-bit integer, since PostgreSQL
        # would otherwise cast it to the column's 32-bit type and fail ("integer out of range").
        .where(JobEvent.job_id == job_id, Job.owner == owner, JobEvent.id > literal(after, BigInteger))
        .order_by(JobEvent.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def metrics(session: Session, *, owner: str, job_id: str) -> list[JobMetric]:
    query = (
        select(JobMetric)
        .join(Job, Job.id == JobMetric.job_id)
        .where(JobMetric.job_id == job_id, Job.owner == owner)
        .order_by(JobMetric.step, JobMetric.id)
    )
    return list(session.scalars(query))


def iter_metrics(session: Session, *, owner: str, job_id: str, batch: int = 1000) -> Iterator[JobMetric]:
    """The curve in step order, read `batch` rows at a time (a long run's CSV is streamed, not held)."""
    query = (
        select(JobMetric)
        .join(Job, Job.id == JobMetric.job_id)
        .where(JobMetric.job_id == job_id, Job.owner == owner)
        .order_by(JobMetric.step, JobMetric.id)
        .execution_options(yield_per=batch)
    )
    yield from session.scalars(query)
