from __future__ import annotations

from collections.abc import AsyncIterator

from sqlalchemy.orm import Session

from app.corpora import repository
from app.corpora.upload import NAME_MAX, CorpusSink, receive_multipart, receive_raw
from app.db import utcnow
from app.errors import ApiError, not_found
from app.ids import new_id
from app.models import Corpus
from app.settings import Settings


async def upload(
    session: Session,
    *,
    owner: str,
    settings: Settings,
    stream: AsyncIterator[bytes],
    content_type: str,
    content_length: str | None,
    name: str | None,
) -> Corpus:
    media = content_type.split(";")[0].strip().lower()
    if media not in ("text/plain", "multipart/form-data"):
        raise ApiError(
            415,
            f"unsupported Content-Type {media or '(none)'!r}: send a multipart form with the field `file`, "
            "or the raw text with `Content-Type: text/plain`",
        )
    if content_length and content_length.isdigit() and int(content_length) > settings.max_corpus_bytes + 64 * 1024:
        raise ApiError(
            413,
            f"the upload ({int(content_length):,} bytes) is larger than the limit of "
            f"{settings.max_corpus_bytes:,} bytes (CHARRNN_MAX_CORPUS_BYTES)",
        )
    sink = CorpusSink(settings.corpora_dir, settings.max_corpus_bytes)
    if media == "text/plain":
        await receive_raw(stream, sink)
        form_name = None
    else:
        form_name = await receive_multipart(stream, content_type, sink)
    for given in (name, form_name):
        if given and len(given) > NAME_MAX:
            sink.discard()
            raise ApiError(422, f"name is {len(given)} characters long; keep it to {NAME_MAX} or fewer")
    name = name or form_name or "corpus"
    name = name.strip() or "corpus"
    sha256, path = sink.finish()
    corpus = Corpus(
        id=new_id("corpus"),
        owner=owner,
        name=name,
        sha256=sha256,
        size_bytes=sink.size,
        num_chars=sink.num_chars,
        vocab_size=len(sink.chars),
        path=str(path.relative_to(settings.data_dir)),
        created_at=utcnow(),
    )
    with session.begin():
        session.add(corpus)
    return corpus


def get(session: Session, *, owner: str, corpus_id: str) -> Corpus:
    corpus = repository.get(session, owner=owner, corpus_id=corpus_id)
    if corpus is None:
        raise not_found("corpus", corpus_id)
    return corpus


def delete(session: Session, *, owner: str, settings: Settings, corpus_id: str) -> None:
    with session.begin():
        corpus = get(session, owner=owner, corpus_id=corpus_id)
        jobs = repository.active_jobs_using(session, owner=owner, corpus_id=corpus_id)
        if jobs:
            raise ApiError(
                409,
                f"corpus {corpus_id} is used by {len(jobs)} queued or running job(s) "
                f"({', '.join(jobs[:5])}); "
                "cancel them or wait for them to finish, then delete it",
            )
        shared = repository.others_with_file(session, path=corpus.path, corpus_id=corpus_id)
        session.delete(corpus)
    if not shared:  # identical uploads share one file, named by its hash
        (settings.data_dir / corpus.path).unlink(missing_ok=True)
