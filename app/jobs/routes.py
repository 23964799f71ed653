from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from app.db import read_session
from app.deps import BearerKey, CurrentOwner, ReadSessionDep, SettingsDep, WriteSessionDep
from app.errors import not_found, responses
from app.jobs import deletion, repository, service
from app.jobs.defaults import form_fields
from app.jobs.events import parse_last_event_id
from app.jobs.feeds import Feeds
from app.jobs.schemas import EventOut, EventPage, JobCreate, JobDefaults, JobOut, MetricOut, ModelSpec, TrainingSpec
from app.models import FINAL_STATUSES, JobStatus
from app.pagination import Page, PageParams, page_params
from worker.engine.config import DEFAULT_MAX_STEPS

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=responses(401, 404))

FINAL = FINAL_STATUSES


async def get_feeds(request: Request) -> Feeds:  # async: no trip to the thread pool
    return request.app.state.feeds  # one per app: the followed jobs of this API process


FeedsDep = Annotated[Feeds, Depends(get_feeds)]


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    summary="Queue a training job",
    responses={
        **responses(400, 410, 429),
        422: {"description": "a field out of range, a corpus too small, or a job too big for the worker's memory"},
    },
)
def create_job(body: JobCreate, session: WriteSessionDep, owner: CurrentOwner, settings: SettingsDep):
    return service.to_out(service.create(session, owner=owner, settings=settings, body=body))


@router.get("", response_model=Page[JobOut], summary="List your jobs, newest first")
def list_jobs(
    session: ReadSessionDep,
    owner: CurrentOwner,
    params: Annotated[PageParams, Depends(page_params)],
    status: Annotated[JobStatus | None, Query()] = None,
):
    rows, has_more = repository.list_page(session, owner=owner, params=params, status=status)
    return {"data": [service.to_out(j) for j in rows], "has_more": has_more}


@router.get(
    "/defaults",
    response_model=JobDefaults,
    summary="The value each left-out field of a new job takes (the dashboard prefills its form from these)",
)
def job_defaults(_owner: CurrentOwner):
    # max_steps=DEFAULT_MAX_STEPS is the rule only for a job that gives no other: a form that sent it
    # back with max_seconds would stop the job early, so it is offered as default_max_steps instead.
    training = {**service.effective_training(TrainingSpec()), "max_steps": None}
    return {"model": service.effective_model(ModelSpec()), "training": training, "default_max_steps": DEFAULT_MAX_STEPS,
            "fields": form_fields(tuple(TrainingSpec.model_fields))}


@router.get("/{job_id}", response_model=JobOut, summary="One job, with its live progress")
def get_job(job_id: str, session: ReadSessionDep, owner: CurrentOwner):
    return service.to_out(service.get(session, owner=owner, job_id=job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a queued or running job",
    responses=responses(409),
)
def cancel_job(job_id: str, session: WriteSessionDep, owner: CurrentOwner):
    return service.to_out(service.cancel(session, owner=owner, job_id=job_id))


@router.delete(
    "/{job_id}",
    status_code=204,
    response_class=Response,
    responses=responses(409),
    summary="Delete an ended job: its checkpoints, metrics, events and run folder (409 while queued or running)",
)
def delete_job(job_id: str, session: WriteSessionDep, owner: CurrentOwner, settings: SettingsDep):
    deletion.delete_job(session, owner=owner, settings=settings, job_id=job_id)
    return Response(status_code=204)


def _read_events(owner: str, job_id: str, after: int, limit: int):
    """(job status, events after `after`); status None if the job is gone."""
    with read_session() as session:  # reads only: on SQLite a poll never waits for the write lock
        job = repository.get(session, owner=owner, job_id=job_id)
        if job is None:
            return None, []
        return job.status, repository.events(session, owner=owner, job_id=job_id, after=after, limit=limit)


@router.get(
    "/{job_id}/events",
    response_model=EventPage,
    summary="The job's events; with `Accept: text/event-stream`, follow them live until the job ends",
    responses={
        **responses(400),
        200: {"content": {"text/event-stream": {"example": "id: 3\nevent: metrics\ndata: {...}\n\n"}}},
    },
)
async def job_events(
    job_id: str,
    feeds: FeedsDep,
    owner: CurrentOwner,
    key: BearerKey,
    after: Annotated[int, Query(ge=0, le=2**62, description="only events with a larger id")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    accept: Annotated[str | None, Header()] = None,
    last_event_id: Annotated[
        str,  # not `| None`: the schema would then offer `null`, which a header cannot be; absent is None anyway
        # Checked by parse_last_event_id (a 400 that names the header), declared here for clients and fuzzers.
        Header(
            alias="Last-Event-ID",
            description="resume after this event id (an EventSource sends it when it reconnects)",
            json_schema_extra={"pattern": "^[0-9]{1,18}$"},
        ),
    ] = None,
):
    resume_from = parse_last_event_id(last_event_id)  # before any work: a bad header is the client's mistake
    if "text/event-stream" not in (accept or ""):
        status, events = await run_in_threadpool(_read_events, owner, job_id, after, limit + 1)
        if status is None:
            raise not_found("job", job_id)
        return {"data": [EventOut.model_validate(e) for e in events[:limit]], "has_more": len(events) > limit}
    # Followed live: the backlog's first page here (a 404 before the stream starts), the rest from the
    # job's shared feed (app/jobs/feeds.py), which one reader per job keeps for all its followers.
    start = resume_from if resume_from is not None else after
    status, first, _ = await feeds.read(owner, job_id, start)
    if status is None:
        raise not_found("job", job_id)
    return EventSourceResponse(feeds.follow(owner, job_id, key, start, status, first), ping=15)


@router.get(
    "/{job_id}/metrics",
    response_model=list[MetricOut],
    summary="The loss curve, in step order (a plain list, as API.md has it: it is never paginated)",
)
def job_metrics(
    job_id: str,
    session: ReadSessionDep,
    owner: CurrentOwner,
    max_points: Annotated[
        int | None,
        Query(ge=2, le=1_000_000, description="at most this many points: an even stride over the curve, first and "
              "last kept (for charts of long runs)"),
    ] = None,
):
    service.get(session, owner=owner, job_id=job_id)
    rows = service.downsample(repository.metrics(session, owner=owner, job_id=job_id), max_points)
    return [MetricOut.model_validate(m) for m in rows]


@router.get(
    "/{job_id}/metrics.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {"example": "step,train_loss,val_loss,learning_rate,chars_per_second,"
                                                         "elapsed\r\n10,3.2,,0.003,51234.5,1.2\r\n"}}}},
    summary="The loss curve as CSV (losses in nats per character, elapsed in seconds since the job started)",
)
def job_metrics_csv(job_id: str, session: ReadSessionDep, owner: CurrentOwner):
    job = service.get(session, owner=owner, job_id=job_id)  # 404 before the body starts
    lines = service.metrics_csv(owner, job_id, job.started_at)
    headers = {"Content-Disposition": f'attachment; filename="{job_id}-metrics.csv"'}
    return StreamingResponse(lines, media_type="text/csv; charset=utf-8", headers=headers)
