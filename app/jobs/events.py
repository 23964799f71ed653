"""A job's events: writing them (bounded per job), and reading a reconnecting stream's `Last-Event-ID`."""

from __future__ import annotations

import re

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.db import utcnow
from app.errors import ApiError
from app.models import JobEvent, JobStatus

# The events table stays bounded per job: older "metrics" events beyond this many are pruned (the
# job_metrics table keeps the curve; status, checkpoint, sample and log events are never pruned).
MAX_METRICS_EVENTS_PER_JOB = 500


def add_event(session: Session, *, job_id: str, type: str, message: str, data: dict | None = None) -> None:
    session.add(JobEvent(job_id=job_id, type=type, message=message, data=data or {}, created_at=utcnow()))


def add_status_event(session: Session, *, job_id: str, status: JobStatus, message: str, **data) -> None:
    add_event(session, job_id=job_id, type="status", message=message, data={"status": status.value, **data})


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


# Event ids are database integers: 18 digits always fit a signed 64-bit column on every database.
_EVENT_ID = re.compile(r"[0-9]{1,18}")


def parse_last_event_id(value: str | None) -> int | None:
    """The event id to resume after, None when absent or empty; 400 for anything but ASCII digits.

    `str.isdigit` is not enough: it accepts "²" and other Unicode digits that int() then refuses, and 20
    ASCII digits overflow the database's integer type.
    """
    if value is None or value.strip() == "":  # an empty Last-Event-ID means "from the start" (SSE spec)
        return None
    value = value.strip()
    if not _EVENT_ID.fullmatch(value):
        shown = value[:40].encode("ascii", "backslashreplace").decode()
        raise ApiError(
            400,
            f"the Last-Event-ID header must be an event id (ASCII digits, at most 18 of them), not {shown!r}; "
            "send back the `id:` of the last event you received, or leave the header out",
        )
    return int(value)
