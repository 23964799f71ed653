"""The /v1 routes: parse, call the service, answer. The mapping lives in the modules beside this one."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.corpora import service as corpora
from app.corpora.upload import IncomingUpload
from app.deps import BearerKey, CurrentOwner, GenerationDep, ReadSessionDep, SettingsDep, WriteSessionDep
from app.generation.limits import ReleasingEventSourceResponse
from app.jobs import service as jobs
from app.keys.streams import end_when_revoked
from app.openai import catalog, completions, files, fine_tuning
from app.openai.errors import OpenAIError, error_body
from app.openai.schemas import (
    CheckpointList,
    CompletionRequest,
    EventList,
    FileDeleted,
    FileList,
    FileObject,
    FineTuningJob,
    JobCreate,
    JobList,
    ModelDeleted,
    ModelList,
    ModelObject,
)
from app.pagination import PageParams

router = APIRouter()

# A completion stream whose key is revoked ends with OpenAI's error object, which the client raises.
REVOKED = {"data": json.dumps(error_body("the API key was revoked; the stream ends", "invalid_request_error",
                                         code="invalid_api_key"))}

Limit = Annotated[int, Query(ge=1, le=100, description="items per page, 1 to 100")]
After = Annotated[str | None, Query(max_length=64, description="the last id of the previous page")]

FILE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "UTF-8 text"},
                        "purpose": {"type": "string", "enum": ["fine-tune"]},
                    },
                }
            }
        },
    }
}


# -- files -------------------------------------------------------------------------------------------


@router.post("/files", response_model=FileObject, openapi_extra=FILE_BODY, tags=["files"],
             summary="Upload a file: a UTF-8 text corpus (multipart `file`, `purpose=fine-tune`)")
async def upload_file(body: IncomingUpload, session: WriteSessionDep, owner: CurrentOwner, settings: SettingsDep):
    # The native upload, rules and all; the name is the form's file name (`purpose` is fine-tune's alone).
    return files.file_object(await corpora.upload(session, owner=owner, settings=settings, body=body, name=None))


@router.get("/files", response_model=FileList, tags=["files"], summary="List your files")
def list_files(session: ReadSessionDep, owner: CurrentOwner, after: After = None,
               limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
               order: Literal["asc", "desc"] = "desc", purpose: str | None = None):
    if purpose not in (None, "fine-tune"):
        return {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}
    return files.list_page(session, owner=owner, params=PageParams(limit=limit, after=after), order=order)


@router.get("/files/{file_id}", response_model=FileObject, tags=["files"], summary="One file")
def get_file(file_id: str, session: ReadSessionDep, owner: CurrentOwner):
    return files.file_object(files.get(session, owner=owner, file_id=file_id))


@router.delete("/files/{file_id}", response_model=FileDeleted, tags=["files"],
               summary="Delete a file (409 while a queued or running job uses it)")
def delete_file(file_id: str, session: WriteSessionDep, owner: CurrentOwner, settings: SettingsDep):
    return files.delete(session, owner=owner, settings=settings, file_id=file_id)


@router.get("/files/{file_id}/content", response_class=FileResponse, tags=["files"], summary="The file's text")
def file_content(file_id: str, session: ReadSessionDep, owner: CurrentOwner, settings: SettingsDep):
    job_id = fine_tuning.metrics_file_job(file_id)
    if job_id is not None:  # a job's result file: its loss curve as CSV
        job = jobs.get(session, owner=owner, job_id=job_id)
        return StreamingResponse(jobs.metrics_csv(owner, job_id, job.started_at), media_type="text/csv; charset=utf-8")
    path = files.content_path(session, owner=owner, settings=settings, file_id=file_id)
    return FileResponse(path, media_type="text/plain; charset=utf-8")


# -- fine-tuning jobs --------------------------------------------------------------------------------


@router.post("/fine_tuning/jobs", response_model=FineTuningJob, tags=["fine-tuning"], summary="Create a job")
def create_job(body: JobCreate, session: WriteSessionDep, owner: CurrentOwner, settings: SettingsDep):
    return fine_tuning.create(session, owner=owner, settings=settings, body=body)


@router.get("/fine_tuning/jobs", response_model=JobList, tags=["fine-tuning"], summary="List jobs, newest first")
def list_jobs(session: ReadSessionDep, owner: CurrentOwner, after: After = None, limit: Limit = 20):
    return fine_tuning.list_page(session, owner=owner, params=PageParams(limit=limit, after=after))


@router.get("/fine_tuning/jobs/{job_id}", response_model=FineTuningJob, tags=["fine-tuning"], summary="One job")
def get_job(job_id: str, session: ReadSessionDep, owner: CurrentOwner):
    return fine_tuning.job_object(fine_tuning.get(session, owner=owner, job_id=job_id))


@router.post("/fine_tuning/jobs/{job_id}/cancel", response_model=FineTuningJob, tags=["fine-tuning"],
             summary="Cancel a queued or running job (409 once finished)")
def cancel_job(job_id: str, session: WriteSessionDep, owner: CurrentOwner):
    return fine_tuning.cancel(session, owner=owner, job_id=job_id)


@router.get("/fine_tuning/jobs/{job_id}/events", response_model=EventList, tags=["fine-tuning"],
            summary="The job's events, newest first")
def job_events(job_id: str, session: ReadSessionDep, owner: CurrentOwner, after: After = None, limit: Limit = 20):
    return fine_tuning.events(session, owner=owner, job_id=job_id, after=after, limit=limit)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints", response_model=CheckpointList, tags=["fine-tuning"],
            summary="The job's checkpoints, newest first")
def job_checkpoints(job_id: str, session: ReadSessionDep, owner: CurrentOwner, after: After = None,
                    limit: Limit = 10):
    return fine_tuning.checkpoints(session, owner=owner, job_id=job_id, params=PageParams(limit=limit, after=after))


# -- models ------------------------------------------------------------------------------------------


@router.get("/models", response_model=ModelList, tags=["models"], summary="Base presets and your fine-tuned models")
def list_models(session: ReadSessionDep, owner: CurrentOwner):
    return {"object": "list", "data": catalog.list_models(session, owner=owner)}


@router.get("/models/{model:path}", response_model=ModelObject, tags=["models"], summary="One model")
def get_model(model: str, session: ReadSessionDep, owner: CurrentOwner):
    return catalog.retrieve(session, owner=owner, name=model)


@router.delete("/models/{model:path}", response_model=ModelDeleted, tags=["models"],
               summary="Delete a fine-tuned model with its job, checkpoints and run folder")
def delete_model(model: str, session: WriteSessionDep, owner: CurrentOwner, settings: SettingsDep):
    return catalog.delete(session, owner=owner, settings=settings, name=model)


# -- completions -------------------------------------------------------------------------------------


@router.post("/completions", tags=["completions"], summary="Complete prompts with a fine-tuned model",
             responses={200: {"content": {"text/event-stream": {"example": 'data: {"choices": [...]}\n\n'
                                                                           "data: [DONE]\n\n"}}}})
async def create_completion(body: CompletionRequest, key: BearerKey, settings: SettingsDep,
                            generation: GenerationDep):
    if not body.stream:
        answer = await completions.complete(generation, settings, key=key, body=body)
        # Serialised on a thread: with logprobs it can be megabytes, which held the event loop for seconds.
        return await run_in_threadpool(JSONResponse, answer)
    streams = await completions.open_streams(generation, settings, key=key, body=body)
    chunks = end_when_revoked(completions.stream_chunks(body, streams), key, revoked_event=REVOKED)
    return ReleasingEventSourceResponse(chunks, slot=streams.slot, ping=15)


@router.post("/chat/completions", tags=["completions"], summary="Not supported: these are completion models")
def chat_completions(owner: CurrentOwner):
    raise OpenAIError(
        404,
        "charrnn's models are character-level completion models, not chat models, so /v1/chat/completions is not "
        "supported. Use /v1/completions (client.completions.create) with a prompt instead.",
        "model",
        "model_not_supported",
    )
