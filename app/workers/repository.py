"""The workers table: who is alive, where their generation server listens, what they run."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.models import Worker


def register(session: Session, *, worker_id: str, hostname: str, pid: int, url: str | None, device: str | None) -> None:
    now = utcnow()
    session.add(
        Worker(id=worker_id, hostname=hostname, pid=pid, url=url, device=device, started_at=now, heartbeat_at=now)
    )


def heartbeat(session: Session, *, worker_id: str, current_job_id: str | None) -> None:
    session.execute(
        update(Worker).where(Worker.id == worker_id).values(heartbeat_at=utcnow(), current_job_id=current_job_id)
    )


def stopped(session: Session, *, worker_id: str) -> None:
    session.execute(update(Worker).where(Worker.id == worker_id).values(stopped_at=utcnow(), current_job_id=None))


def _alive(within_seconds: float) -> tuple:
    since = utcnow() - timedelta(seconds=within_seconds)
    return Worker.heartbeat_at >= since, Worker.stopped_at.is_(None), Worker.url.is_not(None)


def live(session: Session, *, within_seconds: float) -> list[Worker]:
    query = select(Worker).where(*_alive(within_seconds))
    return list(session.scalars(query.order_by(Worker.heartbeat_at.desc())))


def live_urls(session: Session, *, within_seconds: float) -> list[str]:
    """The generation servers of live workers, the most recently heard from first."""
    query = select(Worker.url).where(*_alive(within_seconds))
    return list(session.scalars(query.order_by(Worker.heartbeat_at.desc())))
