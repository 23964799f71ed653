from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from app.corpora import repository, service
from app.corpora.schemas import CorpusOut
from app.corpora.upload import IncomingUpload
from app.deps import CurrentOwner, ReadSessionDep, SettingsDep, WriteSessionDep
from app.errors import responses
from app.pagination import Page, PageParams, page_params

router = APIRouter(prefix="/corpora", tags=["corpora"], responses=responses(401, 404))

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "UTF-8 text"},
                        "name": {"type": "string", "maxLength": 200},
                    },
                },
                "example": {"file": "First Citizen:\nBefore we proceed any further, hear me speak.\n"},
            },
            "text/plain": {
                "schema": {"type": "string"},
                "example": "First Citizen:\nBefore we proceed any further, hear me speak.\n",
            },
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=CorpusOut,
    openapi_extra=UPLOAD_BODY,
    responses=responses(400, 413, 415, 429, 507),
    summary="Upload a corpus (multipart field `file`, or a raw text/plain body)",
)
async def upload_corpus(
    body: IncomingUpload,
    session: WriteSessionDep,
    owner: CurrentOwner,
    settings: SettingsDep,
    name: Annotated[str | None, Query(max_length=200, description="a name to show; default: the file name")] = None,
):
    return await service.upload(session, owner=owner, settings=settings, body=body, name=name)


@router.get("", response_model=Page[CorpusOut], summary="List your corpora, newest first")
def list_corpora(session: ReadSessionDep, owner: CurrentOwner, params: Annotated[PageParams, Depends(page_params)]):
    rows, has_more = repository.list_page(session, owner=owner, params=params)
    return {"data": rows, "has_more": has_more}


@router.get("/{corpus_id}", response_model=CorpusOut, summary="One corpus")
def get_corpus(corpus_id: str, session: ReadSessionDep, owner: CurrentOwner):
    return service.get(session, owner=owner, corpus_id=corpus_id)


@router.delete(
    "/{corpus_id}",
    status_code=204,
    response_class=Response,
    responses=responses(409),
    summary="Delete a corpus (409 while a queued or running job uses it)",
)
def delete_corpus(corpus_id: str, session: WriteSessionDep, owner: CurrentOwner, settings: SettingsDep):
    service.delete(session, owner=owner, settings=settings, corpus_id=corpus_id)
    return Response(status_code=204)
