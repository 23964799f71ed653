from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from app.db import get_sessionmaker
from app.deps import CurrentOwner, SessionDep, SettingsDep
from app.errors import not_found, responses
from app.jobs import repository, service
from app.jobs.schemas import EventOut, EventPage, JobCreate, JobOut, MetricOut
from app.models import FINAL_STATUSES, JobStatus
from app.pagination import Page, PageParams, page_params

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=responses(401, 404))

FINAL = FINAL_STATUSES


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    summary="Queue a training job",
    responses={**responses(400, 410), 422: {"description": "a field out of range, or a corpus too small"}},
)
def create_job(body: JobCreate, session: SessionDep, owner: CurrentOwner, settings: SettingsDep):
    return service.to_out(service.create(session, owner=owner, settings=settings, body=body))


@router.get("", response_model=Page[JobOut], summary="List your jobs, newest first")
def list_jobs(
    session: SessionDep,
    owner: CurrentOwner,
    params: Annotated[PageParams, Depends(page_params)],
    status: Annotated[JobStatus | None, Query()] = None,
):
    rows, has_more = repository.list_page(session, owner=owner, params=params, status=status)
    return {"data": [service.to_out(j) for j in rows], "has_more": has_more}


@router.get("/{job_id}", response_model=JobOut, summary="One job, with its live progress")
def get_job(job_id: str, session: SessionDep, owner: CurrentOwner):
    return service.to_out(service.get(session, owner=owner, job_id=job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a queued or running job",
    responses=responses(409),
)
def cancel_job(job_id: str, session: SessionDep, owner: CurrentOwner):
    return service.to_out(service.cancel(session, owner=owner, job_id=job_id))


def _read_events(owner: str, job_id: str, after: int, limit: int):
    with get_sessionmaker()() as session:
        job = repository.get(session, owner=owner, job_id=job_id)
        if job is None:
            return None, []
        return job.status, repository.events(session, owner=owner, job_id=job_id, after=after, limit=limit)


def _sse(event) -> dict:
    payload = EventOut.model_validate(event).model_dump(mode="json")
    return {"id": str(event.id), "event": event.type, "data": json.dumps(payload)}


@router.get(
    "/{job_id}/events",
    response_model=EventPage,
    summary="The job's events; with `Accept: text/event-stream`, follow them live until the job ends",
    responses={
        200: {"content": {"text/event-stream": {"example": "id: 3\nevent: metrics\ndata: {...}\n\n"}}},
    },
)
async def job_events(
    job_id: str,
    request: Request,
    owner: CurrentOwner,
    after: Annotated[int, Query(ge=0, le=2**62, description="only events with a larger id")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    accept: Annotated[str | None, Header()] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
):
    status, events = await run_in_threadpool(_read_events, owner, job_id, after, limit + 1)
    if status is None:
        raise not_found("job", job_id)
    if "text/event-stream" not in (accept or ""):
        return {"data": [EventOut.model_validate(e) for e in events[:limit]], "has_more": len(events) > limit}

    start = int(last_event_id) if last_event_id and last_event_id.isdigit() else after

    async def follow():
        cursor = start
        while True:
            status, batch = await run_in_threadpool(_read_events, owner, job_id, cursor, 500)
            for event in batch:
                cursor = event.id
                yield _sse(event)
            if status is None or (status in FINAL and not batch):
                return
            if await request.is_disconnected():
                return
            if not batch:
                await asyncio.sleep(0.25)

    return EventSourceResponse(follow(), ping=15)


@router.get(
    "/{job_id}/metrics",
    response_model=list[MetricOut],
    summary="The loss curve, in step order (a plain list, as API.md has it: it is never paginated)",
)
def job_metrics(job_id: str, session: SessionDep, owner: CurrentOwner):
    service.get(session, owner=owner, job_id=job_id)
    return [MetricOut.model_validate(m) for m in repository.metrics(session, owner=owner, job_id=job_id)]
