"""Files on /v1 are corpora: a `fine-tune` file is a UTF-8 text corpus, its id the corpus id."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from app.corpora import repository as corpora_repository
from app.corpora import service as corpora
from app.models import Corpus
from app.openai import repository
from app.openai.errors import OpenAIError
from app.pagination import PageParams
from app.settings import Settings
from app.storage import CorruptObject, ObjectMissing, local_file


def file_object(corpus: Corpus) -> dict:
    return {
        "id": corpus.id,
        "object": "file",
        "bytes": corpus.size_bytes,
        "created_at": int(corpus.created_at.timestamp()),
        "filename": corpus.name,
        "purpose": "fine-tune",
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def not_found(file_id: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(404, f"No such File object: {file_id}", param, "file_not_found")


def get(session: Session, *, owner: str, file_id: str) -> Corpus:
    corpus = corpora_repository.get(session, owner=owner, corpus_id=file_id)
    if corpus is None:
        raise not_found(file_id)
    return corpus


def list_page(session: Session, *, owner: str, params: PageParams, order: str) -> dict:
    rows, has_more = repository.files_page(session, owner=owner, params=params, descending=order == "desc")
    data = [file_object(c) for c in rows]
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def content_path(session: Session, *, owner: str, settings: Settings, file_id: str) -> Path:
    corpus = get(session, owner=owner, file_id=file_id)
    try:
        path = local_file(settings, corpus.path, sha256=corpus.sha256, size=corpus.size_bytes)
    except (ObjectMissing, CorruptObject):
        path = None
    if path is None or not path.is_file():
        raise OpenAIError(404, f"the content of file {file_id} is gone from the store", code="file_gone")
    return path


def delete(session: Session, *, owner: str, settings: Settings, file_id: str) -> dict:
    get(session, owner=owner, file_id=file_id)
    validating = repository.active_jobs_validating_on(session, owner=owner, corpus_id=file_id)
    if validating:
        raise OpenAIError(
            409,
            f"file {file_id} is the validation file of {len(validating)} queued or running job(s) "
            f"({', '.join(validating[:5])}); cancel them or wait for them to finish, then delete it",
            code="file_in_use",
        )
    corpora.delete(session, owner=owner, settings=settings, corpus_id=file_id)  # 409 while a job trains on it
    return {"id": file_id, "object": "file", "deleted": True}
