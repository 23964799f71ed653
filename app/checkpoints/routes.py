from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import FileResponse

from app import storage
from app.checkpoints import integrity, repository, service
from app.checkpoints.schemas import CheckpointOut
from app.db import session_scope
from app.deps import CurrentOwner, ReadSessionDep, SettingsDep, WriteSessionDep
from app.errors import ApiError, not_found, responses
from app.jobs import repository as jobs
from app.pagination import Page, PageParams, page_params
from app.storage import CorruptObject, ObjectMissing

router = APIRouter(tags=["checkpoints"], responses=responses(401, 404))


@router.get("/jobs/{job_id}/checkpoints", response_model=Page[CheckpointOut], summary="A job's checkpoints")
def list_checkpoints(
    job_id: str, session: ReadSessionDep, owner: CurrentOwner, params: Annotated[PageParams, Depends(page_params)]
):
    if jobs.get(session, owner=owner, job_id=job_id) is None:
        raise not_found("job", job_id)
    rows, has_more = repository.for_job(session, owner=owner, job_id=job_id, params=params)
    return {"data": rows, "has_more": has_more}


@router.get("/checkpoints/{checkpoint_id}", response_model=CheckpointOut, summary="One checkpoint")
def get_checkpoint(checkpoint_id: str, session: ReadSessionDep, owner: CurrentOwner):
    checkpoint = repository.get(session, owner=owner, checkpoint_id=checkpoint_id)
    if checkpoint is None:
        raise not_found("checkpoint", checkpoint_id)
    return checkpoint


@router.delete(
    "/checkpoints/{checkpoint_id}",
    status_code=204,
    response_class=Response,
    responses=responses(409),
    summary="Delete a checkpoint and its file (409 for a queued or running job's last, or a running job's init_from)",
)
def delete_checkpoint(checkpoint_id: str, session: WriteSessionDep, owner: CurrentOwner, settings: SettingsDep):
    service.delete_checkpoint(session, owner=owner, settings=settings, checkpoint_id=checkpoint_id)
    return Response(status_code=204)


@router.get(
    "/checkpoints/{checkpoint_id}/download",
    response_class=FileResponse,
    summary="The checkpoint file: safetensors weights with config and vocabulary inside",
    responses={
        **responses(409, 410),
        200: {
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            "headers": {
                "Digest": {"description": "sha-256=<base64 of the file's SHA-256>", "schema": {"type": "string"}},
                "X-Checksum-Sha256": {"description": "the file's SHA-256, hex", "schema": {"type": "string"}},
            },
        },
    },
)
def download_checkpoint(checkpoint_id: str, session: ReadSessionDep, owner: CurrentOwner, settings: SettingsDep):
    checkpoint = repository.get(session, owner=owner, checkpoint_id=checkpoint_id)
    if checkpoint is None:
        raise not_found("checkpoint", checkpoint_id)
    # The data directory's own file, or (S3) a copy in this machine's cache whose sha256 was checked as it
    # streamed in; either way checked before a byte is sent: a damaged file is refused, never served.
    try:
        path = storage.local_file(settings, checkpoint.path, sha256=checkpoint.sha256, size=checkpoint.size_bytes)
        sha256, problem = integrity.mismatch(path, sha256=checkpoint.sha256, size_bytes=checkpoint.size_bytes)
    except (ObjectMissing, FileNotFoundError):
        raise ApiError(410, f"the file of checkpoint {checkpoint_id} is gone from the store") from None
    except CorruptObject:
        sha256, problem = "", "the stored object's size or sha256 differs from the one recorded when it was written"
    if problem:
        # Its own short write: the request's session is read-only, and the mark must outlive the 409.
        with session_scope() as writing:
            repository.mark_corrupt(writing, checkpoint_id=checkpoint_id)
        raise ApiError(409, integrity.corrupt_message(checkpoint_id, problem))
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{checkpoint.job_id}-step{checkpoint.step}.safetensors",
        headers=integrity.digest_headers(sha256),
    )
