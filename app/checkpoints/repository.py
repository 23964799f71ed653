"""Checkpoint queries, filtered by owner."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Checkpoint
from app.pagination import PageParams, paginate


def get(session: Session, *, owner: str, checkpoint_id: str) -> Checkpoint | None:
    return session.scalar(select(Checkpoint).where(Checkpoint.id == checkpoint_id, Checkpoint.owner == owner))


def for_job(session: Session, *, owner: str, job_id: str, params: PageParams):
    query = select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.owner == owner)
    return paginate(session, query, Checkpoint.id, params)


def best_for_job(session: Session, *, owner: str, job_id: str) -> Checkpoint | None:
    """The latest checkpoint that was a new best; with no validation split, the latest one."""
    query = (
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id, Checkpoint.owner == owner)
        .order_by(Checkpoint.is_best.desc(), Checkpoint.step.desc())
        .limit(1)
    )
    return session.scalar(query)
