"""Corpus queries; every one is filtered by owner, so another owner's corpus simply does not exist."""

from __future__ import annotations

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from app.models import ACTIVE_STATUSES, Corpus, Job
from app.pagination import PageParams, paginate


def get(session: Session, *, owner: str, corpus_id: str) -> Corpus | None:
    return session.scalar(select(Corpus).where(Corpus.id == corpus_id, Corpus.owner == owner))


def list_page(session: Session, *, owner: str, params: PageParams) -> tuple[list[Corpus], bool]:
    return paginate(session, select(Corpus).where(Corpus.owner == owner), Corpus.id, params)


def active_jobs_using(session: Session, *, owner: str, corpus_id: str) -> list[str]:
    """Queued or running jobs that train on the corpus, or score on it (a /v1 job's validation file)."""
    uses = or_(Job.corpus_id == corpus_id, Job.validation_corpus_id == corpus_id)
    return list(session.scalars(select(Job.id).where(Job.owner == owner, uses, Job.status.in_(ACTIVE_STATUSES))))


def others_with_file(session: Session, *, path: str, corpus_id: str) -> int:
    return session.scalar(select(func.count()).where(Corpus.path == path, Corpus.id != corpus_id)) or 0
